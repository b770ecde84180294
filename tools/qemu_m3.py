"""Run MicroPython scripts on a Cortex-M3 board emulated by QEMU (MPS2-AN385, the qemu port).

    python -m edgemeter.tools.qemu_m3 [--elf build/fw-m3/firmware.elf] [--no-icount]
                                      [--timeout S] [--fs] SCRIPT.py [...]

`Board` boots a firmware.elf (tools/mpbuild.py builds one with edgemeter's modules frozen in
flash) under `qemu-system-arm -machine mps2-an385` and drives MicroPython's raw REPL over the
emulated UART, the protocol of MicroPython's tools/pyboard.py: Ctrl-A enters the raw REPL, a
script is sent followed by Ctrl-D, the board answers "OK", the script's output, Ctrl-D, its
exception text (empty when none), Ctrl-D and the prompt ">". Ctrl-D on an empty script is a
soft reset (the heap is cleared; memory outside the heap is kept).

With icount (the default) QEMU runs `-icount shift=0`: the emulated clock advances exactly
1 ns per executed instruction, so `time.ticks_us()` differences times 1000 are instruction
counts, independent of the host's load (tools/bench_m3.py).

`mount_fs()` mounts a littlefs2 filesystem on a RAM block device that lives outside the
MicroPython heap (the board's second SSRAM bank, FS_ADDR), formatting it once per boot;
the board module `emboard` (frozen by tools/mpbuild.py) implements it. Soft resets keep it.

Every failure is a `BoardError` with one line saying what went wrong (QEMU missing, no
banner, a timeout, the exception the script raised) and the board's last output.
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ELF = ROOT / "build" / "fw-m3" / "firmware.elf"
FS_ADDR = 0x20000000   # MPS2-AN385 SSRAM2/3 (4 MiB), not used by the qemu port's linker script
FS_BYTES = 512 * 1024
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"


class BoardError(RuntimeError):
    """The board did not do what was asked; str() is one line plus the output's tail."""


class Board:
    """One QEMU process running a firmware; use as a context manager."""

    def __init__(self, elf: Path | str = DEFAULT_ELF, icount: bool = True, timeout: float = 60.0,
                 qemu: str = "qemu-system-arm"):
        self.elf = Path(elf)
        self.icount = icount
        self.timeout = timeout
        self.qemu = qemu
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.fs = False

    # ------------------------------------------------------------------ process
    def start(self) -> "Board":
        exe = shutil.which(self.qemu)
        if exe is None:
            raise BoardError(f"{self.qemu} not found: apt-get install qemu-system-arm "
                             "(bash tools/dev.sh test installs it)")
        if not self.elf.is_file():
            raise BoardError(f"no firmware at {self.elf}: build it with edgemeter build-firmware --target cortex-m3")
        cmd = [exe, "-machine", "mps2-an385", "-nographic", "-monitor", "null", "-semihosting",
               "-serial", "stdio", "-kernel", str(self.elf)]
        if self.icount:
            cmd[1:1] = ["-icount", "shift=0"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._read_until(b">>> ", self.timeout, "the MicroPython banner")
        self._write(b"\r\x01")
        self._read_until(_RAW_BANNER, self.timeout, "the raw REPL")
        return self

    def close(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.kill()
        if p is not None:
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()

    def __enter__(self) -> "Board":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ raw REPL
    def _write(self, data: bytes) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            raise BoardError("QEMU is not running" + self._tail())
        try:
            p.stdin.write(data)
            p.stdin.flush()
        except BrokenPipeError:
            raise BoardError("QEMU exited while being written to" + self._tail()) from None

    def _read_until(self, marker: bytes, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BoardError(f"timed out after {timeout:g} s waiting for {what}" + self._tail())
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BoardError(f"QEMU exited (status {self.proc.wait()}) while waiting "
                                     f"for {what}" + self._tail())
                self.buf += chunk
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _tail(self) -> str:
        t = self.buf[-400:].decode("utf-8", "replace").strip()
        return f"; board output ends: {t!r}" if t else ""

    def run(self, code: str, timeout: float | None = None) -> str:
        """Execute code on the board; return what it printed. BoardError when it raises."""
        out, err = self.run_raw(code, timeout)
        if err:
            last = err.strip().splitlines()[-1] if err.strip() else err
            raise BoardError(f"the script raised {last}\n{out}{err}")
        return out

    def run_raw(self, code: str, timeout: float | None = None) -> tuple[str, str]:
        """(stdout, exception text) of code; the exception text is empty when it ran through."""
        if not code.strip():
            raise ValueError("empty script (an empty raw-REPL script is a soft reset: soft_reset())")
        data = code.encode()
        self._write(data + b"\x04")
        t = self.timeout if timeout is None else timeout
        self._read_until(b"OK", t, "the board to accept the script")
        out = self._read_until(b"\x04", t, "the script to finish")[:-1]
        err = self._read_until(b"\x04", t, "the script's error output")[:-1]
        self._read_until(b">", t, "the prompt")
        return out.decode("utf-8", "replace").replace("\r\n", "\n"), \
            err.decode("utf-8", "replace").replace("\r\n", "\n")

    def soft_reset(self) -> None:
        """A fresh heap (MicroPython's soft reboot); the RAM filesystem stays, remounted."""
        self._write(b"\x04")
        self._read_until(_RAW_BANNER, self.timeout, "the soft reset")
        if self.fs:
            self.run("import emboard\nemboard.mount(%d, %d, False)" % (FS_ADDR, FS_BYTES))

    def mount_fs(self, fresh: bool = False) -> None:
        """Mount the RAM littlefs at / and chdir there; formatted first when fresh and on the
        first mount of a boot."""
        self.run("import emboard\nemboard.mount(%d, %d, %s)" % (FS_ADDR, FS_BYTES, fresh or not self.fs))
        self.fs = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgemeter.tools.qemu_m3", description=__doc__.split("\n")[0])
    ap.add_argument("scripts", nargs="+", type=Path)
    ap.add_argument("--elf", type=Path, default=DEFAULT_ELF)
    ap.add_argument("--no-icount", action="store_true", help="run at full speed (no instruction clock)")
    ap.add_argument("--fs", action="store_true", help="mount the RAM littlefs at / first")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    try:
        with Board(args.elf, icount=not args.no_icount, timeout=args.timeout) as b:
            if args.fs:
                b.mount_fs()
            for s in args.scripts:
                out, err = b.run_raw(s.read_text())
                sys.stdout.write(out)
                if err:
                    sys.stderr.write(err)
                    return 1
                b.soft_reset()
    except (BoardError, OSError) as exc:
        print(f"qemu_m3: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

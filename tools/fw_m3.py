"""Build the Cortex-M3 board firmware (MicroPython's qemu port, MPS2-AN385) with edgemeter frozen in.

    python -m edgemeter.tools.fw_m3 [--micropython-src PATH] [--heap 32768]

The device image, build/fw-m3/firmware.elf: firmware_py.main and its imports frozen (bytecode
and constants in flash; tools.fwmodules.image_modules) with the board module `emboard`
(tools/board/emboard.py: littlefs on a RAM block device outside the heap, standing in for the
board's flash; what tools.qemu_m3 mounts), littlefs2 built in, a --heap (32 KiB) MicroPython heap. build(..., name=N, manifest=M) builds a development image
build/fw-m3-N/firmware.elf from variant_manifest(extra): every firmware_py module, `emboard`, plus the caller's freeze lines (the core tests' image,
tests/mp/board.py). Images share one object directory (build/fw-m3-obj): switching images
recompiles only main.c and the frozen code; make rebuilds nothing when nothing changed.

The MicroPython source is a tree or its tarball: --micropython-src, else $EDGEMETER_MICROPYTHON_SRC,
else the tarball in ../shared/micropython/ beside the project (see firmware_py/README.md for
getting the same tree elsewhere: a git clone of upstream MicroPython at the commit named there).
A tarball is unpacked once into build/mpsrc/. Missing tools (arm-none-eabi-gcc, newlib,
qemu-system-arm) are apt-installed when running as root or with sudo; otherwise the build stops
with a message naming the packages.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgemeter.tools import fwmodules

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
APT = {"arm-none-eabi-gcc": "gcc-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"}
NEWLIB = Path("/usr/lib/arm-none-eabi/newlib")   # libnewlib-arm-none-eabi (headers, libc)
# computed goto in the VM's dispatch, as MicroPython's own microcontroller ports build it
# (stm32, rp2, esp32); the qemu port leaves it off
MAKE_FLAGS = ["MICROPY_PY_BTREE=0", "MICROPY_VFS_LFS2=1", "CFLAGS_EXTRA=-DMICROPY_OPT_COMPUTED_GOTO=1"]
DEVICE_HEAP = 32768


class BuildError(RuntimeError):
    """The firmware could not be built; str() says what is missing or failed."""


def find_source(given: str | None) -> Path:
    """The MicroPython tree to build from (a tarball is unpacked into build/mpsrc)."""
    env = os.environ.get("EDGEMETER_MICROPYTHON_SRC")
    cands = [given] if given else [env] if env else [
        str(ROOT.parent / "shared" / "micropython"), str(ROOT.parent.parent / "shared" / "micropython")]
    for c in cands:
        if not c:
            continue
        p = Path(c)
        if p.is_dir() and (p / "py" / "mpconfig.h").exists():
            return p
        if p.is_dir():
            tars = sorted(p.glob("micropython-*.tar.gz"))
            p = tars[-1] if tars else p
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            return _unpack(p)
        if given:
            raise BuildError(f"--micropython-src {given}: neither a MicroPython tree (py/mpconfig.h) "
                             "nor a .tar.gz of one")
    raise BuildError("no MicroPython source: pass --micropython-src PATH (a tree or its tarball)")


def _unpack(tar: Path) -> Path:
    dest = BUILD / "mpsrc"
    stamp = dest / ".source"
    tree = dest / "micropython"
    if not (stamp.exists() and stamp.read_text() == str(tar.resolve()) and tree.is_dir()):
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-xzf", str(tar), "-C", str(dest)], check=True)
        stamp.write_text(str(tar.resolve()))
    if not (tree / "py" / "mpconfig.h").exists():
        raise BuildError(f"{tar} holds no micropython/py/mpconfig.h")
    return tree


def ensure_tools() -> None:
    """apt-install the cross compiler, newlib and QEMU where missing (root or sudo)."""
    missing = [pkg for cmd, pkg in APT.items() if shutil.which(cmd) is None]
    if not NEWLIB.is_dir():
        missing.append("libnewlib-arm-none-eabi")
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise BuildError("missing " + ", ".join(missing) + ": apt-get install -y " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        if subprocess.run(sudo + cmd, env=env, capture_output=True).returncode != 0:
            raise BuildError("could not install " + ", ".join(missing) + ": run apt-get install -y "
                             + " ".join(missing) + " as root")


def device_manifest() -> str:
    """Freeze lines of the device image: firmware_py.main and its imports (image_modules)."""
    names = ["__init__"] + fwmodules.image_modules()
    return ("".join(f'module("firmware_py/{m}.py", base_path="{ROOT}")\n' for m in names)
            + f'module("emboard.py", base_path="{ROOT / "tools" / "board"}")\n')


def variant_manifest(extra: str) -> str:
    """Freeze lines of a development image: every firmware_py module, the board module
    `emboard` (RAM littlefs) and the caller's extra lines."""
    return (f'package("firmware_py", base_path="{ROOT}")\n'
            f'module("emboard.py", base_path="{ROOT / "tools" / "board"}")\n' + extra)


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _make(src: Path, args: list[str], what: str) -> None:
    proc = subprocess.run(["make", "-j2", *args], cwd=src, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BuildError(f"building {what} failed (make {' '.join(args)}):\n{tail}")


def build(src: Path, heap: int = DEVICE_HEAP, name: str = "", manifest: str | None = None) -> Path:
    """Build one image and return its firmware.elf: the device image (build/fw-m3/) by default,
    or, with name, build/fw-m3-<name>/ frozen from manifest (see variant_manifest)."""
    ensure_tools()
    (src / "lib" / "micropython-lib").mkdir(parents=True, exist_ok=True)
    (src / "lib" / "micropython-lib" / "README.md").touch()  # the freeze step tests it exists
    _make(src, ["-C", "mpy-cross"], "mpy-cross")
    dest = BUILD / ("fw-m3-" + name if name else "fw-m3")
    _write_if_changed(dest / "manifest.py", device_manifest() if manifest is None else manifest)
    obj = BUILD / "fw-m3-obj"   # shared: a second image recompiles only main.c and the frozen code
    if (obj / "flags").exists() and (obj / "flags").read_text() != " ".join(MAKE_FLAGS):
        shutil.rmtree(obj)  # make does not see changed flags: start over
    obj.mkdir(parents=True, exist_ok=True)
    (obj / "flags").write_text(" ".join(MAKE_FLAGS))
    if not (obj / "heap").exists() or (obj / "heap").read_text() != str(heap):
        (obj / "main.o").unlink(missing_ok=True)  # the heap is a static array sized in main.c
        (obj / "heap").write_text(str(heap))
    used = (dest / "manifest.py").read_text()
    if not (obj / "manifest").exists() or (obj / "manifest").read_text() != used:
        # makemanifest regenerates only when a frozen file is newer than its output
        (obj / "frozen_content.c").unlink(missing_ok=True)
        (obj / "manifest").write_text(used)
    _make(src, ["-C", "ports/qemu", f"BUILD={obj}", f"MICROPY_HEAP_SIZE={heap}",
                f"USER_C_MODULES={ROOT / 'tools' / 'board' / 'cmod'}", *MAKE_FLAGS,
                f"FROZEN_MANIFEST={dest / 'manifest.py'}", f"{obj}/firmware.elf"],
          f"the {name or 'device'} firmware")
    shutil.copyfile(obj / "firmware.elf", dest / "firmware.elf")
    (dest / "heap").write_text(str(heap))
    return dest / "firmware.elf"


def image_bytes(elf: Path) -> int:
    """Flash a board needs for elf: text + data (arm-none-eabi-size)."""
    out = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True)
    text, data, _bss = (int(x) for x in out.stdout.splitlines()[1].split()[:3])
    return text + data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgemeter.tools.fw_m3", description=__doc__.split("\n")[0])
    ap.add_argument("--micropython-src", help="a MicroPython tree or its .tar.gz")
    ap.add_argument("--heap", type=int, default=DEVICE_HEAP, help="MICROPY_HEAP_SIZE in bytes (default 32768)")
    args = ap.parse_args(argv)
    try:
        elf = build(find_source(args.micropython_src), args.heap)
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"fw_m3: {exc}", file=sys.stderr)
        return 1
    print(f"{image_bytes(elf):9d}  device image (text + data), {args.heap} B heap -> {elf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Device firmware built from MicroPython source with edgemeter's image frozen in.

    edgemeter build-firmware --target unix32|cortex-m3 [--micropython-src PATH] [--force]
    bash tools/dev.sh firmware          # both targets

Targets (TARGETS): `unix32`, the unix port built 32-bit (gcc -m32), the firmware run as
`build/fw-unix32/micropython -X heapsize=32k -m firmware_py.main CONFIG`; `cortex-m3`, the
qemu port's MPS2-AN385 board (a Cortex-M3 under `qemu-system-arm -machine mps2-an385`, run by
tools/qemu_m3.py) with a 32 KiB heap, `build/fw-m3/firmware.elf`: the device image with the
board module `emboard` (tools/board/emboard.py: littlefs2 on a RAM block device outside the
heap, standing in for the board's flash) and littlefs2 built in. board_image() also builds the
board's other images from a caller's manifest (variant_manifest(): every firmware_py module,
`emboard`, the caller's lines), each as build/fw-m3-<name>/firmware.elf: the core tests' image
(tests/mp/board.py), the benchmark's (tools/bench_m3.py). Board images share one object
directory (build/fw-m3-obj), so switching images recompiles only main.c and the frozen code,
and make rebuilds nothing when nothing changed. The frozen modules' bytecode, strings (qstrs)
and constant tuples/bytes stay in the executable's read-only data (a board's flash); only
what the code builds at run time takes heap.

What is frozen (a generated manifest.py beside the output): unix32 freezes the device image
(tools.romfs.device_modules(): firmware_py.main and its import closure, without the cloud's
and the debugging modules) plus the SDK stand-ins SDK_MODULES (the simulator's workload and the
firmware tests' driver, tools/sim/) as top-level modules, because a board keeps
its SDK's code in flash too; cortex-m3 freezes firmware_py.main's import closure
(tools.fwmodules.image_modules()) and `emboard`. `--freeze device|all` and `--with FILE.py`
override (a cortex-m3 image frozen otherwise goes to build/fw-m3-<freeze>/).

The source (`--micropython-src`) is a MicroPython tree or its source tarball; the default is
$EDGEMETER_MICROPYTHON_SRC when set, else the tarball in ../shared/micropython/ relative to the
project root when it exists (or in the nearest shared/micropython/ above it). A tarball is
unpacked once into build/mpsrc/<its sha256>/. Build products go under build/fw-work/<target>/
(make's BUILD=, MPY_LIB_DIR=), so a given tree is never written to; the results are copied
to build/fw-unix32/ and build/fw-m3/. The unix32 build is skipped when
build/fw-unix32/stamp.json holds the same hashes: the frozen sources, this file, the source
tree (tarball sha256, or a tree's git HEAD and status, else its files' sizes and times) and the
make variables; a board image leaves that to make.

Toolchains (TOOLCHAINS) are apt-installed when missing (sudo when not root), as tools/dev.sh
installs Mosquitto; where that cannot be done, the build stops with one line naming what is
missing and the Debian package that has it. Errors: MpBuildError(SystemExit) with that line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import firmware_py
from edgemeter.tools import fwmodules

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SRC = Path(firmware_py.__file__).resolve().parent  # the package's sources, wherever installed
SHARED_TARBALL = "micropython-1.29.0-1c3c2011-src.tar.gz"
UPSTREAM = ("https://github.com/micropython/micropython", "1c3c201149f37fe8d81246191b3127bb198d6306")
# The SDK stand-ins of the simulator and the firmware tests: frozen at the top level (import
# name = file stem) beside the firmware, as a board keeps its SDK's code in flash.
SDK_MODULES = ("sim/mp_workload.py", "sim/fw_driver.py")  # relative to this folder (tools/)
COMMON_MAKE = ("MICROPY_PY_BTREE=0", "MICROPY_PY_SSL=0", "MICROPY_SSL_AXTLS=0")
TARGETS: dict[str, dict[str, Any]] = {
    "unix32": {"port": "unix", "out": "fw-unix32", "product": "micropython", "freeze": "device",
               "make": ("CFLAGS_EXTRA=-m32", "LDFLAGS_EXTRA=-m32", "MICROPY_PY_FFI=0"),
               "built": "micropython"},
    "cortex-m3": {"port": "qemu", "out": "fw-m3", "product": "firmware.elf", "freeze": "board",
                  "make": ("BOARD=MPS2_AN385", "MICROPY_VFS_LFS2=1",
                           # computed goto in the VM's dispatch, as MicroPython's own
                           # microcontroller ports build it (stm32, rp2, esp32)
                           "CFLAGS_EXTRA=-DMICROPY_OPT_COMPUTED_GOTO=1"),
                  "built": "firmware.elf"},
}
DEVICE_HEAP = 32768   # the board's MicroPython heap (MICROPY_HEAP_SIZE)
BOARD = HERE / "board"    # emboard.py and its C module (cmod/)
# (what, shell test that succeeds when present, Debian packages)
TOOLCHAINS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "unix32": (("make", "command -v make", ("make",)),
               ("a C compiler with 32-bit support (gcc -m32)",
                "printf 'int main(void){return 0;}' | gcc -m32 -x c -o /dev/null -",
                ("gcc-multilib",))),
    "cortex-m3": (("make", "command -v make", ("make",)),
                  ("the Arm cross compiler arm-none-eabi-gcc", "command -v arm-none-eabi-gcc",
                   ("gcc-arm-none-eabi",)),
                  ("newlib for arm-none-eabi (libc.a)",
                   "test -f \"$(arm-none-eabi-gcc -print-file-name=libc.a)\"",
                   ("libnewlib-arm-none-eabi",)),
                  ("qemu-system-arm (runs the board)", "command -v qemu-system-arm",
                   ("qemu-system-arm",))),
}


class MpBuildError(SystemExit):
    """The build cannot go on; the message is one line saying what is missing or failed."""

    def __init__(self, msg: str) -> None:
        super().__init__("build-firmware: " + msg)


def default_source() -> Path | None:
    """$EDGEMETER_MICROPYTHON_SRC when set, else ../shared/micropython/<tarball> relative to
    the project root when it exists (or in the nearest shared/micropython/ further up: a git
    worktree of the project)."""
    env = os.environ.get("EDGEMETER_MICROPYTHON_SRC")
    if env:
        return Path(env)
    for up in ROOT.parents:
        p = up / "shared" / "micropython" / SHARED_TARBALL
        if p.is_file():
            return p
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_tree(p: Path) -> bool:
    return (p / "py" / "mpconfig.h").is_file() and (p / "ports").is_dir()


def source_tree(src: Path | None, build: Path) -> tuple[Path, str]:
    """(MicroPython tree, its identity for the stamp) from a tree or a tarball of one."""
    if src is None:
        raise MpBuildError(
            "no MicroPython source: pass --micropython-src PATH (a tree or its tarball); get the "
            f"tree with `git clone {UPSTREAM[0]} && git -C micropython checkout {UPSTREAM[1]}`")
    src = src.expanduser().resolve()
    if src.is_dir():
        if not _is_tree(src):
            raise MpBuildError(f"{src} is not a MicroPython tree (no py/mpconfig.h)")
        return src, "tree:" + _tree_id(src)
    if not src.is_file():
        raise MpBuildError(f"--micropython-src {src}: no such file or directory")
    digest = _sha256(src)
    dest = build / "mpsrc" / digest[:16]
    if not (dest / ".unpacked").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:
            with tarfile.open(src) as tf:
                tf.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise MpBuildError(f"{src}: not a readable tarball ({why})") from None
        (dest / ".unpacked").write_text(str(src) + "\n")
    tops = [p for p in dest.iterdir() if p.is_dir() and _is_tree(p)]
    if not tops:
        raise MpBuildError(f"{src}: the tarball holds no MicroPython tree (no */py/mpconfig.h)")
    return tops[0], "tarball:" + digest


def _tree_id(tree: Path) -> str:
    """git HEAD + status of a checkout, else the sizes and times of the build's inputs."""
    if (tree / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], text=True,
                                  capture_output=True, check=True).stdout.strip()
            st = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], text=True,
                                capture_output=True, check=True).stdout
            return head + ":" + hashlib.sha256(st.encode()).hexdigest()
        except (OSError, subprocess.CalledProcessError):
            pass
    h = hashlib.sha256()
    for sub in ("py", "extmod", "shared", "lib", "drivers", "mpy-cross", "ports"):
        for p in sorted((tree / sub).rglob("*")):
            if p.is_file() and "/build" not in str(p.relative_to(tree)):
                s = p.stat()
                h.update(f"{p.relative_to(tree)}:{s.st_size}:{s.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _as_root(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    return ["sudo", "-n", *argv] if shutil.which("sudo") else []


def ensure_toolchain(target: str, install: bool = True) -> None:
    """Check TOOLCHAINS[target]; apt-get install what is missing; MpBuildError naming what
    is still missing (and its package) when that is not possible or did not help."""
    def missing() -> list[tuple[str, str, tuple[str, ...]]]:
        return [t for t in TOOLCHAINS[target]
                if subprocess.run(["sh", "-c", t[1]], capture_output=True).returncode != 0]
    gone = missing()
    if not gone:
        return
    pkgs = sorted({p for t in gone for p in t[2]})
    why = ""
    apt = shutil.which("apt-get")
    if not install:
        why = "installing was not allowed (--no-install)"
    elif apt is None:
        why = "this system has no apt-get"
    elif not _as_root([apt]):
        why = "apt-get needs root and there is no sudo"
    else:
        print(f"build-firmware: installing {' '.join(pkgs)} (missing: "
              f"{'; '.join(t[0] for t in gone)})", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        lock = ["-o", "DPkg::Lock::Timeout=600"]
        for argv in (_as_root([apt, *lock, "update", "-qq"]),
                     _as_root([apt, *lock, "install", "-y", "-qq", *pkgs])):
            p = subprocess.run(argv, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                why = f"`{' '.join(argv)}` failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
                break
        gone = missing()
        if not gone:
            return
    raise MpBuildError(
        f"the {target} target needs {'; '.join(t[0] for t in gone)} (Debian/Ubuntu packages: "
        f"{' '.join(sorted({p for t in gone for p in t[2]}))}); {why or 'still missing after apt-get install'}")


def frozen_sources(target: str, freeze: str | None = None,
                   extra: list[Path] | None = None) -> tuple[list[str], list[Path]]:
    """(firmware_py module names, top-level SDK files) frozen for target."""
    from edgemeter.tools import romfs
    kind = freeze or TARGETS[target]["freeze"]
    if kind == "all":
        mods = sorted(p.stem for p in SRC.glob("*.py"))
    elif kind == "device":
        mods = romfs.device_modules()
    elif kind == "board" and target == "cortex-m3":
        mods = ["__init__"] + fwmodules.image_modules()
    else:
        raise MpBuildError(f"--freeze {kind!r}: expected device or all")
    if target == "cortex-m3":    # the board module, and the caller's
        files = [BOARD / "emboard.py", *(extra or [])]
    else:
        files = [HERE / f for f in SDK_MODULES if (HERE / f).is_file()] if extra is None else extra
    for f in files:
        if not f.is_file() or f.suffix != ".py":
            raise MpBuildError(f"--with {f}: not a .py file")
    return mods, [f.resolve() for f in files]


def manifest_text(mods: list[str], files: list[Path]) -> str:
    """A MicroPython manifest.py freezing firmware_py.<mods> and files (at the top level)."""
    lines = ["# Generated by edgemeter build-firmware: what the firmware freezes.\n"]
    lines += [f'module("firmware_py/{m}.py", base_path="{SRC.parent}")\n' for m in mods]
    lines += [f'module("{f.name}", base_path="{f.parent}")\n' for f in files]
    return "".join(lines)


def _stamp(target: str, tree_id: str, make: list[str], mods: list[str], files: list[Path]) -> dict:
    h = hashlib.sha256()
    for p in [SRC / f"{m}.py" for m in mods] + files + [Path(__file__)]:
        h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    return {"target": target, "source": tree_id, "make": make, "frozen": mods,
            "sdk": [str(f) for f in files], "sources_sha256": h.hexdigest()}


def _make(argv: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        p = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise MpBuildError(f"`{' '.join(argv[:3])} ...` failed (exit {p.returncode}); "
                           f"log {log}:\n" + "\n".join(tail))


def build(target: str, src: Path | None = None, out_root: Path | None = None,
          freeze: str | None = None, extra: list[Path] | None = None,
          make_vars: list[str] | None = None, force: bool = False, install: bool = True,
          jobs: int | None = None) -> dict[str, Any]:
    """Build target (TARGETS) from src (default_source()); skipped when the stamp matches.
    Returns {"target", "product" (path), "built" (False when skipped), "bytes", "stamp"}."""
    if target not in TARGETS:
        raise MpBuildError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    build_dir = out_root or ROOT / "build"
    out = build_dir / t["out"]
    product = out / t["product"]
    tree, tree_id = source_tree(src if src is not None else default_source(), build_dir)
    mods, files = frozen_sources(target, freeze, extra)
    make = [*COMMON_MAKE, *t["make"], *(make_vars or [])]
    stamp = _stamp(target, tree_id, make, mods, files)
    if target == "cortex-m3":
        name = "" if freeze in (None, "board") and not extra else (freeze or "custom")
        elf = build_dir / ("fw-m3-" + name if name else "fw-m3") / t["product"]
        before = elf.stat().st_mtime_ns if elf.is_file() else None
        board_image(DEVICE_HEAP, name, manifest_text(mods, files), src, install, make_vars)
        return {"target": target, "product": str(elf), "stamp": stamp, "bytes": elf.stat().st_size,
                "built": elf.stat().st_mtime_ns != before}
    stamp_file = out / "stamp.json"
    res = {"target": target, "product": str(product), "built": False, "stamp": stamp}
    if (not force and product.is_file() and stamp_file.is_file()
            and json.loads(stamp_file.read_text()) == stamp):
        res["bytes"] = product.stat().st_size
        return res
    ensure_toolchain(target, install)
    work = build_dir / "fw-work" / target
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    manifest = out / "manifest.py"
    manifest.write_text(manifest_text(mods, files))
    libdir = work / "micropython-lib"  # the freeze step requires this folder to exist
    libdir.mkdir(exist_ok=True)
    (libdir / "README.md").touch()
    log = out / "build.log"
    log.write_text("")
    j = f"-j{jobs or os.cpu_count() or 1}"
    xdir = work / "mpy-cross"
    _make(["make", "-C", str(tree / "mpy-cross"), j, f"BUILD={xdir}"], log)
    built = work / "port"
    _make(["make", "-C", str(tree / "ports" / t["port"]), j, f"BUILD={built}",
           f"MICROPY_MPYCROSS={xdir}/mpy-cross", f"MICROPY_MPYCROSS_DEPENDENCY={xdir}/mpy-cross",
           f"MPY_LIB_DIR={libdir}", f"FROZEN_MANIFEST={manifest}", *make], log)
    shutil.copy2(built / t["built"], product)
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    res.update(built=True, bytes=product.stat().st_size)
    return res


def variant_manifest(extra: str) -> str:
    """Freeze lines of a development board image: every firmware_py module, the board module
    `emboard` and the caller's extra lines."""
    return (f'package("firmware_py", base_path="{SRC.parent}")\n'
            f'module("emboard.py", base_path="{BOARD}")\n' + extra)


def board_image(heap: int = DEVICE_HEAP, name: str = "", manifest: str | None = None,
                src: Path | None = None, install: bool = True, make_vars: list[str] | None = None) -> Path:
    """Build one Cortex-M3 board image and return its firmware.elf: the device image
    (build/fw-m3/, frozen as TARGETS["cortex-m3"] says) by default, or, with name,
    build/fw-m3-<name>/ frozen from manifest (see variant_manifest), with a heap of heap bytes."""
    build_dir = ROOT / "build"
    tree, _ = source_tree(src if src is not None else default_source(), build_dir)
    ensure_toolchain("cortex-m3", install)
    if manifest is None:
        manifest = manifest_text(*frozen_sources("cortex-m3"))
    dest = build_dir / ("fw-m3-" + name if name else "fw-m3")
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / "manifest.py").exists() or (dest / "manifest.py").read_text() != manifest:
        (dest / "manifest.py").write_text(manifest)
    work = build_dir / "fw-work" / "cortex-m3"
    libdir = work / "micropython-lib"  # the freeze step requires this folder to exist
    libdir.mkdir(parents=True, exist_ok=True)
    (libdir / "README.md").touch()
    obj = build_dir / "fw-m3-obj"   # shared: a second image recompiles only main.c and the frozen code
    flags = " ".join([*COMMON_MAKE, *TARGETS["cortex-m3"]["make"], *(make_vars or [])])
    if (obj / "flags").exists() and (obj / "flags").read_text() != flags:
        shutil.rmtree(obj)  # make does not see changed flags: start over
    obj.mkdir(parents=True, exist_ok=True)
    (obj / "flags").write_text(flags)
    if not (obj / "heap").exists() or (obj / "heap").read_text() != str(heap):
        (obj / "main.o").unlink(missing_ok=True)  # the heap is a static array sized in main.c
        (obj / "heap").write_text(str(heap))
    if not (obj / "manifest").exists() or (obj / "manifest").read_text() != manifest:
        # makemanifest regenerates only when a frozen file is newer than its output
        (obj / "frozen_content.c").unlink(missing_ok=True)
        (obj / "manifest").write_text(manifest)
    log = dest / "build.log"
    log.write_text("")
    xdir = work / "mpy-cross"
    _make(["make", "-C", str(tree / "mpy-cross"), "-j2", f"BUILD={xdir}"], log)
    _make(["make", "-C", str(tree / "ports" / "qemu"), "-j2", f"BUILD={obj}",
           f"MICROPY_MPYCROSS={xdir}/mpy-cross", f"MICROPY_MPYCROSS_DEPENDENCY={xdir}/mpy-cross",
           f"MPY_LIB_DIR={libdir}", f"MICROPY_HEAP_SIZE={heap}", f"USER_C_MODULES={BOARD / 'cmod'}",
           *flags.split(), f"FROZEN_MANIFEST={dest / 'manifest.py'}", f"{obj}/firmware.elf"], log)
    if not (dest / "firmware.elf").exists() or (obj / "firmware.elf").read_bytes() != (dest / "firmware.elf").read_bytes():
        shutil.copyfile(obj / "firmware.elf", dest / "firmware.elf")
    (dest / "heap").write_text(str(heap))
    return dest / "firmware.elf"


def image_bytes(elf: Path) -> int:
    """Flash a board needs for elf: text + data (arm-none-eabi-size)."""
    out = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True)
    text, data, _bss = (int(x) for x in out.stdout.splitlines()[1].split()[:3])
    return text + data


def firmware(target: str = "unix32", build_missing: bool = False) -> Path | None:
    """The target's firmware file, rebuilt first when its stamp is stale (the frozen sources
    changed) and the MicroPython source is at hand; None when it is not built (unless
    build_missing, then it is built)."""
    t = TARGETS[target]
    product = ROOT / "build" / t["out"] / t["product"]
    src = default_source()
    if src is None or (not product.is_file() and not build_missing):
        return product if product.is_file() else None
    return Path(build(target, src)["product"])


def main(argv: list[str] | None = None) -> int:
    """`edgemeter build-firmware`: with --target, build firmware from source (this module);
    without, tools.build_firmware (mpy-cross, the image, ROMFS)."""
    args_in = sys.argv[1:] if argv is None else argv
    if not any(a == "--target" or a.startswith("--target=") for a in args_in):
        from edgemeter.tools import build_firmware
        return build_firmware.main(args_in)
    ap = argparse.ArgumentParser(prog="edgemeter build-firmware", description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=(*TARGETS, "all"), required=True,
                    help="build this firmware with the device image frozen in (all: both)")
    ap.add_argument("--micropython-src", type=Path, default=None, metavar="PATH",
                    help="a MicroPython tree or its tarball (default: ../shared/micropython/)")
    ap.add_argument("--freeze", choices=("device", "all"), default=None,
                    help="firmware_py modules to freeze (default: unix32 device, cortex-m3 all)")
    ap.add_argument("--with", dest="extra", type=Path, action="append", default=None,
                    metavar="FILE.py", help="an SDK module frozen at the top level (repeat)")
    ap.add_argument("--make", dest="make_vars", action="append", default=[], metavar="VAR=VALUE",
                    help="an extra make variable for the port (repeat)")
    ap.add_argument("--force", action="store_true", help="build even when the stamp matches")
    ap.add_argument("--no-install", action="store_true", help="never apt-get a toolchain")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(args_in)
    results = []
    for t in (list(TARGETS) if args.target == "all" else [args.target]):
        r = build(t, args.micropython_src, freeze=args.freeze, extra=args.extra,
                  make_vars=args.make_vars, force=args.force, install=not args.no_install)
        results.append(r)
        if not args.json:
            print(f"{r['bytes']:8d}  {r['product']} ({t}, {'built' if r['built'] else 'up to date'}; "
                  f"{len(r['stamp']['frozen'])} firmware_py modules frozen)", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

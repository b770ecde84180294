"""Compile firmware_py/ with mpy-cross into the image an SDK freezes or copies to flash.

    python -m edgemeter.tools.build_firmware [--out build/firmware] [--json]
    python -m edgemeter.tools.build_firmware --image build/image [--json]

The sources are the installed firmware_py package (tools/paths.py); the outputs go to ./build of
the current directory unless --out or --image names another folder.

Every .py under firmware_py/ is compiled (a file mpy-cross rejects fails the build); the output
tree keeps the package layout (build/firmware/firmware_py/*.mpy) so that `MICROPYPATH` or a
board's filesystem can hold it as it is. A `manifest.py` for freezing into a MicroPython build is
written beside it. Prints each module's compiled size and the total.

--image DIR writes only the device image: firmware_py.main, what it imports anywhere (mqtt_tls
is imported only when a CA is configured) and, transitively, what those import at module level
(image_modules(); a module loaded on use inside a library function, such as cbor_diag for
cbor.diag or proto_text for proto.describe, is a debugging aid the firmware never calls), as
.mpy plus a manifest.py that freezes exactly those (`module()` lines), and reports the total:
the size an SDK adds to its board.

`edgemeter build-firmware --target unix32|cortex-m3` builds a MicroPython firmware from source
with the device image frozen in instead (tools/mpbuild.py, the command's entry point).

Both also write romfs.img beside (build/firmware/romfs.img): the device image as a ROMFS
filesystem that a board mounts with vfs.VfsRom and imports from in place (tools/romfs.py;
the format `mpremote romfs build` writes), and report its size.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from edgemeter.cloud import cliargs
from edgemeter.tools.fwmodules import ROOT, SRC, image_modules, mpy_cross
from edgemeter.tools.paths import build_dir
from edgemeter.tools import romfs

def build(out: Path) -> dict[str, int]:
    """Compile every module; return {module path: compiled bytes}."""
    exe = mpy_cross()
    dest = out / "firmware_py"
    if dest.exists():
        shutil.rmtree(dest)
    sizes: dict[str, int] = {}
    for src in sorted(SRC.rglob("*.py")):
        rel = src.relative_to(SRC.parent)
        target = out / rel.with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([exe, "-o", str(target), "-s", str(rel), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"mpy-cross failed on {rel}:\n{proc.stderr.strip()}")
        sizes[str(rel)] = target.stat().st_size
    (out / "manifest.py").write_text(
        "# Freeze edgemeter's firmware into a MicroPython build with\n"
        "#   include(\"<edgemeter>/build/firmware/manifest.py\")\n"
        f'package("firmware_py", base_path="{ROOT}")\n'
    )
    return sizes


def build_image(out: Path) -> dict[str, int]:
    """Compile the device image (image_modules() and the package's __init__) into out;
    return {module path: compiled bytes}."""
    exe = mpy_cross()
    dest = out / "firmware_py"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    sizes: dict[str, int] = {}
    names = ["__init__"] + image_modules()
    for m in names:
        rel = Path("firmware_py") / f"{m}.py"
        target = out / rel.with_suffix(".mpy")
        proc = subprocess.run([exe, "-o", str(target), "-s", str(rel), str(SRC.parent / rel)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"mpy-cross failed on {rel}:\n{proc.stderr.strip()}")
        sizes[str(rel)] = target.stat().st_size
    (out / "manifest.py").write_text(
        "# Freeze edgemeter's device image into a MicroPython build with\n"
        f'#   include("{out.resolve()}/manifest.py")\n'
        + "".join(f'module("firmware_py/{m}.py", base_path="{ROOT}")\n' for m in names))
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = cliargs.Parser(prog="edgemeter build-firmware", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=build_dir("firmware"),
                    help="where the .mpy tree, manifest.py and romfs.img go (default ./build/firmware)")
    ap.add_argument("--image", type=Path, default=None,
                    help="write only the device image (firmware_py.main and its imports) here")
    ap.add_argument("--json", action="store_true", help="print {module: bytes} as JSON")
    args = ap.parse_args(argv)
    if args.image is not None:
        args.out = args.image
        sizes = build_image(args.image)
    else:
        sizes = build(args.out)
    total = sum(sizes.values())
    rom = romfs.build_romfs(args.out / "romfs.img")["romfs.img"]
    if args.json:
        print(json.dumps({"modules": sizes, "total_bytes": total, "romfs_bytes": rom}, indent=2))
    else:
        for name, size in sizes.items():
            print(f"{size:8d}  {name}")
        print(f"{total:8d}  total ({len(sizes)} modules) -> {args.out}")
        print(f"{rom:8d}  ROMFS image of the device modules -> {args.out / 'romfs.img'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

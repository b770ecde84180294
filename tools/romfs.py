"""ROMFS images of the device firmware: the read-only filesystem MicroPython (1.25+) mounts
with `vfs.VfsRom` and imports .mpy files from *in place*: the bytecode stays in the image (a
board's flash partition) instead of being copied into the GC heap.

    python -m edgemeter.tools.romfs [--out build/firmware/romfs.img] [--json]

The image holds firmware_py/__init__.mpy and the device modules (device_modules(): the import
closure of firmware_py.main without DEVICE_EXCLUDE), compiled with mpy-cross, at the same
paths as on a filesystem, so a board mounts it at /rom and puts "/rom" on sys.path; and a text
file `preload` (preload_text()): the modules main imports at module level, leaf first, and
the calls of PRELOAD_CALLS, for a board's boot (tools/romboot.py) to import one by
one with gc.collect() after each. Measured on the unix port, that packs what every import
keeps at the bottom of the heap: the device loop then runs in a 15 KiB smaller heap than
when `import firmware_py.main` loads the same modules in one go, and building the default
price book right after pricebook saves another 5 KiB (tools/bench_firmware_heap.py).

Format (what `mpremote romfs build` writes; MicroPython extmod/vfs_rom.c reads it): every
number is an unsigned varint, 7 bits a byte, most significant group first, 0x80 on every byte
but the last. A record is <kind> <length> <payload>. The image is one record of kind
b"\\xd2\\xcd\\x31" (the header) whose payload is the root's records; a directory record (kind 4)
is <name length> <name> <records>, a file record (kind 5) is <name length> <name> and a
data record (kind 2, verbatim) holding the contents. The header's length gets one redundant
0x80 byte when that makes the image an even number of bytes long.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from edgemeter.tools.fwmodules import ROOT, SRC, image_modules, module_imports, mpy_cross
from edgemeter.tools.paths import build_dir



HEADER = b"\xd2\xcd\x31"
KIND_DATA = 2
KIND_DIR = 4
KIND_FILE = 5

# Modules a device image leaves out: debugging and text aids (cbor_diag, proto_text: they import
# the core, never the reverse), the broker half of MQTT (tests, tools), and the cloud's side
# of billing.
DEVICE_EXCLUDE = ("billing", "cbor_diag", "civil", "cloud_session", "mqtt_server", "pool",
                  "proto_text")


def uint(n: int) -> bytes:
    """ROMFS varint: big-endian groups of 7 bits, 0x80 on all but the last byte."""
    if n < 0:
        raise ValueError("negative length")
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def record(kind: int, payload: bytes) -> bytes:
    return uint(kind) + uint(len(payload)) + payload


def _name(name: str) -> bytes:
    raw = name.encode("ascii")
    if not raw or b"/" in raw:
        raise ValueError(f"bad file name {name!r}")
    return uint(len(raw)) + raw


def _dir_records(tree: dict) -> bytes:
    out = b""
    for name in sorted(tree):
        node = tree[name]
        if isinstance(node, dict):
            out += record(KIND_DIR, _name(name) + _dir_records(node))
        else:
            out += record(KIND_FILE, _name(name) + record(KIND_DATA, bytes(node)))
    return out


def encode(files: dict[str, bytes]) -> bytes:
    """A ROMFS image holding files ({"dir/name": contents}); names sorted in each directory."""
    tree: dict = {}
    for path, data in files.items():
        parts = path.strip("/").split("/")
        node = tree
        for d in parts[:-1]:
            node = node.setdefault(d, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: {d} is a file")
        if parts[-1] in node:
            raise ValueError(f"{path}: given twice")
        node[parts[-1]] = data
    body = _dir_records(tree)
    length = uint(len(body))
    if (len(HEADER) + len(length) + len(body)) % 2:
        length = b"\x80" + length
    return HEADER + length + body


def _uint_at(img: bytes, i: int) -> tuple[int, int]:
    n = 0
    while True:
        if i >= len(img):
            raise ValueError(f"offset {i}: truncated number")
        b = img[i]
        i += 1
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            return n, i


def decode(img: bytes) -> dict[str, bytes]:
    """The files of an image ({"dir/name": contents}); raises ValueError on a malformed one."""
    if img[:3] != HEADER:
        raise ValueError("offset 0: not a ROMFS image")
    n, i = _uint_at(img, 3)
    if i + n != len(img):
        raise ValueError(f"offset {i}: header length {n} != {len(img) - i}")
    out: dict[str, bytes] = {}

    def walk(i: int, end: int, prefix: str) -> None:
        while i < end:
            kind, i = _uint_at(img, i)
            size, i = _uint_at(img, i)
            stop = i + size
            if kind in (KIND_DIR, KIND_FILE):
                ln, j = _uint_at(img, i)
                name = img[j:j + ln].decode("ascii")
                j += ln
                if kind == KIND_DIR:
                    walk(j, stop, prefix + name + "/")
                else:
                    dkind, j = _uint_at(img, j)
                    dsize, j = _uint_at(img, j)
                    if dkind != KIND_DATA or j + dsize != stop:
                        raise ValueError(f"offset {j}: file {name} without verbatim data")
                    out[prefix + name] = img[j:stop]
            i = stop
        if i != end:
            raise ValueError(f"offset {i}: record overruns its directory")

    walk(i, len(img), "")
    return out


# Calls a boot makes right after importing a module (preload file): the default price book is
# built once, early, while the heap is still unfragmented (it is the largest runtime table).
PRELOAD_CALLS = {"pricebook": "default"}


def load_order(root: str = "main") -> list[str]:
    """root's module-level import closure (without DEVICE_EXCLUDE), leaf modules first: the
    order in which importing one never imports another not yet loaded."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(m: str) -> None:
        if m in seen or m in DEVICE_EXCLUDE or not (SRC / f"{m}.py").exists():
            return
        seen.add(m)
        for d in sorted(module_imports(SRC / f"{m}.py", anywhere=False)):
            visit(d)
        order.append(m)
    visit(root)
    return order


def preload_text(root: str = "main") -> bytes:
    """The image's `preload` file: one line per module in load_order(), "firmware_py.<m>",
    followed by "firmware_py.<m>:<function>" where PRELOAD_CALLS names a call."""
    lines = []
    for m in load_order(root):
        lines.append(f"firmware_py.{m}")
        if m in PRELOAD_CALLS:
            lines.append(f"firmware_py.{m}:{PRELOAD_CALLS[m]}")
    return "".join(ln + "\n" for ln in lines).encode()


def device_modules() -> list[str]:
    """The firmware_py modules a device image holds: __init__, firmware_py.main's import
    closure (tools.fwmodules.image_modules) without DEVICE_EXCLUDE."""
    return ["__init__"] + [m for m in image_modules() if m not in DEVICE_EXCLUDE]


def compile_modules(names: list[str]) -> dict[str, bytes]:
    """{"firmware_py/<m>.mpy": bytecode} for each module, compiled by mpy-cross."""
    exe = mpy_cross()
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in names:
            rel = f"firmware_py/{m}.py"
            target = Path(tmp) / f"{m}.mpy"
            proc = subprocess.run([exe, "-o", str(target), "-s", rel, str(ROOT / rel)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"mpy-cross failed on {rel}:\n{proc.stderr.strip()}")
            out[f"firmware_py/{m}.mpy"] = target.read_bytes()
    return out


def build_romfs(path: Path, names: list[str] | None = None,
                extra: dict[str, bytes] | None = None) -> dict[str, int]:
    """Write the device image (device_modules() and the preload file, or only names) as
    ROMFS to path, plus extra files ({"fw_driver.mpy": bytes}: e.g. an SDK's own code, which a
    board keeps in flash too); return {file in the image: bytes} and path.name: its size."""
    files = compile_modules(device_modules() if names is None else names)
    if names is None:
        files["preload"] = preload_text()
    files.update(extra or {})
    img = encode(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(img)
    sizes = {k: len(v) for k, v in files.items()}
    sizes[path.name] = len(img)
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgemeter.tools.romfs", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=build_dir("firmware", "romfs.img"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = build_romfs(args.out)
    if args.json:
        print(json.dumps(sizes, indent=2))
    else:
        img = sizes.pop(args.out.name)
        for name, size in sizes.items():
            print(f"{size:8d}  {name}")
        print(f"{img:8d}  ROMFS image ({len(sizes)} files) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

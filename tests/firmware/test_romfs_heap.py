"""The firmware's heap with its bytecode in flash, emulated on the MicroPython unix port: the
device image as ROMFS (tools/romfs.py) mounted by tools/romboot.py from one buffer,
the heap sized as the board's heap plus that buffer (romfs_run.heapsize). The cloud is this
process (CloudSession + Pool over the loop's stdin/stdout); the broker is the firmware tests'.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from edgemeter.tools import romfs_run as R

from edgemeter.tools import romfs

# The board heap the device loop is asserted to run in (beside the image). The target
# is 32 KiB; on the 64-bit unix port with a ROMFS image the imports alone keep about 83 KB
# (qstrs, per-function records, module dicts and the tables built at import are heap; see
# firmware_py/README.md, "Heap with the firmware in flash"). The smallest heap the loop ran in
# was 97 KiB with the shim's preload (118 KiB without; tools/bench_firmware_heap.py); the
# test holds that plus ~7 % for changes.
BUDGET = 104 * 1024
TARGET = 32 * 1024
ROUNDS = 120


def test_romfs_round_trip(tmp_path: Path) -> None:
    files = {"firmware_py/a.mpy": b"M\x06" + bytes(300), "firmware_py/sub/b.mpy": b"x" * 200,
             "top.mpy": b""}
    img = romfs.encode(files)
    assert img[:3] == b"\xd2\xcd\x31" and len(img) % 2 == 0
    assert romfs.decode(img) == files
    assert romfs.uint(127) == b"\x7f" and romfs.uint(128) == b"\x81\x00"


def test_imports_from_romfs_run_in_place(tmp_path: Path) -> None:
    """Importing a module from the ROMFS image takes at least 3/4 of its .mpy size less heap
    than importing the same .mpy from the filesystem: the bytecode is not copied."""
    img = R.image(tmp_path / "img", with_loop=False)
    fs = tmp_path / "fs"
    names = ["__init__", "cbor", "mac", "pricebook", "proto", "mqtt", "mqtt_codec"]
    (fs / "firmware_py").mkdir(parents=True)
    for name, data in romfs.compile_modules(names).items():
        (fs / name).write_bytes(data)
    script = tmp_path / "imp.py"
    script.write_text(
        "import gc, sys\n"
        "for m in ('cbor', 'pricebook', 'proto', 'mqtt_codec', 'mqtt'):\n"
        "    gc.collect(); a = gc.mem_alloc()\n"
        "    __import__('firmware_py.' + m)\n"
        "    gc.collect(); print(m, gc.mem_alloc() - a, sys.modules['firmware_py.' + m])\n")
    env_fs = R.shim_env(str(fs))
    # the same shim and heap both times; the filesystem run just has no image on its path
    rom = subprocess.run(R.shim_argv(img, 400000, "--no-preload", str(script)), capture_output=True, text=True,
                         env=R.shim_env(), cwd="/", check=True).stdout
    empty = tmp_path / "empty.img"
    empty.write_bytes(romfs.encode({"x": b""}))
    fsr = subprocess.run(R.shim_argv(empty, 400000, "--no-preload", str(script)), capture_output=True,
                         text=True, env=env_fs, cwd="/", check=True).stdout
    sizes = {n[12:-4]: len(d) for n, d in romfs.decode(img.read_bytes()).items()
             if n.startswith("firmware_py/")}

    def costs(out: str) -> dict[str, int]:
        return {w[0]: int(w[1]) for w in (ln.split() for ln in out.splitlines()[1:])}
    assert "/rom/firmware_py/cbor.mpy" in rom and str(fs) in fsr
    c_rom, c_fs = costs(rom), costs(fsr)
    for m, size in sizes.items():
        if m in c_rom:
            print(f"{m}: {size} B .mpy, heap {c_fs[m]} B from a file, {c_rom[m]} B from ROMFS")
            assert c_fs[m] - c_rom[m] >= size * 3 // 4, (m, size, c_fs[m], c_rom[m])


def test_device_loop_in_the_emulated_heap(tmp_path: Path) -> None:
    img = R.image(tmp_path / "img")
    heap = R.heapsize(img, BUDGET)
    r = R.run_loop(img, heap, tmp_path / "j", ROUNDS)
    assert r["rc"] == 0 and "MemoryError" not in r["stderr"], r["stderr"][-3000:]
    rom, done = r["rom"], r["done"]
    assert r["preload"]["modules"] == len(romfs.load_order())
    assert rom["heap"] - rom["buf"] >= R.usable(BUDGET)
    assert done["rounds"] == ROUNDS and r["served"] == list(range(ROUNDS))
    assert done["unacked"] == 0 and len(r["booked"]) == done["acked"]
    assert sum(len(b["rounds"]) for b in r["booked"].values()) == ROUNDS
    buf = rom["buf"]
    print(f"image {rom['image']} B (buffer {buf} B of heap), -X heapsize={heap} for a "
          f"{BUDGET} B board heap; beyond the image: after imports {r['mods']['live'] - buf} B, "
          f"meter and client {r['client']['live'] - buf} B, high-water mark over {ROUNDS} "
          f"rounds {done['hwm'] - buf} B (peak before collections {done['peak'] - buf} B); "
          f"target {TARGET} B")

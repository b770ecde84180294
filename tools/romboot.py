# Boot shim: the MicroPython unix port playing a board whose firmware sits in flash.
#
#   micropython -X heapsize=H romboot.py IMAGE [--no-preload] -m MODULE [ARG...]
#   micropython -X heapsize=H romboot.py IMAGE [--no-preload] SCRIPT [ARG...]
#
# A board keeps its firmware's bytecode in flash: frozen into the MicroPython build, or in a
# ROMFS partition that `vfs.VfsRom` mounts and imports .mpy files from in place. The unix port
# has no flash, so this shim stands in for it: it reads IMAGE (tools/romfs.py; by default
# build/firmware/romfs.img) into ONE bytearray, the first allocation of the run, mounts it
# with vfs.mount(vfs.VfsRom(buf), "/rom") and puts /rom first on sys.path (then MICROPYPATH's
# entries; the shim's own directory is taken off), so every
# firmware_py import executes its bytecode from the image. The image then lives in the GC
# heap, which a board's flash does not: give the process H = the board's heap + what the
# buffer takes (tests/firmware/romfs_run.py: heapsize()), and count the firmware's heap as
# gc.mem_alloc() minus the buffer. The first line printed says what to subtract:
#   rom image=<image bytes> buf=<heap bytes the buffer takes> base=<gc.mem_alloc() after the
#   mount, buffer included> heap=<gc.mem_alloc() + gc.mem_free()>
# What the emulation does not remove: the qstrs of an image are interned into the heap at
# import (a frozen build has them in flash), and so are each function's small raw-code record.
#
# Then, unless --no-preload comes after IMAGE, it imports the modules the image's `preload`
# file lists, leaf first, with gc.collect() after each, as a board's boot.py would (the
# import garbage is collected before the next import instead of fragmenting the heap), and
# prints `rom preload modules=<n> live=<gc.mem_alloc()>`.
# Without a MODULE or SCRIPT it stops there (a probe). -m MODULE: imports it, then calls
# MODULE.main(ARGS) when it has one (firmware_py.main does: `romboot.py IMAGE -m
# firmware_py.main CONFIG` is the board's `micropython -m firmware_py.main CONFIG`) and exits
# with its status. SCRIPT: runs the file as __main__-like
# code (compiled into the heap: keep test scripts small, or put them in the image or in a
# directory on MICROPYPATH as .mpy and use -m).
import gc
import os
import sys
import vfs

gc.collect()
_a0 = gc.mem_alloc()
_buf = bytearray(os.stat(sys.argv[1])[6])
_a1 = gc.mem_alloc()
_f = open(sys.argv[1], "rb")
_f.readinto(_buf)
_f.close()
_f = None
vfs.mount(vfs.VfsRom(_buf), "/rom")
if sys.path and sys.path[0] == sys.argv[0].rpartition("/")[0]:
    sys.path.pop(0)  # the shim's own directory (tests/firmware): not on a board's path
sys.path.insert(0, "/rom")
gc.collect()
print("rom image=%d buf=%d base=%d heap=%d"
      % (len(_buf), _a1 - _a0, gc.mem_alloc(), gc.mem_alloc() + gc.mem_free()))


def _preload():
    # A board's boot.py: the image's modules one by one, leaf first, gc.collect() after each
    # (and the calls listed, "module:function"), so what each import keeps is packed low in
    # the heap before the firmware's own allocations start (tools/romfs.py, preload_text).
    try:
        f = open("/rom/preload")
    except OSError:
        return
    names = f.read().split()
    f.close()
    n = 0
    for ln in names:
        mod, _, fn = ln.partition(":")
        if mod not in sys.modules:
            __import__(mod)
            n += 1
        if fn:
            getattr(sys.modules[mod], fn)()
        gc.collect()
    print("rom preload modules=%d live=%d" % (n, gc.mem_alloc()))


def _boot(argv):
    if argv and argv[0] == "--no-preload":
        argv = argv[1:]
    else:
        _preload()
    if not argv:
        return 0
    if len(argv) >= 2 and argv[0] == "-m":
        name = argv[1]
        sys.argv[:] = argv[1:]
        __import__(name)
        mod = sys.modules[name]
        entry = getattr(mod, "main", None)
        if entry is not None:
            return entry(argv[2:])
        return 0
    sys.argv[:] = argv
    g = {"__name__": "__main__", "__file__": argv[0]}
    with open(argv[0]) as f:
        src = f.read()
    code = compile(src, argv[0], "exec")
    src = None
    exec(code, g)
    return 0


sys.exit(_boot(sys.argv[2:]))

# Golden vectors for runtime-neutral tests: JSON files under tests/vectors/, read the same way on
# CPython (pytest) and on the MicroPython unix port (tests/mp/run.py). Tests run from the repo root.
# On the QEMU Cortex-M3 board (tools/qemu_m3.py) the same JSON texts are frozen into the firmware
# as the module em_vectors (tests/mp/board.py), and the journal tests write to a RAM littlefs.
import json

try:
    _BASE = __file__.rsplit("/", 2)[0] + "/vectors/"
except NameError:  # frozen or odd loaders: fall back to the repo-root layout
    _BASE = "tests/vectors/"


def load(name):
    """The parsed JSON of tests/vectors/NAME.json."""
    try:
        import em_vectors  # the board's frozen copy
    except ImportError:
        with open(_BASE + name + ".json") as f:
            return json.load(f)
    return json.loads(getattr(em_vectors, name))


def unhex(s):
    import binascii
    return binascii.unhexlify(s)


def raises(exc_type, fn, *args):
    """Call fn(*args); return the exception if it is an exc_type, fail otherwise."""
    try:
        fn(*args)
    except exc_type as exc:
        return exc
    raise AssertionError("expected %s from %r" % (exc_type.__name__, fn))


def tmpdir(tag="t"):
    """A new empty directory build/tmp/<tag><random> (relative to the repo root)."""
    import os
    import binascii
    for p in ("build", "build/tmp"):
        try:
            os.mkdir(p)
        except OSError:
            pass
    d = "build/tmp/" + tag + binascii.hexlify(token()).decode()
    os.mkdir(d)
    return d


_n = [0]


def token():
    """5 bytes that differ between calls and runs (os.urandom where the port has it)."""
    import os
    try:
        return os.urandom(5)
    except AttributeError:  # the qemu port has no random source: a counter and the clock
        import time
        import struct
        _n[0] += 1
        return struct.pack("<HBH", time.ticks_us() & 0xFFFF, _n[0] & 0xFF, time.ticks_ms() & 0xFFFF)


def rmtree(d):
    """Remove directory d and everything below it (MicroPython has no shutil)."""
    import os
    for n in os.listdir(d):
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:
            rmtree(p)
    os.rmdir(d)

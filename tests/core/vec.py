# Golden vectors for runtime-neutral tests: JSON files under tests/vectors/, read the same way on
# CPython (pytest) and on the MicroPython unix port (tests/mp/run.py). Tests run from the repo root.
import json

try:
    _BASE = __file__.rsplit("/", 2)[0] + "/vectors/"
except NameError:  # frozen or odd loaders: fall back to the repo-root layout
    _BASE = "tests/vectors/"


def load(name):
    """The parsed JSON of tests/vectors/NAME.json."""
    with open(_BASE + name + ".json") as f:
        return json.load(f)


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
    d = "build/tmp/" + tag + binascii.hexlify(os.urandom(5)).decode()
    os.mkdir(d)
    return d


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

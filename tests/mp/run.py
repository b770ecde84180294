# Runs runtime-neutral test modules on MicroPython (the unix port, and the QEMU Cortex-M3 board
# where this file is frozen as `mprun` and called as mprun.main([...])).
#   micropython tests/mp/run.py tests/core/test_x.py [...]
# Each module's functions named test_* are called with no arguments; a test passes when it
# returns without raising. The last line is "N passed, M failed", and the exit status is 1 when
# anything failed. The same modules run under pytest on CPython.
import sys
import gc


def main(paths):
    """Run the test_* functions of each module in paths; return the number that failed."""
    passed = 0
    failed = 0
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".py"):
            name = name[:-3]
        try:
            mod = __import__(name)
        except Exception as exc:  # noqa: BLE001 - report and count, keep going
            print("ERROR importing", name, repr(exc))
            sys.print_exception(exc)
            failed += 1
            continue
        names = sorted(k for k in dir(mod) if k.startswith("test_"))
        for k in names:
            fn = getattr(mod, k)
            if not callable(fn):
                continue
            try:
                fn()
                passed += 1
                print("PASS", name + "." + k)
            except Exception as exc:  # noqa: BLE001
                failed += 1
                print("FAIL", name + "." + k, repr(exc))
                sys.print_exception(exc)
            gc.collect()
    print("%d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.path.insert(0, "")
    if "tests/core" not in sys.path:
        sys.path.insert(0, "tests/core")
    sys.exit(1 if main(sys.argv[1:]) else 0)

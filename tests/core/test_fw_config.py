# The firmware's configuration (firmware_py.main rule F1): validated once, every problem named
# with its key. Runtime-neutral: pytest runs it on CPython, tests/test_micropython.py on
# MicroPython. Files go under build/tmp/<unique>.
import vec
from firmware_py import main as F


def tmpdir():
    return vec.tmpdir("fc")


def good(d):
    return {"dev": 1042, "ws": 7, "kid": 1, "key": "00" * 32, "host": "127.0.0.1",
            "journal": d + "/jnl"}


def test_minimal_config_gets_the_defaults():
    d = tmpdir()
    cfg, probs = F.check(good(d))
    assert probs == []
    assert cfg["port"] == 1883 and cfg["user"] is None and cfg["ca"] is None
    assert cfg["journal_max_bytes"] == 65536 and cfg["workload"] is None and cfg["gc"] is True
    assert sorted(cfg) == sorted(k for k, _ in F.KINDS)


def test_every_missing_key_is_named():
    cfg, probs = F.check({})
    assert probs == ["%s: required" % k for k in sorted(F.REQUIRED)]


def test_every_problem_is_reported_with_its_key():
    d = tmpdir()
    raw = good(d)
    raw.update({"dev": 0, "ws": -1, "kid": True, "key": "zz" * 32, "host": "", "port": "1883",
                "password": 5, "gc": 1, "meter": [], "colour": "red"})
    cfg, probs = F.check(raw)
    keys = [p.split(":")[0] for p in probs]
    assert keys == ["colour", "dev", "gc", "host", "key", "kid", "meter", "password", "port",
                    "ws"], probs
    assert "colour: unknown key" in probs
    assert "dev: must be an integer >= 1, not 0" in probs


def test_cross_checks_after_the_types():
    d = tmpdir()
    raw = good(d)
    raw.update({"port": 70000, "segment_bytes": 32, "journal_max_bytes": 16,
                "backoff_base_ms": 500, "backoff_cap_ms": 100, "ca": d + "/none.pem",
                "journal": d + "/no/such/jnl", "meter": {"batch": 5, "bogus": 1, "rto": -1,
                                                         "max_bytes": 100}})
    cfg, probs = F.check(raw)
    assert probs == [
        "port: must be at most 65535",
        "segment_bytes: must be at least 64",
        "journal_max_bytes: must be at least segment_bytes",
        "backoff_cap_ms: must be at least backoff_base_ms",
        "ca: no such file %r" % (d + "/none.pem"),
        "journal: parent directory %r does not exist" % (d + "/no/such"),
        "meter.bogus: unknown key",
        "meter.max_bytes: set journal_max_bytes / segment_bytes instead",
        "meter.rto: must be an integer >= 0, not -1",
    ], probs


def test_load_reads_json_and_raises_with_all_problems():
    d = tmpdir()
    p = d + "/em.json"
    with open(p, "w") as f:
        f.write('{"dev": 1042, "ws": 7, "kid": 1, "key": "%s", "host": "h", "journal": "%s"}'
                % ("ab" * 32, d + "/jnl"))
    cfg = F.load(p)
    assert cfg["dev"] == 1042 and cfg["key"] == "ab" * 32
    with open(p, "w") as f:
        f.write('{"dev": 1042,')
    try:
        F.load(p)
        raise AssertionError("no ConfigError for bad JSON")
    except F.ConfigError as exc:
        assert exc.problems[0].startswith("config: ") and "not JSON" in exc.problems[0]
    with open(p, "w") as f:
        f.write('{"dev": "x", "port": 0}')
    try:
        F.load(p)
        raise AssertionError("no ConfigError")
    except F.ConfigError as exc:
        assert isinstance(exc, ValueError)
        assert len(exc.problems) == 7  # dev, port and five required keys
        assert exc.problems[0] == "dev: must be an integer >= 1, not 'x'"
    try:
        F.load(d + "/missing.json")
        raise AssertionError("no ConfigError")
    except F.ConfigError as exc:
        assert "cannot read" in exc.problems[0]


def test_main_reports_config_errors_with_status_2():
    assert F.main([]) == 2
    d = tmpdir()
    assert F.main([d + "/missing.json"]) == 2

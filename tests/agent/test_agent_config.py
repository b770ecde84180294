"""Agent configuration: defaults plus a site file, validated once, every problem named by its
key; `edgemeter agent --config` exits 2 printing them (no traceback)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgemeter.agent import config as C
from agent_harness import ROOT

KEY = "ab" * 32


def problems(site, base="."):
    with pytest.raises(C.ConfigError) as ei:
        C.validate(site, base)
    return ei.value.problems


def run(path):
    p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "agent", "--config", str(path)],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr


def test_minimal_site_file_and_defaults():
    cfg = C.validate({"device": {"ws": 7, "dev": 1042, "key": KEY}})
    assert cfg["mqtt"]["username"] == "7/1042" and cfg["mqtt"]["url"] == "mqtt://127.0.0.1:1883"
    assert cfg["journal"]["fsync"] is True and cfg["meter"]["batch"] == 10
    m = C.meter_cfg(cfg)
    assert m["max_bytes"] == cfg["journal"]["max_bytes"] and "book_file" not in m


def test_every_problem_named_by_its_key():
    p = problems({"device": {"ws": "seven", "key": "xyz", "colour": 1},
                  "mqtt": {"url": "http://broker", "keepalive": 2, "backoff_base_ms": 5000,
                           "backoff_cap_ms": 100},
                  "journal": {"max_bytes": 8192, "segment_bytes": 65536, "fsync": "yes"},
                  "meter": {"batch": 0, "window": -1, "postpaid": 2},
                  "agent": {"log_level": "loud"}, "extra": {}})
    text = "\n".join(p)
    for key in ("device.ws", "device.dev: required", "device.key", "device.colour: unknown key",
                "mqtt.url", "mqtt.keepalive", "mqtt.backoff_cap_ms", "journal.segment_bytes",
                "journal.fsync", "meter.batch", "meter.window", "meter.postpaid",
                "agent.log_level", "extra: unknown section"):
        assert key in text, key
    assert len(p) >= 14


def test_secret_files(tmp_path):
    (tmp_path / "key.bin").write_bytes(bytes(range(32)))
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = C.validate({"device": {"ws": 1, "dev": 2, "key_file": "key.bin"},
                      "mqtt": {"password_file": "pw"}}, str(tmp_path))
    assert cfg["device"]["key"] == bytes(range(32)).hex() and cfg["mqtt"]["password"] == "s3cret"
    p = problems({"device": {"ws": 1, "dev": 2, "key": KEY, "key_file": "nope"}}, str(tmp_path))
    assert any(x.startswith("device.key_file: no such file") for x in p)
    assert any(x.startswith("device.key: give exactly one") for x in p)


def test_daemon_reports_bad_toml_and_json(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text('[device]\nws = 7\ndev = "x"\nkey = "%s"\n[mqtt]\nkeepalive = 0\n' % KEY)
    rc, err = run(bad)
    assert rc == 2 and "Traceback" not in err
    assert "device.dev: expected an integer" in err and "mqtt.keepalive:" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[device\nws = 7\n")
    rc, err = run(broken)
    assert rc == 2 and "not valid TOML" in err
    js = tmp_path / "agent.json"
    js.write_text(json.dumps({"device": {"ws": 7, "dev": 9, "key": KEY},
                              "api": {"socket_mode": "0660"}}))
    rc, err = run(js)
    assert rc == 2 and "api.socket_mode: expected an integer" in err
    rc, err = run(tmp_path / "missing.toml")
    assert rc == 2 and "cannot read" in err
    good = tmp_path / "good.toml"
    good.write_text('[device]\nws = 7\ndev = 9\nkey = "%s"\n' % KEY)
    p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "agent", "--config", str(good),
                        "--check"], cwd=str(ROOT), capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "configuration OK" in p.stdout

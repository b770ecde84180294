"""The Linux agent's configuration: one dict of defaults plus a site file (TOML, or JSON when
the file name ends in .json), validated once at start, every problem reported with its key.

    cfg = load("/etc/edgemeter/agent.toml")      # ConfigError listing every problem
    cfg["device"]["dev"], cfg["mqtt"]["url"], ...

Sections and keys are DEFAULTS below; agent/README.md describes each. A key that is not in
DEFAULTS is an error (a typo must not silently fall back to a default). REQUIRED keys have no
usable default. Secrets may be given inline or by file (device.key_file, mqtt.password_file)
so that the site file itself can be world-readable.
"""
from __future__ import annotations

import json
import os
import tomllib
from typing import Any, Callable
from urllib.parse import urlsplit

from firmware_py import device_session
from firmware_py import meter as fm

DEFAULTS: dict[str, dict[str, Any]] = {
    "device": {"ws": 0, "dev": 0, "kid": 1, "key": "", "key_file": ""},
    "mqtt": {"url": "mqtt://127.0.0.1:1883", "username": "", "password": "", "password_file": "",
             "ca_file": "", "keepalive": 60, "backoff_base_ms": 1000, "backoff_cap_ms": 60000},
    "journal": {"dir": "/var/lib/edgemeter", "max_bytes": 4 << 20, "segment_bytes": 64 << 10,
                "fsync": True},
    "meter": {"book_file": "", **{k: v for k, v in {**fm.CFG, **device_session.CFG}.items()
                                   if k not in ("max_bytes", "segment_bytes")}},
    "api": {"socket": "/run/edgemeter/agent.sock", "socket_mode": 0o660, "max_line": 65536,
            "max_connections": 64},
    "agent": {"tick_ms": 500, "shutdown_wait_s": 5, "return_lease": True, "log_level": "info"},
}
REQUIRED = ("device.ws", "device.dev")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is unusable; .problems lists "key: what is wrong" strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _uint(lo: int = 0, hi: int = 2**63) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if type(v) is not int or not lo <= v <= hi:
            return "expected an integer in %d..%d, got %r" % (lo, hi, v)
        return None
    return check


def _bool(v: Any) -> str | None:
    return None if type(v) is bool else "expected true or false, got %r" % (v,)


def _str(v: Any) -> str | None:
    return None if type(v) is str else "expected a string, got %r" % (v,)


def _url(v: Any) -> str | None:
    if type(v) is not str:
        return "expected a string, got %r" % (v,)
    u = urlsplit(v)
    try:
        port = u.port
    except ValueError:
        return "bad port in %r" % (v,)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname or (port is not None and port < 1):
        return "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got %r" % (v,)
    return None


def _key(v: Any) -> str | None:
    if type(v) is not str:
        return "expected 64 hex digits, got %r" % (v,)
    if v and (len(v) != 64 or any(c not in "0123456789abcdefABCDEF" for c in v)):
        return "expected 64 hex digits (a 32-byte key)"
    return None


def _level(v: Any) -> str | None:
    return None if v in LOG_LEVELS else "expected one of %s, got %r" % (", ".join(LOG_LEVELS), v)


_U32 = _uint(0, 2**32 - 1)
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "device.ws": _uint(1, 2**63), "device.dev": _uint(1, 2**63), "device.kid": _uint(0, 2**32),
    "device.key": _key, "device.key_file": _str,
    "mqtt.url": _url, "mqtt.username": _str, "mqtt.password": _str, "mqtt.password_file": _str,
    "mqtt.ca_file": _str, "mqtt.keepalive": _uint(5, 65535), "mqtt.backoff_base_ms": _uint(1, 600000),
    "mqtt.backoff_cap_ms": _uint(1, 3600000),
    "journal.dir": _str, "journal.max_bytes": _uint(4096, 2**40),
    "journal.segment_bytes": _uint(256, 2**30), "journal.fsync": _bool,
    "meter.book_file": _str, "meter.postpaid": _uint(0, 1), "meter.batch": _uint(1, 1024),
    "meter.window": _uint(1, 64), "meter.max_open": _uint(1, 4096),
    "meter.ram_rounds": _uint(1, 65536),
    "api.socket": _str, "api.socket_mode": _uint(0, 0o777), "api.max_line": _uint(256, 2**24),
    "api.max_connections": _uint(1, 4096),
    "agent.tick_ms": _uint(10, 60000), "agent.shutdown_wait_s": _uint(0, 3600),
    "agent.return_lease": _bool, "agent.log_level": _level,
}


def parse(text: str, fmt: str) -> dict[str, Any]:
    """The site file's tables; ConfigError naming the file's syntax problem."""
    try:
        data = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(["(file): not valid %s: %s" % (fmt.upper(), exc)]) from None
    if not isinstance(data, dict):
        raise ConfigError(["(file): the top level must be a table of sections"])
    return data


def validate(site: dict[str, Any], base_dir: str = ".") -> dict[str, dict[str, Any]]:
    """Defaults overlaid with the site tables; ConfigError with every problem at once."""
    cfg = {sec: dict(vals) for sec, vals in DEFAULTS.items()}
    problems: list[str] = []
    for sec, vals in site.items():
        if sec not in cfg:
            problems.append("%s: unknown section (known: %s)" % (sec, ", ".join(DEFAULTS)))
            continue
        if not isinstance(vals, dict):
            problems.append("%s: expected a table of keys" % sec)
            continue
        for k, v in vals.items():
            if k not in cfg[sec]:
                problems.append("%s.%s: unknown key" % (sec, k))
                continue
            cfg[sec][k] = v
    missing = set()
    for name in REQUIRED:
        sec, k = name.split(".")
        tbl = site.get(sec)
        if not isinstance(tbl, dict) or k not in tbl:
            problems.append("%s: required" % name)
            missing.add(name)
    for sec, vals in cfg.items():
        for k, v in vals.items():
            name = "%s.%s" % (sec, k)
            check = CHECKS.get(name)
            if check is None and type(DEFAULTS[sec][k]) is int:
                check = _U32
            why = check(v) if check else None
            if why and name not in missing:
                problems.append("%s: %s" % (name, why))
    d, m = cfg["device"], cfg["mqtt"]
    for sec, k in (("device", "key_file"), ("mqtt", "password_file"), ("mqtt", "ca_file"),
                   ("meter", "book_file")):
        p = cfg[sec][k]
        if type(p) is str and p:
            p = cfg[sec][k] = os.path.join(base_dir, p)
            if not os.path.isfile(p):
                problems.append("%s.%s: no such file %r" % (sec, k, p))
    if type(d["key"]) is str and type(d["key_file"]) is str:
        if bool(d["key"]) == bool(d["key_file"]):
            problems.append("device.key: give exactly one of device.key and device.key_file")
        elif d["key_file"] and os.path.isfile(d["key_file"]):
            with open(d["key_file"], "rb") as f:
                raw = f.read()
            text = raw.strip().decode("ascii", "replace")
            if len(raw) == 32:  # raw bytes: never strip them (a key may end in 0x0a)
                d["key"] = raw.hex()
            elif len(text) == 64 and not _key(text):
                d["key"] = text
            else:
                problems.append("device.key_file: expected 32 raw bytes or 64 hex digits")
    if m["password"] and m["password_file"]:
        problems.append("mqtt.password: give at most one of mqtt.password and mqtt.password_file")
    elif m["password_file"] and os.path.isfile(m["password_file"]):
        with open(m["password_file"], encoding="utf-8") as f:
            m["password"] = f.read().strip()
    if type(d["ws"]) is int and type(d["dev"]) is int and not m["username"]:
        m["username"] = "%d/%d" % (d["ws"], d["dev"])  # docs/protocol.md, Topics: the broker ACL's %u
    j = cfg["journal"]
    if (type(j["max_bytes"]) is int and type(j["segment_bytes"]) is int
            and j["segment_bytes"] > j["max_bytes"]):
        problems.append("journal.segment_bytes: larger than journal.max_bytes")
    b = m["backoff_base_ms"], m["backoff_cap_ms"]
    if type(b[0]) is int and type(b[1]) is int and b[0] > b[1]:
        problems.append("mqtt.backoff_cap_ms: below mqtt.backoff_base_ms")
    if problems:
        raise ConfigError(problems)
    return cfg


def load(path: str) -> dict[str, dict[str, Any]]:
    """Read, parse and validate a site file (TOML; JSON when it ends in .json)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(["(file): cannot read %s: %s" % (path, exc.strerror or exc)]) from None
    except UnicodeDecodeError:
        raise ConfigError(["(file): %s is not UTF-8 text" % path]) from None
    site = parse(text, "json" if path.endswith(".json") else "toml")
    return validate(site, os.path.dirname(os.path.abspath(path)))


def meter_cfg(cfg: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The firmware_py.meter cfg dict of a validated configuration."""
    out = {k: v for k, v in cfg["meter"].items() if k != "book_file"}
    out["max_bytes"] = cfg["journal"]["max_bytes"]
    out["segment_bytes"] = cfg["journal"]["segment_bytes"]
    return out

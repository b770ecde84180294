"""Every `edgemeter` subcommand turns bad input into one line and an exit status, never a traceback.

The table walks each subcommand (and each `admin` subcommand) with bad values of its arguments:
malformed, unreachable, missing and un-migrated stores, ports and amounts out of range, unknown
ids, files that cannot be written. Each case runs the installed `edgemeter` command in a
subprocess and checks the exit status (2: a caller mistake, 1: a failed operation), a key
phrase of the message, that stderr is that one line (agent: one line per configuration
problem), that no output holds a traceback, and, where the command was given a path that does
not exist, that nothing was created there.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgemeter.cloud import db as db_mod
from edgemeter.tools import cli, pgcheck

EDGEMETER = str(Path(sys.executable).with_name("edgemeter"))
BIG = "9223372036854775808"          # 2**63: one past the int64 store's largest id

# (argv, exit status, phrase in stderr, options: absent=[paths that must not exist after], lines=N)
# Placeholders: {db} a migrated ledger with account 1, postpaid workspace 1, License workspace 2
# and its purchase 1 of 100 licences; {tmp} a scratch directory; {broker} a running Mosquitto; {busy} a port already listening.
CASES: list[tuple[list[str], int, str, dict[str, Any]]] = [
    (["nope"], 2, "unknown command 'nope'", {}),
    # quote / estimate: flags and the rating rules
    (["quote", "--asr", "premium"], 2, "invalid choice: 'premium'", {}),
    (["quote", "--image", "abc", "--llm", "photo-balanced"], 2, "image size must be WxH", {}),
    (["quote", "--tts", "standard", "--llm", "radio", "--sentences", "-4"], 1, "count-range", {}),
    (["quote", "--tts", "standard", "--llm", "radio", "--sentences", "99999999999999999999"], 1, "outside 1..10000", {}),
    (["quote", "--llm", "nope"], 1, "LLM capability 'nope'", {}),
    (["estimate", "--tier", "gold"], 2, "invalid choice: 'gold'", {}),
    (["estimate", "--tier", "basic", "--mix", "kb=0.5"], 2, "integer weight", {}),
    (["estimate", "--tier", "basic", "--mix", "nope=1"], 1, "scenario 'nope'", {}),
    # decode
    (["decode", "{tmp}/missing.bin"], 2, "cannot read {tmp}/missing.bin", {}),
    (["decode", "--hex", "zz"], 2, "--hex is not an even-length hex string", {}),
    (["decode", "--hex", "00ff"], 1, "at byte offset 1", {}),
    # agent
    (["agent"], 2, "--config", {"lines": 1}),
    (["agent", "--config", "{tmp}/missing.toml", "--check"], 2, "cannot read {tmp}/missing.toml", {}),
    (["agent", "--config", "{tmp}/agent.json", "--check"], 2, "mqtt.url: bad port", {"lines": 4}),
    # rater: URLs, a store it must not create, the broker at start
    (["rater", "--broker", "mqtt://127.0.0.1:70000", "--db", "{db}"], 2, "argument --broker", {}),
    (["rater", "--broker", "http://127.0.0.1:1883", "--db", "{db}"], 2, "expected mqtt://HOST", {}),
    (["rater", "--broker", "{broker}", "--db", "sqlite:///{tmp}/rater/ledger.db"], 1,
     "no ledger at sqlite:///{tmp}/rater/ledger.db", {"absent": ["{tmp}/rater/ledger.db"]}),
    (["rater", "--broker", "{broker}", "--db", "sqlite:///{tmp}/empty.db"], 1, "the database is empty", {}),
    (["rater", "--broker", "{broker}", "--db", "sqlite:///{tmp}/old.db"], 1, "is at schema revision 0002", {}),
    (["rater", "--broker", "{broker}", "--db", "postgresql://127.0.0.1:{closed}/nope"], 1,
     "cannot open the ledger at postgresql://127.0.0.1:{closed}/nope", {}),
    (["rater", "--broker", "mqtt://127.0.0.1:{closed}", "--db", "{db}"], 1,
     "cannot connect to the broker at mqtt://127.0.0.1:{closed}", {}),
    (["rater", "--broker", "{broker}", "--db", "{db}", "--group", "0"], 2, "--group", {}),
    (["rater", "--broker", "mqtts://127.0.0.1:8883", "--db", "{db}", "--ca-file", "{tmp}/ca.pem"], 2,
     "cannot read {tmp}/ca.pem: no such file", {}),
    (["rater", "--broker", "{broker}", "--db", "{db}", "--metrics-port", "70000"], 2, "--metrics-port", {}),
    (["rater", "--broker", "{broker}", "--db", "{db}", "--housekeeping", "-1"], 2, "--housekeeping", {}),
    # dashboard
    (["dashboard", "--db", "{db}", "--port", "-1"], 2, "from 0 to 65,535, got '-1'", {}),
    (["dashboard", "--db", "{db}", "--port", "70000"], 2, "from 0 to 65,535, got '70000'", {}),
    (["dashboard", "--db", "{db}", "--port", "{busy}"], 1, "cannot listen on 127.0.0.1:{busy}", {}),
    (["dashboard", "--db", "sqlite:///{tmp}/dash/x.db", "--port", "0"], 1, "directory {tmp}/dash does not exist",
     {"absent": ["{tmp}/dash"]}),
    (["dashboard", "--db", "{db}", "--port", "0", "--tenant-token", "x"], 2, "ACCOUNT=TOKEN", {}),
    (["dashboard", "--db", "{db}", "--online-s", "0"], 2, "--online-s", {}),
    # admin: the store
    (["admin", "show", "--db", "sqlite:///{tmp}/no/such/dir/x.db"], 1, "no ledger at sqlite:///{tmp}/no/such/dir/x.db",
     {"absent": ["{tmp}/no"]}),
    (["admin", "show", "--db", "sqlite:////proc/x.db"], 1, "no ledger at sqlite:////proc/x.db", {}),
    (["admin", "migrate", "--db", "sqlite:////proc/x.db"], 1, "cannot migrate the ledger at sqlite:////proc/x.db", {}),
    (["admin", "migrate", "--db", "sqlite:///{tmp}/mig/x.db"], 1, "directory {tmp}/mig does not exist",
     {"absent": ["{tmp}/mig"]}),
    (["admin", "show", "--db", "postgresql://127.0.0.1:{closed}/nope"], 1,
     "cannot open the ledger at postgresql://127.0.0.1:{closed}/nope: connection failed", {}),
    (["admin", "show", "--db", "postgresql://u:secret@127.0.0.1:{closed}/x"], 1, "postgresql://u:***@127.0.0.1:{closed}/x", {}),
    (["admin", "show", "--db", "postgresql://[::1"], 2, "malformed database URL", {}),
    (["admin", "show", "--db", "mysql://x/y"], 2, "unsupported database URL scheme 'mysql'", {}),
    (["admin", "show", "--db", "ledger.db"], 2, "not a database URL", {}),
    (["admin", "show", "--db", "sqlite:///{tmp}/junk.db"], 1, "file is not a database", {}),
    (["dashboard", "--db", "sqlite:///{tmp}/old.db", "--port", "0"], 1,
     "run `edgemeter admin migrate --db sqlite:///{tmp}/old.db`", {}),
    (["admin", "nope", "--db", "{db}"], 2, "invalid choice: 'nope'", {}),
    (["admin", "book", "frob", "--db", "{db}"], 2, "invalid choice: 'frob'", {}),
    (["admin", "book", "publish", "--db", "{db}"], 2, "book publish needs FILE and --effective TIME", {}),
    (["admin", "trial-rule", "--db", "{db}", "--new-days", "-1"], 2, "new_days is an integer in 0..36500", {}),
    (["admin", "trial-rule", "--db", "{db}", "--new-days", "x"], 2, "invalid int value: 'x'", {}),
    # admin: amounts, counts, ids and times, bounded before the store
    (["admin", "top-up", "--db", "{db}", "--account", "1", "--cny", "9999999999999"], 2,
     "from 0.000001 to 1,000,000,000, got '9999999999999'", {}),
    (["admin", "top-up", "--db", "{db}", "--account", "1", "--cny", "0"], 2, "got '0'", {}),
    (["admin", "top-up", "--db", "{db}", "--account", "1", "--cny", "-5"], 2, "got '-5'", {}),
    (["admin", "top-up", "--db", "{db}", "--account", "1", "--cny", "1e5"], 2, "not a CNY amount", {}),
    (["admin", "top-up", "--db", "{db}", "--account", "1", "--cny", "0.0000001"], 2, "at most 6 decimals", {}),
    (["admin", "top-up", "--db", "{db}", "--account", "99", "--cny", "1"], 2, "no account(s) [99]", {}),
    (["admin", "top-up", "--db", "{db}", "--account", "x", "--cny", "1"], 2, "expected an id", {}),
    (["admin", "top-up", "--db", "{db}", "--account", BIG, "--cny", "1"], 2, "an id must be from 1", {}),
    (["admin", "buy-license", "--db", "{db}", "--workspace", "2", "--tier", "basic", "--devices", "1000000000000"], 2,
     "a licence count must be from 1 to 10,000,000", {}),
    (["admin", "buy-license", "--db", "{db}", "--workspace", "2", "--tier", "basic", "--devices", "-5"], 2,
     "got '-5'", {}),
    (["admin", "buy-license", "--db", "{db}", "--workspace", "2", "--tier", "basic", "--devices", "50"], 2,
     "at least 100 devices", {}),
    (["admin", "buy-license", "--db", "{db}", "--workspace", "99", "--tier", "basic", "--devices", "100"], 2,
     "no workspace 99", {}),
    (["admin", "activate", "--db", "{db}", "--purchase", "99"], 2, "no licence purchase 99", {}),
    (["admin", "activate", "--db", "{db}", "--purchase", "1", "--count", "0"], 2, "--count", {}),
    (["admin", "activate", "--db", "{db}", "--purchase", "1", "--device", "99"], 2, "no device 99 in workspace 2", {}),
    (["admin", "activate", "--db", "{db}", "--purchase", "1", "--count", "101"], 2, "100 of 100 left to activate", {}),
    (["admin", "create-account", "--db", "{db}", "--name", "x", "--at", "2026-99-01"], 2, "not an ISO date/time", {}),
    (["admin", "create-account", "--db", "{db}", "--name", "x", "--at", "1969-12-31"], 2, "from 1970-01-01", {}),
    (["admin", "create-account", "--db", "{db}", "--name", ""], 2, "a name is 1 to 200 characters, got 0", {}),
    (["admin", "create-account", "--db", "{db}", "--name", "n" * 201], 2, "got 201", {}),
    (["admin", "top-up", "--db", "{db}", "--account", "1", "--cny", "1", "--ref", "r" * 129], 2,
     "a payment reference is 0 to 128 characters", {}),
    (["admin", "create-workspace", "--db", "{db}", "--account", "99", "--name", "w", "--billing", "postpaid"], 2,
     "no account 99", {}),
    (["admin", "create-workspace", "--db", "{db}", "--account", "1", "--name", "w", "--billing", "license",
      "--validity", "99999999999999999999"], 2, "--validity", {}),
    (["admin", "create-workspace", "--db", "{db}", "--account", "1", "--name", "w", "--billing", "license",
      "--grant", "10000000000000000"], 2, "--grant", {}),
    (["admin", "create-workspace", "--db", "{db}", "--account", "1", "--name", "w", "--billing", "license",
      "--renew-pct", "101"], 2, "--renew-pct", {}),
    (["admin", "claim-trial", "--db", "{db}", "--account", "99"], 2, "no account(s) [99]", {}),
    (["admin", "buy-savings-plan", "--db", "{db}", "--account", "1", "--cny", "10"], 2, "plan-table", {}),
    (["admin", "buy-savings-plan", "--db", "{db}", "--account", "1", "--cny", "99999999999999"], 2,
     "from 0.000001 to 1,000,000,000", {}),
    (["admin", "register-device", "--db", "{db}", "--workspace", "99"], 2, "no workspace 99", {}),
    (["admin", "register-device", "--db", "{db}", "--workspace", "1", "--id", BIG], 2, "an id must be from 1", {}),
    (["admin", "rotate-key", "--db", "{db}", "--device", "99"], 2, "no device 99", {}),
    (["admin", "sync-mosquitto", "--db", "{db}", "--mosquitto-dir", "{tmp}/junk.db/mq"], 1,
     "{tmp}/junk.db/mq: Not a directory", {}),
    (["admin", "show", "--db", "{db}", "--account", "0"], 2, "--account", {}),
    (["admin", "invoice", "--db", "{db}", "--account", "1", "--month", "2026-13"], 2, "a month is YYYY-MM", {}),
    (["admin", "invoice", "--db", "{db}", "--account", "1", "--month", "0000-01"], 2, "from 1970-01 on", {}),
    (["admin", "invoice", "--db", "{db}", "--account", "1", "--month", "+026-01"], 2, "a month is YYYY-MM", {}),
    (["admin", "invoice", "--db", "{db}", "--account", "99", "--month", "2026-11"], 2, "no account 99", {}),
    (["admin", "invoice", "--db", "{db}", "--account", "1", "--month", "2026-11", "--csv", "{tmp}/inv/x.csv"], 2,
     "directory {tmp}/inv does not exist", {"absent": ["{tmp}/inv"]}),
    (["admin", "rebuild", "--db", "sqlite:///{tmp}/rebuild.db"], 1, "no ledger", {"absent": ["{tmp}/rebuild.db"]}),
    (["admin", "dead-letters", "--db", "{db}", "--limit", "0"], 2, "--limit", {}),
    (["admin", "housekeeping", "--db", "sqlite:///{tmp}/hk.db"], 1, "no ledger", {"absent": ["{tmp}/hk.db"]}),
    (["admin", "wrap-keys", "--db", "sqlite:///{tmp}/wk.db"], 1, "no ledger", {"absent": ["{tmp}/wk.db"]}),
    (["admin", "create-token", "--db", "{db}", "--role", "tenant", "--account", "99"], 2, "no account 99", {}),
    (["admin", "create-token", "--db", "{db}", "--role", "operator", "--name", "t" * 65], 2,
     "a note is 0 to 64 characters", {}),
    (["admin", "revoke-token", "--db", "{db}", "--id", "99"], 2, "no token 99", {}),
    # sim, demo, bench, build-firmware
    (["sim", "--devices", "1"], 2, "a device count must be from 2", {}),
    (["sim", "--faults", "nope"], 2, "unknown faults ['nope']", {}),
    (["sim", "--broker", "mqtt://127.0.0.1:99999"], 2, "argument --broker", {}),
    (["sim", "--db", "mysql://x/y"], 2, "unsupported database URL scheme", {}),
    (["sim", "--report", "{tmp}/rep/r.json"], 2, "directory {tmp}/rep does not exist", {}),
    (["sim", "--devices", "2", "--rounds", "4", "--quiet", "--db", "sqlite:////proc/x.db"], 1,
     "cannot migrate the ledger at sqlite:////proc/x.db", {}),
    (["demo", "--port", "70000"], 2, "from 0 to 65,535", {}),
    (["demo", "--devices", "1"], 2, "a device count must be from 2", {}),
    (["demo", "--rate", "0"], 2, "must be above 0", {}),
    (["demo", "--faults", "nope"], 2, "unknown faults ['nope']", {}),
    (["bench", "--only", "nope"], 2, "unknown modules ['nope']", {}),
    (["bench", "--json", "{tmp}/bench/x.json"], 2, "directory {tmp}/bench does not exist", {}),
    (["build-firmware", "--out", "/proc/x"], 1, "/proc/x: No such file or directory", {}),
]


def _fill(value: str, env: dict[str, str]) -> str:
    return value.format(**env)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEMETER_DB", "EDGEMETER_DEBUG")}
    try:
        return subprocess.run([EDGEMETER, *argv], capture_output=True, text=True, timeout=120, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:   # this case fails on its own; the others still run
        return subprocess.CompletedProcess(argv, None, str(e.stdout or ""), f"timed out after 120 s: {e.stderr!r}")


def _admin(db: str, *argv: str) -> None:
    p = _run(["admin", *argv, "--db", db])
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, mosquitto: Any) -> dict[str, Any]:
    """Every case of the table, run four at a time (each is a process of its own)."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    db = f"sqlite:///{tmp / 'ledger.db'}"
    _admin(db, "migrate")
    _admin(db, "create-account", "--name", "acme")
    _admin(db, "create-workspace", "--account", "1", "--name", "pp", "--billing", "postpaid")
    _admin(db, "create-workspace", "--account", "1", "--name", "lic", "--billing", "license")
    _admin(db, "buy-license", "--workspace", "2", "--tier", "basic", "--devices", "100")
    (tmp / "empty.db").write_bytes(b"")
    db_mod.migrate(f"sqlite:///{tmp / 'old.db'}", "0002")     # a store an older edgemeter made
    (tmp / "junk.db").write_text("not a database\n" * 100)
    (tmp / "rater").mkdir()
    (tmp / "agent.json").write_text('{"mqtt": {"url": "mqtt://127.0.0.1:70000"}}')
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    env = {"db": db, "tmp": str(tmp), "broker": f"mqtt://127.0.0.1:{mosquitto.port}",
           "busy": str(busy.getsockname()[1]), "closed": str(closed)}
    try:
        with ThreadPoolExecutor(4) as pool:
            procs = list(pool.map(lambda c: _run([_fill(a, env) for a in c[0]]), CASES))
    finally:
        busy.close()
    return {"env": env, "procs": procs, "empty_size": (tmp / "empty.db").stat().st_size}


def _id(case: tuple[list[str], int, str, dict[str, Any]]) -> str:
    return " ".join(case[0])[:70]


@pytest.mark.parametrize("i", range(len(CASES)), ids=[_id(c) for c in CASES])
def test_bad_input_is_one_line_and_an_exit_status(results: dict[str, Any], i: int) -> None:
    argv, status, phrase, opts = CASES[i]
    env, p = results["env"], results["procs"][i]
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    assert p.returncode == status, (p.returncode, p.stderr)
    assert _fill(phrase, env) in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    if argv[0] == "nope":          # the usage that follows lists the commands
        lines = lines[:1]
    assert len(lines) == opts.get("lines", 1) and all(ln.startswith("edgemeter") for ln in lines), p.stderr
    for path in opts.get("absent", []):
        assert not Path(_fill(path, env)).exists(), f"{path} was created"


def test_a_refused_store_is_left_as_it_was(results: dict[str, Any]) -> None:
    """The rater refusing an empty SQLite file read it without writing (no header, no WAL)."""
    assert results["empty_size"] == 0


def _admin_subcommands() -> list[str]:
    out = subprocess.run([EDGEMETER, "admin", "--help"], capture_output=True, text=True, timeout=60).stdout
    return re.findall(r"^    ([a-z][a-z-]+)", out, re.M)


def test_the_table_walks_every_subcommand() -> None:
    walked = {c[0][0] for c in CASES}
    assert set(cli.COMMANDS) <= walked, sorted(set(cli.COMMANDS) - walked)
    admin = {c[0][1] for c in CASES if c[0][0] == "admin"}
    subs = _admin_subcommands()
    assert len(subs) > 10
    assert not set(subs) - admin, sorted(set(subs) - admin)


def test_a_missing_postgresql_database_is_one_line() -> None:
    why = pgcheck.reachable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable under CI=true: {why}")
        pytest.skip(f"PostgreSQL not reachable: {why}")
    url = pgcheck.pg_url().rsplit("/", 1)[0] + "/edgemeter_no_such_database"
    for argv in (["admin", "migrate"], ["admin", "show"], ["dashboard", "--port", "0"]):
        p = _run([*argv, "--db", url])
        assert "Traceback" not in p.stdout + p.stderr, p.stderr
        assert p.returncode == 1, p.stderr
        assert 'database "edgemeter_no_such_database" does not exist' in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr

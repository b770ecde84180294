"""`edgemeter decode` on protocol messages, as a user runs it (the installed console script):
the message-aware default mode, `--key HEX` MAC checking, and bad messages."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "edgemeter"
V = json.loads((ROOT / "tests" / "vectors" / "proto.json").read_text())
MSGS = {m["name"]: m for m in V["messages"]}


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    if not EXE.exists():
        pytest.fail(f"{EXE} missing: install the project (pip install -e '.[dev]')")
    p = subprocess.run([str(EXE), "decode", *args], input=stdin, cwd=ROOT, capture_output=True,
                       timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


@pytest.mark.parametrize("name", sorted(MSGS))
def test_every_message_prints_readably_and_verifies_with_its_key(name: str) -> None:
    m = MSGS[name]
    key = V["key"] if m["msg"]["kid"] == 1 else V["new_key"]
    p = run("--hex", m["envelope"], "--key", key)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    kind = name.split("-")[0]
    first = p.stdout.splitlines()[0]
    assert first.startswith(kind) and "topic em/<ws>/1000000/" in first, first
    assert "MAC OK" in p.stdout
    assert f"envelope {len(m['envelope']) // 2} bytes" in p.stdout
    for field, value in m["msg"].items():
        if field != "type" and isinstance(value, int) and not isinstance(value, bool):
            assert f"  {field}:" in p.stdout and str(value) in p.stdout, (field, p.stdout)


def test_usage_batch_shows_rounds_flags_and_deduction() -> None:
    p = run("--hex", MSGS["usage-retx-3-rounds"]["envelope"])
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "flags:     1 (retransmission)" in out and "ucny:      10080 uCNY" in out
    assert "#0   t0+0     [2, 4, 5, 6]" in out and "#2   t0+95    [1, 3, [9, 1], [3, 2]]" in out
    assert "lease:     0 (postpaid / no lease)" in out and "not checked" in out


def test_wrong_key_exits_1_and_says_so() -> None:
    p = run("--hex", MSGS["grant"]["envelope"], "--key", V["new_key"])
    assert p.returncode == 1
    assert "MAC DOES NOT VERIFY" in p.stdout
    assert p.stderr == "edgemeter decode: the MAC does not verify under the given key\n"


def test_binary_stdin_and_file(tmp_path: Path) -> None:
    data = bytes.fromhex(MSGS["cmd-rotate"]["envelope"])
    p = run("--key", V["key"], stdin=data)
    assert p.returncode == 0 and "op:        4 (rotate)" in p.stdout and "MAC OK" in p.stdout
    f = tmp_path / "grant.bin"
    f.write_bytes(bytes.fromhex(MSGS["grant-final"]["envelope"]))
    p = run(str(f))
    assert p.returncode == 0 and "flags:     1 (final)" in p.stdout
    assert "policy:    2 (degrade)" in p.stdout


def test_a_bare_body_and_foreign_cbor() -> None:
    p = run("--hex", MSGS["ack-verdicts"]["body"])
    assert p.returncode == 0 and "bare body" in p.stdout and "seq 100001 mismatch" in p.stdout
    p = run("--hex", "83010203")  # [1, 2, 3]: not one of ours, printed as CBOR
    assert (p.returncode, p.stdout) == (0, "[1, 2, 3]\n")


@pytest.mark.parametrize("row", V["invalid"], ids=[r["name"] for r in V["invalid"]])
def test_bad_messages_print_offset_and_reason(row: dict) -> None:
    p = run("--hex", row["hex"], "--key", V["key"])
    if row["name"] == "not-an-envelope":  # [1, 2] is valid CBOR and no envelope: printed
        assert p.returncode == 0 and p.stdout == "[1, 2]\n"
        return
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert f"offset {row['offset']}: " in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_key_usage_errors_exit_2() -> None:
    env = MSGS["ack"]["envelope"]
    for args in (("--key", "abc"), ("--key", "zz"), ("--key", ""), ("--raw", "--key", V["key"])):
        p = run("--hex", env, *args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("edgemeter decode: ") and "Traceback" not in p.stderr

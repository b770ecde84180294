"""`edgemeter decode` as a user runs it: the installed console script in a subprocess."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "edgemeter"


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    if not EXE.exists():
        pytest.fail(f"{EXE} missing: install the project (pip install -e '.[dev]')")
    proc = subprocess.run([str(EXE), "decode", *args], input=stdin, cwd=ROOT,
                          capture_output=True, timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(), proc.stderr.decode())


def test_raw_hex_prints_diagnostic_notation() -> None:
    p = run("--raw", "--hex", "83 01 a1 01 41 01 f6")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "[1, {1: h'01'}, null]\n"
    assert p.stderr == ""


def test_raw_reads_binary_stdin_and_files(tmp_path: Path) -> None:
    data = bytes.fromhex("a2 00 63 c3 bc 21 20 3b ff ff ff ff ff ff ff ff".replace(" ", ""))
    expect = '{0: "\u00fc!", -1: -18446744073709551616}\n'
    p = run("--raw", stdin=data)
    assert (p.returncode, p.stdout) == (0, expect), p.stderr
    f = tmp_path / "payload.bin"
    f.write_bytes(data)
    for args in (("--raw", str(f)), ("--raw", "-")):
        p = run(*args, stdin=data)
        assert (p.returncode, p.stdout) == (0, expect), p.stderr


def test_default_mode_prints_readably_without_the_protocol_layer() -> None:
    # whatever describes messages, a plain item still decodes and exits 0
    p = run("--hex", "0x820102")
    assert p.returncode == 0 and p.stdout.strip(), p.stderr


@pytest.mark.parametrize("hexs, offset, reason", [
    ("8301f97e00", 2, "floating-point"),
    ("a201000100", 3, "duplicate map key"),
    ("1900ff", 0, "non-shortest"),
    ("0000", 1, "trailing"),
    ("9f01ff", 0, "indefinite"),
    ("", 0, "end of input"),
])
def test_bad_payload_prints_offset_and_reason_without_traceback(hexs: str, offset: int, reason: str) -> None:
    for args in (("--raw", "--hex", hexs), ("--hex", hexs)):
        p = run(*args)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert f"offset {offset}: " in p.stderr and reason in p.stderr
        assert "Traceback" not in p.stderr and p.stdout == ""


def test_bad_binary_from_stdin() -> None:
    p = run("--raw", stdin=b"\x62\xc0\x80")
    assert p.returncode == 1 and "offset 0: invalid UTF-8" in p.stderr
    assert "Traceback" not in p.stderr


def test_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    for args in (("--hex", "abc"), ("--hex", "zz"), (str(tmp_path / "missing.bin"),),
                 ("--hex", "00", str(tmp_path / "x"))):
        p = run("--raw", *args)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr and p.stderr.startswith("edgemeter decode: ")


def test_a_reader_that_leaves_early_ends_nothing_in_a_traceback(tmp_path: Path) -> None:
    """`edgemeter decode F | head`: the pipe closes before the text is written."""
    f = tmp_path / "big.bin"
    f.write_bytes(bytes.fromhex("99ea60") + bytes.fromhex("1a000186a0") * 60_000)   # 60,000 x 100000: 480 kB of text
    proc = subprocess.Popen([str(EXE), "decode", "--raw", str(f)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b"[100000, 1"
    proc.stdout.close()   # as head does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0 and err == "", err

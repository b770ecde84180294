"""`edgemeter quote` / `edgemeter estimate` through the installed console script (a real subprocess)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"


def edgemeter() -> str:
    exe = Path(sys.executable).parent / "edgemeter"
    if exe.exists():
        return str(exe)
    found = shutil.which("edgemeter")
    if not found:
        pytest.fail("the edgemeter console script is not installed (pip install -e '.[dev]')")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([edgemeter(), *args], capture_output=True, text=True, timeout=60, cwd="/")


def flags_to_argv(flags: dict) -> list[str]:
    argv: list[str] = []
    for key, value in flags.items():
        opt = "--" + key.replace("_", "-")
        if value is True:
            argv.append(opt)
        elif key == "image":
            argv += [opt, "%dx%d" % tuple(value)]
        else:
            argv += [opt, str(value)]
    return argv


def load(name: str) -> dict:
    return json.loads((VECTORS / (name + ".json")).read_text())


def test_done_when_standard_voice_chat_is_5450() -> None:
    p = run("quote", "--asr", "standard", "--intent", "--tts", "standard", "--llm", "chat", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"lines", "total_ucny"}
    assert out["total_ucny"] == 5450
    assert [(ln["item"], ln["calls"], ln["multiplier"], ln["ucny"]) for ln in out["lines"]] == [
        ("asr-standard", 1, 1, 750), ("tts-standard", 1, 1, 1700), ("intent", 1, 1, 800), ("chat", 1, 1, 2200)]


@pytest.mark.parametrize("row", load("rating_scenarios")["scenarios"], ids=lambda r: r["name"])
def test_every_scenario_row_through_the_cli(row: dict) -> None:
    p = run("quote", *flags_to_argv(row["flags"]), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["total_ucny"] == row["total_ucny"]
    assert [[ln["item"], ln["ucny"]] for ln in out["lines"]] == row["parts"]


@pytest.mark.parametrize("ex", load("rating_multipliers")["examples"], ids=str)
def test_model_examples_through_the_cli(ex: dict) -> None:
    p = run("quote", *flags_to_argv(ex["flags"]), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["total_ucny"] == ex["total_ucny"]


def test_family_names_keep_what_the_user_typed() -> None:
    p = run("quote", "--llm", "chat", "--model", "DeepSeek R1", "--json")
    line = json.loads(p.stdout)["lines"][0]
    assert (line["model"], line["model_given"], line["multiplier"], line["ucny"]) == ("deepseek*", "DeepSeek R1", 4, 8800)
    p = run("quote", "--llm", "chat", "--model", "DeepSeek V4 Pro")
    assert p.returncode == 0 and "DeepSeek V4 Pro (deepseek-v4-pro)" in p.stdout and "17600" in p.stdout


# (an --asr/--tts tier outside lite|standard is a command-line error, exit 2: see below)
REJECTIONS = [c for c in load("rating_rules")["reject"] if "flags" in c["round"]
              and c["round"]["flags"].get("asr", "lite") in ("lite", "standard")]


@pytest.mark.parametrize("case", REJECTIONS, ids=lambda c: c["rule"])
def test_invalid_rounds_exit_1_naming_the_rule(case: dict) -> None:
    p = run("quote", *flags_to_argv(case["round"]["flags"]))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "invalid round: %s:" % case["rule"] in p.stderr
    assert p.stdout == ""


def test_unknown_model_lists_known_names() -> None:
    p = run("quote", "--llm", "kb", "--model", "gpt-4o")
    assert p.returncode == 1
    for name in ("qwen-max", "deepseek*", "deepseek-v4-pro", "qwen3.5-omni-plus-audio", "qwen-deep-research"):
        assert name in p.stderr
    p = run("quote", "--tts-model", "cosyvoice-v2")
    assert p.returncode == 1 and "cosyvoice-v3-plus" in p.stderr and "qwen3-tts*" in p.stderr
    assert "qwen-max" not in p.stderr  # only the TTS component's names


def test_readable_breakdown() -> None:
    p = run("quote", "--asr", "lite", "--intent", "--tts", "standard", "--llm", "radio", "--sentences", "10")
    assert p.returncode == 0, p.stderr
    assert "17870" in p.stdout and "CNY 17.87 per 1,000 rounds" in p.stdout and "CNY 0.017870 per round" in p.stdout


def test_command_line_errors_exit_2() -> None:
    for argv in (["--asr", "premium"], ["--image", "640"], ["--sentences", "many"], ["--bogus"]):
        p = run("quote", *argv)
        assert p.returncode == 2, argv
    assert run("estimate", "--mix", "kb=1").returncode == 2          # --tier is required
    assert run("estimate", "--tier", "basic", "--mix", "kb=0.5").returncode == 2


def test_estimate_matches_the_calculator_vectors() -> None:
    for case in load("billing_license")["estimate"]:
        mix = ",".join("%s=%d" % (n, w) for n, w in case["mix"])
        if case["tier"] not in ("trial", "basic", "standard") or any(w < 0 for _, w in case["mix"]):
            assert run("estimate", "--tier", case["tier"], "--mix", mix).returncode == 2
            continue
        p = run("estimate", "--tier", case["tier"], "--mix", mix, "--json")
        if "rule" in case:
            assert p.returncode == 1 and case["rule"] in p.stderr, (case, p.stderr)
            continue
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["interactions"] == case["interactions"], case
    p = run("estimate", "--tier", "standard")
    assert p.returncode == 0 and "1834 interactions per device-year" in p.stdout

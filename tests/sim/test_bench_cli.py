"""`edgemeter bench` runs its modules and writes every row as JSON (figures are not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_rating_and_wire(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "bench", "--quick", "--only", "rating,wire",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = {r["module"]: r for r in json.loads(out.read_text())["results"]}
    assert set(res) == {"rating", "wire"}
    names = [row["name"] for row in res["rating"]["rows"]]
    assert "rating speed, CPython" in names and "rating speed ratio CPython / MicroPython" in names
    for r in res.values():
        for row in r["rows"]:
            assert {"name", "value", "unit", "how"} <= set(row) and row["how"]
    assert "rating speed, MicroPython" in p.stdout


def test_bench_rejects_unknown_module() -> None:
    p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "bench", "--only", "nope"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown modules" in p.stderr

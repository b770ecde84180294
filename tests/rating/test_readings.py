"""docs/rating.md "How we read the spec": every reading names what pins it, and that exists."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_reading_is_pinned_by_an_existing_vector_or_test():
    doc = (ROOT / "docs" / "rating.md").read_text()
    section = doc.split("## How we read the spec", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if re.match(r"\| \d+ \|", r)]
    assert len(rows) >= 13
    for row in rows:
        pinned = row.rstrip(" |").rsplit("|", 1)[1]
        files = re.findall(r"`([\w/]+\.(?:json|py))`", pinned)
        assert files, row
        for f in files:
            path = ROOT / f if "/" in f else ROOT / "tests" / "vectors" / f
            assert path.exists(), (f, row)
            if f.endswith(".json"):
                data = json.loads(path.read_text())
                for key in re.findall(re.escape(f) + r"`\s+`(\w+)`", pinned):
                    assert key in data, (f, key)

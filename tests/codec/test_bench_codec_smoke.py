"""tools/bench_codec.py still runs and reports the rows `edgemeter bench` aggregates.

No timing is asserted (timings are benchmark output only): the rows' shape, that the
benchmark messages encode identically with cbor2, and that MicroPython re-encodes exactly.
"""
from __future__ import annotations

from edgemeter.tools import bench_codec


def test_rows_have_the_aggregated_shape() -> None:
    rows = bench_codec.speed_rows(budget_s=0.002) + bench_codec.micropython_rows()
    assert rows
    for r in rows:
        assert set(r) == {"name", "value", "unit", "how"}, r
        assert isinstance(r["name"], str) and isinstance(r["how"], str) and r["how"]
    ratios = [r for r in rows if r["unit"] == "x"]
    assert len(ratios) == 6 and all(r["value"] > 0 for r in ratios)
    heap = [r for r in rows if r["unit"] == "bytes"]
    assert heap and all(isinstance(r["value"], int) and r["value"] > 0 for r in heap)

"""tools/bench_wire.py measures byte counts (not times), so its targets can be asserted."""
from __future__ import annotations

from firmware_py import proto as P
from edgemeter.tools import bench_wire


def test_wire_targets_are_met_with_realistic_ids() -> None:
    rows = {r["name"]: r for r in bench_wire.run()}
    one = rows["usage batch, 1 standard voice chat round, MAC and envelope"]
    per = rows["usage batch, 10 standard voice chat rounds, per round"]
    assert one["value"] <= 64 and "met" in one["how"]
    assert per["value"] <= 20 and "met" in per["how"]
    for r in rows.values():
        assert r["value"] > 0 and r["unit"] in ("bytes", "bytes/round")


def test_the_measured_batch_is_a_real_verifiable_message() -> None:
    data = bench_wire.batch(10)
    code, msg = P.check(data, {1: bench_wire.KEY}, bench_wire.DEV)
    assert code == P.OK and msg["seq"] == 100000 and len(msg["rounds"]) == 10
    assert msg["ucny"] == 10 * 5450 and msg["rounds"][9][0] == 270

"""cloud.metrics.BulkHistogram exposes what prometheus_client's Histogram does for the same
observations, whether they come one by one or a group at a time."""
from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from edgemeter.cloud.metrics import BulkHistogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _lines(reg: CollectorRegistry) -> dict[str, float]:
    """The exposition's samples by name; _created (a creation time: differs) as 1 when present."""
    out = {}
    for line in generate_latest(reg).decode().splitlines():
        if line.startswith("#"):
            continue
        if "_created" in line:
            out[line.rsplit(" ", 1)[0]] = 1.0
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_bulk_histogram_matches_prometheus_histogram() -> None:
    rnd = random.Random(5)
    values = [rnd.choice([0.0, 0.001, 0.0025, 1, 10, 10.5]) if rnd.random() < 0.3 else rnd.random() * 4
              for _ in range(3000)]
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    stock = Histogram("lag_seconds", "doc", registry=r1, buckets=BUCKETS)
    bulk = BulkHistogram("lag_seconds", "doc", BUCKETS, r2)
    for v in values:
        stock.observe(v)
    bulk.observe_many(values[:1000])           # groups of different sizes, and single values
    bulk.observe_many([])
    for v in values[1000:1010]:
        bulk.observe(v)
    bulk.observe_many(values[1010:])
    a, b = _lines(r1), _lines(r2)
    assert set(a) == set(b)
    for k in a:
        if k.endswith("_sum"):
            assert abs(a[k] - b[k]) < 1e-6
        else:
            assert a[k] == b[k], k       # every cumulative bucket (le inclusive) and the count
    assert b['lag_seconds_bucket{le="0.001"}'] == sum(1 for v in values if v <= 0.001)
    assert b['lag_seconds_bucket{le="+Inf"}'] == len(values)

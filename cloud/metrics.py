"""The rater's Prometheus metrics (cloud.rater rule M6), in a registry of their own.

BulkHistogram is a histogram that takes a whole group's observations at once: the ingest lag
of every message of a group is observed after its commit, and prometheus_client's
Histogram.observe (a lock and a linear bucket scan per value) cost the rater ~2 us per
message; here a group costs one sort and one bisect per bucket. The exposition is the
standard one (_bucket{le=..} cumulative counts, _count, _sum, _created).
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from edgemeter.cloud import ingest


class BulkHistogram(Collector):
    """A label-less histogram observed in bulk (observe_many) or one value at a time."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry | None = None):
        self.name, self.documentation = name, documentation
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)     # per bucket (not cumulative); last: +Inf
        self.sum = 0.0
        self.created = time.time()
        self.lock = threading.Lock()                   # /metrics is served from another thread
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def observe_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        vs = sorted(values)
        cuts = [bisect_right(vs, b) for b in self.bounds]    # values <= each bound (le)
        with self.lock:
            prev = 0
            for i, c in enumerate(cuts):
                self.counts[i] += c - prev
                prev = c
            self.counts[-1] += len(vs) - prev
            self.sum += sum(vs)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self.lock:
            counts, total = list(self.counts), self.sum
        cum, acc = [], 0
        for bound, c in zip([*map(_le, self.bounds), "+Inf"], counts):
            acc += c
            cum.append((bound, acc))
        fam = HistogramMetricFamily(self.name, self.documentation, buckets=cum, sum_value=total)
        fam.add_sample(self.name + "_created", {}, self.created)   # as Histogram exposes it
        yield fam

    def describe(self) -> Iterator[Any]:
        yield HistogramMetricFamily(self.name, self.documentation)


def _le(b: float) -> str:
    return repr(float(b)) if b != int(b) else f"{b:.1f}"


class Metrics:
    """The rater's Prometheus metrics, in a registry of its own (rule M6)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("edgemeter_messages_received", "MQTT messages received", registry=r)
        self.batches = Counter("edgemeter_batches_booked", "usage batches booked (new)", registry=r)
        self.rounds = Counter("edgemeter_rounds_booked", "interaction rounds booked", registry=r)
        self.ucny = Counter("edgemeter_ucny_booked", "cloud-rated µCNY booked", registry=r)
        self.duplicates = Counter("edgemeter_duplicates", "batches received again (acked, not booked)", registry=r)
        self.mismatches = Counter("edgemeter_mismatches", "batches whose re-rating or lease disagreed", registry=r)
        self.dead = Counter("edgemeter_dead_letters", "rejected messages", ["reason"], registry=r)
        self.commands = Counter("edgemeter_commands", "commands sent to devices", ["op"], registry=r)
        self.groups = Histogram("edgemeter_group_size", "messages per transaction", registry=r,
                                buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
        self.lag = BulkHistogram("edgemeter_ingest_lag_seconds", "receive to commit",
                                 (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), r)
        self.pool = Gauge("edgemeter_pool_units", "License pool buckets (units = µCNY)", ["workspace", "bucket"],
                          registry=r)
        self.leases = Gauge("edgemeter_leases", "leases by state", ["workspace", "state"], registry=r)
        self.lease_units = Gauge("edgemeter_lease_outstanding_units", "units reserved by live leases", ["workspace"],
                                 registry=r)
        self.suspended = Gauge("edgemeter_accounts_suspended", "postpaid accounts suspended", registry=r)
        self.dead_total = Gauge("edgemeter_dead_letters_stored", "dead letters in the store (sum of counts)",
                                registry=r)

    def record(self, o: ingest.Outcome, n: int) -> None:
        self.messages.inc(n)
        self.groups.observe(n)
        self.batches.inc(o.booked)
        self.rounds.inc(o.rounds)
        self.ucny.inc(o.ucny)
        self.duplicates.inc(o.duplicates)
        self.mismatches.inc(o.mismatches)
        for k, v in o.dead.items():
            self.dead.labels(k).inc(v)
        for k, v in o.commands.items():
            self.commands.labels(k).inc(v)
        self.lag.observe_many([ms / 1000 for ms in o.lag_ms])

"""Fuzzing the rater's booking step with signed, mutated messages (real SQLite ledger,
cloud.ingest.Ingest exactly as `edgemeter rater` runs it per group).

Registered devices send every uplink kind, each message mutated before it is signed with the
device's own key, so most of them pass the MAC and reach the deepest checks: fields replaced
by boundary integers (0, 2^32, 2^63 - 1, 2^63, 2^64 - 1, negatives) or by values of another
type, rounds of random items and counts, fields dropped or added, another message type, an
unknown key id, another device's id, the wrong topic, and some envelopes flipped after
signing. A well-behaved device sends valid batches in between. Asserted: no group ever fails
(what the rater would dead-letter as `internal`, with a traceback), every valid batch is
booked and acked, and the ledger's invariants and projections hold (`admin rebuild --check`).

CI runs FUZZ_CI messages; `bash tools/dev.sh campaign` runs FUZZ_FULL (the `full` marker).
"""
from __future__ import annotations

import random

import pytest

from rater_helpers import NOW, setup_store
from edgemeter.cloud import db, ingest, rebuild
from edgemeter.tools.fleetpub import STANDARD_CHAT, Device
from firmware_py import cbor, proto as P

FUZZ_CI = 20_000
FUZZ_FULL = 1_000_000
GROUP = 100
INTS = (0, 1, 2, 7, 255, 1 << 31, 1 << 32, 1 << 53, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
        -1, -(1 << 63), -(1 << 64))
OTHER = (b"", b"\x00" * 40, "x", [], [1, [2, 3]], {1: 2}, True, None)
TYPES = (P.USAGE, P.LEASE_REQUEST, P.LEASE_RENEW, P.LEASE_RETURN, P.STATUS, P.ACK, P.GRANT, P.CMD, 99)


def _value(rnd: random.Random):
    r = rnd.random()
    if r < 0.55:
        return rnd.choice(INTS)
    if r < 0.8:
        return rnd.getrandbits(rnd.choice((8, 16, 32, 63, 64)))
    return rnd.choice(OTHER)


def _round(rnd: random.Random) -> list:
    out: list = [rnd.choice((0, 1, 30, (1 << 64) - 1))]
    for _ in range(rnd.randint(0, 6)):
        item = rnd.randint(0, 30)
        k = rnd.random()
        if k < 0.5:
            out.append(item)
        elif k < 0.8:
            out.append([item, rnd.choice((0, 1, 2, 100, 10_000, 10_001, 1 << 40, (1 << 64) - 1))])
        else:
            out.append([item, rnd.randint(0, 3), rnd.randint(0, 25)] + [_value(rnd) for _ in range(rnd.randint(0, 3))])
    return out


def _mutated(rnd: random.Random, d: Device, lease_ids: list[int]) -> tuple[str, bytes]:
    d.n += 1
    d.seq += 1
    base = {
        P.USAGE: [P.USAGE, d.kid, d.dev, d.boot, d.seq, 1, rnd.choice([0] + lease_ids), NOW, 0, 5450,
                  [[0] + list(STANDARD_CHAT)]],
        P.LEASE_REQUEST: [P.LEASE_REQUEST, d.kid, d.dev, d.boot, d.n, rnd.choice((0, 1000, 1 << 40))],
        P.LEASE_RENEW: [P.LEASE_RENEW, d.kid, d.dev, d.boot, d.n, rnd.choice(lease_ids or [1]), 5450, 0],
        P.LEASE_RETURN: [P.LEASE_RETURN, d.kid, d.dev, d.boot, d.n, rnd.choice(lease_ids or [1]), 5450],
        P.STATUS: [P.STATUS, d.kid, d.dev, d.boot, d.n, NOW, d.seq, 0, rnd.choice(lease_ids or [0]), 0, 0, 1, 0],
    }
    mtype = rnd.choice(list(base))
    arr = list(base[mtype])
    for _ in range(rnd.randint(0, 3)):
        k = rnd.random()
        if k < 0.55 and len(arr) > 3:
            arr[rnd.randrange(3, len(arr))] = _value(rnd)
        elif k < 0.7 and arr[0] == P.USAGE and len(arr) > 10:
            arr[10] = [_round(rnd) for _ in range(rnd.randint(0, 4))]
        elif k < 0.78:
            arr.pop() if rnd.random() < 0.5 else arr.append(_value(rnd))
        elif k < 0.85:
            arr[0] = rnd.choice(TYPES)
        elif k < 0.9:
            arr[1] = rnd.choice((2, 0, 1 << 63))
        elif k < 0.95:
            arr[2] = rnd.choice((d.dev + 1, 0, 1 << 64 - 1))
        else:
            mtype = rnd.choice(TYPES[:5])     # the topic of another kind
    data = P.sign(d.key, cbor.dumps(arr))
    if rnd.random() < 0.05:
        b = bytearray(data)
        b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        data = bytes(b)
    return P.topic(d.ws, d.dev, P.suffix(mtype) if mtype in P.MESSAGES else "up/usage"), data


def fuzz(tmp_path, n: int, seed: int = 16) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reg = setup_store(url, postpaid_devices=3, license_devices=3)
    engine = db.open_store(url)
    ing = ingest.Ingest(engine)
    devs = [Device(d["workspace"], d["id"], d["key"]) for k in ("postpaid", "license") for d in reg[k]]
    good = devs.pop(0)                       # the well-behaved device among them
    rnd = random.Random(seed)
    lease_ids: list[int] = [1, 2, 3]
    sent = 0
    while sent < n:
        msgs = []
        for _ in range(GROUP):
            if rnd.random() < 0.1:
                msgs.append(good.usage([STANDARD_CHAT]))
            else:
                msgs.append(_mutated(rnd, rnd.choice(devs), lease_ids))
        out = ing.process([ingest.Incoming(t, p, NOW * 1000) for t, p in msgs])   # never raises
        assert "internal" not in out.dead
        for topic, data in out.publish:
            if P.parse_topic(topic)[1] == good.dev:
                good.on_down(data)
        sent += len(msgs)
    assert good.acked == good.seq and not good.unacked, (good.acked, good.seq)
    with db.write_connect(engine) as conn, conn.begin():
        r = rebuild.run(conn, check=True)
    engine.dispose()
    assert r["differences"] == [] and r["violations"] == [], (r["differences"][:5], r["violations"][:5])


def test_fuzz_signed_mutated_messages(tmp_path):
    fuzz(tmp_path, FUZZ_CI)


@pytest.mark.full
@pytest.mark.timeout(7200)
def test_fuzz_signed_mutated_messages_full(tmp_path):
    fuzz(tmp_path, FUZZ_FULL, seed=1_000_016)

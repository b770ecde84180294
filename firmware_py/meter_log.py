"""The meter's journal records and its recovery scan (firmware_py.meter writes them through
firmware_py.journal). No I/O of its own: it reads an open Journal's records().

Record payloads (deterministic CBOR arrays; the journal frames each with 10 bytes):

    round    [t, ver, lease, ucny, *wire]         t > 1: a round ended by the SDK
    settled  [1, t, ver, lease, ucny, *wire]      a round settled by timeout (meter rule M6)
    seal     [0, seq, boot, first, last]          batch seq holds the round records first..last

t is the round's effective time (Unix seconds), ver the price-book version, lease the lease id
(0: none), ucny the rated total, wire rating.round_to_wire(). A standard voice-chat round is
15 bytes of payload, 25 in the journal. The round's serial k (DeviceSession's `served`) is not
stored: it is the round's position among the round records (meter_base rule M2).

  G1. Sealing takes rounds from the head of the unsealed ones, in journal order, so the rounds
      of batch seq are exactly the round records first..last that no earlier seal covers, and
      every round after the highest `last` is unsealed.
  G2. A seal record is journaled before its batch is published, so after a power cut every
      published seq has a seal record, unless damage quarantined it (see scan()).
Decoding errors raise MeterLogError(ValueError); scan() counts them instead.
"""
from firmware_py import cbor

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

ROUND = const(0)
SETTLED = const(1)
SEAL = const(2)


class MeterLogError(ValueError):
    pass


def enc_round(rec, settled=False) -> bytes:
    """The payload of a served round rec = [k, t, ver, lease, ucny, wire] (DeviceSession)."""
    a = [1, rec[1], rec[2], rec[3], rec[4]] if settled else [rec[1], rec[2], rec[3], rec[4]]
    a += rec[5]
    return cbor.dumps(a)


def enc_seal(seq, boot, first, last) -> bytes:
    return cbor.dumps([0, seq, boot, first, last])


def decode(payload):
    """(ROUND|SETTLED, [0, t, ver, lease, ucny, wire]) or (SEAL, (seq, boot, first, last))."""
    try:
        a = cbor.loads(payload, max_depth=3, max_items=128)
    except ValueError as exc:
        raise MeterLogError("record: %s" % exc)
    if type(a) is not list or len(a) < 5 or type(a[0]) is not int or a[0] < 0:
        raise MeterLogError("record: not a meter record")
    if a[0] == 0:
        if len(a) != 5 or not all(type(v) is int and v >= 0 for v in a):
            raise MeterLogError("record: malformed seal")
        return SEAL, (a[1], a[2], a[3], a[4])
    kind = ROUND
    if a[0] == 1:
        kind = SETTLED
        a = a[1:]
    if len(a) < 5 or not all(type(v) is int and v >= 0 for v in a[:4]) or a[0] < 2:
        raise MeterLogError("record: malformed round")
    return kind, [0, a[0], a[1], a[2], a[3], a[4:]]


def scan(journal, acked, jnext, feed):
    """Read an opened journal twice and return what the meter needs after a restart.

    acked: the persisted DeviceSession.acked; jnext: the journal position persisted with it;
    feed(rec): called in order for every round with recno >= jnext (served after the last
    persist: DeviceSession.recover re-deducts them, device_session rule D6; k is left 0 for the caller),
    then feed(None) once the first reading is over (the caller settles what it buffered
    before the second reading fills the heap again).
    Returns a dict: seqs {seq: [boot, [recno, ...]]} (the unacked batches to resend, each with
    the record numbers of its rounds, which batch_at() reads again: the scan holds no decoded
    round beyond the one in hand, however many batches are unacked),
    top (the highest seq sealed), npend (all unsealed rounds), rd (recno of the first unsealed
    round, or 0: head() reads them), bad (records that did not decode), orphans (rounds no
    seal accounts for, dropped).
    A seq > acked whose seal record is missing (quarantined) while a higher seal exists is
    given the sealed rounds no seal record covers (G1); with no higher seal it is left out
    (DeviceSession.start re-seals it empty, D5, and its rounds are still unsealed).
    """
    seals: dict = {}
    top = 0
    last = 0
    bad = 0
    for r, p in journal.records():
        try:
            kind, v = decode(p)
        except MeterLogError:
            bad += 1
            continue
        if kind == SEAL:
            seals[v[0]] = v
            top = max(top, v[0])
            last = max(last, v[3])
        elif r >= jnext:
            feed(v)
    feed(None)
    unknown = [s for s in range(acked + 1, top) if s not in seals]
    out: dict = {}
    for s in seals:
        if s > acked:
            out[s] = [seals[s][1], []]
    if unknown:
        out[unknown[0]] = [0, []]
    ranges = sorted(seals.values(), key=lambda v: v[2])
    i = 0
    npend = 0
    rd = 0
    orphans = 0
    for r, p in journal.records():
        try:
            kind, _ = decode(p)
        except MeterLogError:
            continue
        if kind == SEAL:
            continue
        if r > last:
            npend += 1
            if not rd:
                rd = r
            continue
        while i < len(ranges) and ranges[i][3] < r:
            i += 1
        home = ranges[i][0] if i < len(ranges) and ranges[i][2] <= r else 0
        if not home:
            if not unknown:
                orphans += 1
                continue
            home = unknown[0]
        if home in out:
            out[home][1].append(r)
    return {"seqs": out, "top": top, "npend": npend, "rd": rd, "bad": bad, "orphans": orphans}


def batch_at(journal, recnos):
    """(t0, ver, lease, ucny, rows) of the round records numbered recnos (ascending, as scan()
    lists a batch's), read again from the journal one record at a time: the usage message's
    fields, each row [t - t0, *wire] (protocol U2), holding only the rows the message needs
    (a decoded record is about 4 times that); None for no rounds."""
    if not recnos:
        return None
    b = None
    last = recnos[-1]
    for r, v in _rounds(journal, recnos[0]):
        if r > last:
            break
        if r not in recnos:
            continue
        row = [v[1]]
        row += v[5]
        if b is None:
            b = [v[1], v[2], v[3], v[4], [row]]
        else:
            b[0] = min(b[0], v[1])
            b[3] += v[4]
            b[4].append(row)
    if b is None:
        return None
    for row in b[4]:
        row[0] -= b[0]
    return b[0], b[1], b[2], b[3], b[4]


def head(journal, rd, keep):
    """(up to keep unsealed (recno, rec) from recno rd on, next rd or 0): refills the meter's
    in-memory head of unsealed rounds from the journal."""
    got: list = []
    for r, v in _rounds(journal, rd):
        if len(got) >= keep:
            return got, r
        got.append((r, v))
    return got, 0


def _rounds(journal, start):
    """(recno, rec) of the round records from recno start on, as decode() gives them (records
    that do not decode, and seals, skipped)."""
    for r, p in journal.records(start):
        try:
            kind, v = decode(p)
        except MeterLogError:
            continue
        if kind != SEAL:
            yield r, v

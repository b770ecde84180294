"""The journaled half of the device meter (firmware_py.meter builds the SDK's round API on
it): one DeviceSession whose actions are executed on a Journal and a State store, rounds
journaled, batches sealed, acks compacted, recovery after a power cut. Runtime-neutral, no
sockets; the record formats and their rules G1-G2 are in firmware_py.meter_log.

  M2. A round is accepted when its record is in the journal (_serve returns OK): rated by the
      core (an invalid round raises rating.RatingError before anything changes), deducted
      from the lease, journaled. Nothing accepted is lost or counted twice across power cuts.
      A round's serial k (DeviceSession.served) is its position among the round records.
  M3. Room: a round is refused (JOURNAL_FULL) unless the journal keeps cfg["reserve"] bytes
      for every open round plus cfg["headroom"] for seal records, so sealing, acks and hence
      compaction go on while rounds are refused. An append refused anyway (a larger round,
      ENOSPC) undoes the deduction and returns JOURNAL_FULL / DISK_FULL.
  M4. Persistence: the state store holds {0: DeviceSession.state(), 1: jp}, jp = the journal's
      next recno when it was written, so every round record below jp is in the state's counts
      and recovery re-deducts those from jp on (device_session rule D6). A seal journals a seal record (before
      its publish) instead of writing the state; an ack's persist waits for the next
      checkpoint (every cfg["checkpoint"] rounds, when room runs low, at close): a lost ack
      only makes batches be resent, and the cloud books (dev, seq) once. With cfg["ack_lag"]
      L > 0 it waits only while fewer than L batches were acked since the state was written,
      which bounds what recovery rebuilds and resends (and holds in RAM) to L + window
      batches however often the power is cut before a checkpoint (a small heap needs that). Every other persist
      is written at once, before anything published after it. The journal is compacted up to
      the round before the oldest unacked one, never past the jp of the state written before
      the current one, every cfg["ack_every"] records (or at once when room runs low): if the
      newest state slot is found damaged (state rule S4), the older one with its jp still
      finds every round and seal record after it, and the boot counter skips one ahead.
  M7. open() recovers: the journal's own recovery (report["journal"]), the state, the price
      book last pushed, rounds after jp re-deducted (device_session D6), unacked batches rebuilt from seal
      records and resent as retransmissions (meter_log G1-G2), then DeviceSession.start (a boot
      counted, the D5 gap fill). Open rounds live in RAM: a power cut loses them unbilled.
      Recovery's heap is bounded: it re-deducts 8 rounds at a time, the scan keeps only the
      record numbers of each unacked batch's rounds, the batches are re-sealed one at a time
      after the scan (each batch's rows read again from the journal), the unsealed head is
      read last, and what recovery decodes lives in frames that end before the session
      starts; heap_point(name), when a shell sets it, is called at "scanned" and "resealed"
      to measure it.
  M8. Both state slots lost while the journal holds segments: the boot counter is not known,
      and a smaller one would have the cloud refuse the device's control messages as replays
      (cloud_session C5). The next boot is then above every boot in the journal's seal
      records and above `now` (Unix seconds: more than any count of restarts), event
      "state_lost" and report["state_lost"]; the shell warns. Seqs come from the journal as
      after any recovery; seqs already acked and compacted away are the cloud's duplicates.
Caller mistakes raise ValueError; storage errors other than a full journal or disk (OSError)
pass through to the shell.
"""
from firmware_py import meter_log as ML, pricebook as pb, proto as P
from firmware_py import lease as L
from firmware_py.device_session import CFG as SESSION_CFG, DeviceSession
from firmware_py.journal import FULL, REFUSALS, Journal
from firmware_py.state import State

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

OK = const(0)
DEGRADED = const(1)
SUSPENDED = const(6)
JOURNAL_FULL = const(7)
DISK_FULL = const(8)
UNKNOWN_ROUND = const(9)
TOO_MANY_OPEN = const(10)
CLOSED = const(11)
REASONS = ("ok", "degraded") + L.VERDICTS[2:] + ("suspended", "journal full", "disk full",
                                                  "unknown round", "too many open rounds",
                                                  "meter closed")
CFG = {"round_timeout": 300, "agent_idle": 600, "max_open": 8, "reserve": 64, "headroom": 512,
       "checkpoint": 64, "ack_lag": 0, "ack_every": 32, "ram_rounds": 20, "max_bytes": 65536,
       "segment_bytes": 4096, "idle": 0, "max_events": 64}


class MeterBase:
    """Storage, sync and recovery of one device's meter (rules M2-M4, M7)."""

    def __init__(self, dirpath, ws, dev, kid, key, book=None, cfg=None, sync=None,
                 sync_dir=None, journal=None, state=None, books=None, firmware=""):
        c = dict(CFG)
        c.update(SESSION_CFG)
        cfg = cfg or {}
        for k in cfg:
            if k not in c:
                raise ValueError("meter cfg: unknown key %r" % (k,))
            c[k] = cfg[k]
        self.cfg = c
        if journal is None:
            if not dirpath:
                raise ValueError("Meter needs a directory or a Journal")
            journal = Journal(dirpath, c["max_bytes"], c["segment_bytes"], sync, sync_dir)
        self.j = journal
        d = journal.dir
        self.st = state or State(d + "/meter", sync, sync_dir)
        self.bs = books or State(d + "/book", sync, sync_dir)
        self.ws, self.dev, self.kid, self.key = ws, dev, kid, key
        self.firmware = firmware   # the version reported to the cloud (device_session D10)
        self.book = book or pb.default()
        self.s: DeviceSession = None  # type: ignore[assignment]  # set by open()
        self.keep = max(c["ram_rounds"], c["batch"])
        self.heap_point = None  # a shell's heap probe, called with a name inside recovery
        self.out: list = []
        self.ev: list = []
        self.rounds: dict = {}  # rid -> [last activity, round dict, verdict, hint]
        self.agents: dict = {}  # launch item id -> last round time (M5)
        self.batches: dict = {}  # unacked seq -> recno of its first round
        self.pend: list = []  # head of the unsealed rounds: [(recno, rec)]
        self.npend = 0
        self.rd = 0
        self.jp = 0
        self.jp_prev = 0  # jp of the state written before the current one (M4)
        self.acked_saved = 0  # DeviceSession.acked in the state last written (M4, ack_lag)
        self.dirty = False
        self.since_cp = 0
        self.nrid = 0
        self.closing = False
        self.last_round = 0
        self.idled = False
        self.n_rounds = 0
        self.n_ucny = 0
        self.dropped_events = 0

    # ------------------------------------------------------------------ recovery
    def open(self, now):
        """Recover and start (M7): a report dict. What recovery reads and decodes lives in the
        frames of _session() and _recover(), gone before the session starts."""
        jrep = self.j.open()
        st = self.st.load() or {}
        srep = dict(self.st.report)
        had = bool(st)
        self.jp = self.jp_prev = st.get(1, 0)
        s = self.s = self._session(st.get(0))
        del st
        r = self._recover(now)
        s.next_seq = max(s.next_seq, r["top"] + 1)
        if had and (srep.get("a") not in ("ok", "empty") or srep.get("b") not in ("ok", "empty")):
            s.boot += 1  # S4: the newest state may be lost; never reuse its boot number
            self._event("state_fallback", srep)
        lost = not had and (jrep["segments"] > 0 or jrep["records"] > 0)
        if lost:  # M8: both state slots gone, the journal shows an earlier life
            s.boot = max(s.boot, r["boot"], now)
            self._event("state_lost", s.boot + 1)
        self.npend = r["npend"]
        self.pend, self.rd = ML.head(self.j, r["rd"], self.keep) if r["rd"] else ([], 0)
        self._run(s.start(now))
        if self.dirty or self.jp != self.j.next:
            self._write_state()
        self.last_round = now
        return {"journal": jrep, "state": srep, "rededucted": r["rededucted"],
                "resend": len(s.outbox), "unsealed": self.npend, "bad_records": r["bad"],
                "orphans": r["orphans"], "boot": s.boot, "state_lost": lost}

    def _session(self, saved):
        """The DeviceSession from its saved state, with the newest price book: the one built in
        or a newer one pushed before the restart."""
        book = self.book
        try:
            b = self.bs.load()
            if b and 0 in b:
                nb = pb.from_cbor(b[0])
                if nb["version"] > book["version"]:
                    book = nb
        except ValueError as exc:
            self._event("book_unreadable", str(exc))
        scfg = {}
        for k in SESSION_CFG:
            scfg[k] = self.cfg[k]
        s = DeviceSession(self.ws, self.dev, self.kid, self.key, book, saved, (), scfg, self.firmware)
        self.book = s.book
        self.acked_saved = s.acked
        return s

    def _recover(self, now):
        """M7: the journal scanned (meter_log.scan), the rounds served after the last persist
        re-deducted a few at a time, the unacked batches sealed again; returns the figures open()
        needs: top (highest seq sealed), npend, rd, bad, orphans, rededucted, and boot (the
        highest boot among the unacked batches, for M8)."""
        s = self.s
        chunk: list = []
        rededucted = [0]

        def feed(rec):
            if rec is None:  # the end of the rounds to re-deduct
                flush()
                return
            rec[0] = s.served + len(chunk) + 1
            chunk.append(rec)
            if len(chunk) >= 8:  # a few rounds at a time: a device heap holds no more
                flush()

        def flush():
            for a in s.recover(chunk):
                if a[0] == "event":
                    self._event(a[1], a[2])
            rededucted[0] += len(chunk)
            del chunk[:]

        info = ML.scan(self.j, s.acked, self.jp, feed)
        flush()
        if self.heap_point:
            self.heap_point("scanned")
        seqs = info["seqs"]
        boot = 0
        for seq in seqs:
            boot = max(boot, seqs[seq][0])
        self._reseal(seqs, now)
        return {"top": info["top"], "npend": info["npend"], "rd": info["rd"], "bad": info["bad"],
                "orphans": info["orphans"], "rededucted": rededucted[0], "boot": boot}

    def _reseal(self, seqs, now):
        """M7: the unacked batches scan() listed ({seq: [boot, recnos]}) sealed again, one
        batch's rows at a time, read again from the journal. A frame of its own, so that
        nothing it held stays reachable from open()'s (MicroPython scans a frame's whole value
        stack)."""
        hp = self.heap_point
        for seq in sorted(seqs):
            boot, recnos = seqs[seq]
            self._resend(seq, boot, ML.batch_at(self.j, recnos), recnos[0] if recnos else 0, now)
            if hp:
                hp("resealed")

    def _resend(self, seq, boot, b, first, now):
        self.s.outbox[seq] = self._rebuild(seq, boot, b, now)
        if first:
            self.batches[seq] = first

    def _rebuild(self, seq, boot, b, now):
        """The sealed usage message of unacked batch seq from meter_log.batch_at's b (None: no
        rounds left, re-sealed empty)."""
        s = self.s
        if b:
            t0, ver, lid, ucny, rows = b
        else:
            t0, ver, lid, ucny, rows = max(now, 0), s.book["version"], 0, 0, []
        return P.seal(s.keys[s.kid], {"type": P.USAGE, "kid": s.kid, "dev": self.dev,
                                      "boot": boot or s.boot, "seq": seq, "ver": ver,
                                      "lease": lid, "t0": t0, "flags": P.RETX, "ucny": ucny,
                                      "rounds": rows})

    # ------------------------------------------------------------------ executing actions
    def _write_state(self):
        self.st.save({0: self.s.state(), 1: self.j.next})
        self.acked_saved = self.s.acked
        self.jp_prev = self.jp
        self.jp = self.j.next
        self.dirty = False
        self.since_cp = 0

    def _event(self, name, detail):
        self.ev.append((name, detail))
        if len(self.ev) > self.cfg["max_events"]:
            self.ev.pop(0)
            self.dropped_events += 1

    def _run(self, acts):
        n = len(acts)
        for i in range(n):
            a = acts[i]
            k = a[0]
            if k == "publish":
                self.out.append((a[1], a[2]))
            elif k == "persist":
                lag = self.cfg["ack_lag"]
                if (i + 1 < n and acts[i + 1][0] == "acked"
                        and not (lag and acts[i + 1][1] - self.acked_saved >= lag)):
                    self.dirty = True  # M4: an ack's persist waits for the checkpoint
                else:
                    self._write_state()
            elif k == "acked":
                for seq in [q for q in self.batches if q <= a[1]]:
                    del self.batches[seq]
                self._compact(False)
            elif k == "event":
                self._event(a[1], a[2])
            elif k == "book":
                self.bs.save({0: a[1]})
                self.book = self.s.book
            # "outbox" comes only from start()'s empty re-seals (device_session D5): redone at each start

    def _free(self):
        return self.j.max_bytes - self.j.used_bytes

    def _room(self, nopen):
        return self._free() >= self.cfg["headroom"] + self.cfg["reserve"] * nopen

    def _compact(self, force):
        j = self.j
        if self.batches:
            first = min(self.batches.values())
        elif self.pend:
            first = self.pend[0][0]
        else:
            first = j.next
        low = not self._room(len(self.rounds) + 1)
        if first - 1 > self.jp_prev - 1 and (low or force):
            self._write_state()
            if first - 1 > self.jp_prev - 1:
                self._write_state()  # twice: compaction may go as far as the older slot's jp
        lim = min(first - 1, self.jp_prev - 1)
        if lim > j.acked and (force or low or lim - j.acked >= self.cfg["ack_every"]):
            j.ack_through(lim)

    def _check(self):
        if self.s is None:
            raise ValueError("meter not open: call open(now) first")
        return self.s

    def _serve(self, rnd, now, settled):
        s = self.s
        k0, u0 = s.served, s.lease.used
        rec, acts = s.serve(rnd, now)
        try:
            r = self.j.append(ML.enc_round(rec, settled))
        except OSError:
            s.served, s.lease.used = k0, u0
            raise
        if r < 0:
            s.served, s.lease.used = k0, u0
            self._event("round_refused", REFUSALS[r])
            return (JOURNAL_FULL if r == FULL else DISK_FULL), 0
        self.since_cp += 1
        if self.rd or len(self.pend) >= self.keep:
            if not self.rd:
                self.rd = r
        else:
            self.pend.append((r, rec))
        self.npend += 1
        self.n_rounds += 1
        self.n_ucny += rec[4]
        self.last_round = now
        self.idled = False
        self._run(acts)
        return OK, rec[4]

    def _settle(self, now, every):
        pass  # unended rounds: Meter

    # ------------------------------------------------------------------ sealing and timers
    def _seal(self, now):
        s = self.s
        while self.npend:
            if self.rd and len(self.pend) < self.keep:
                got, self.rd = ML.head(self.j, self.rd, self.keep - len(self.pend))
                self.pend += got
            pend = self.pend
            if not s.seal_due(self.npend, pend[0][1][1], now):
                return
            force = s.force
            n, acts = s.seal([x[1] for x in pend], now, False)  # M4: the seal record persists
            if not n:
                return
            seq = s.next_seq - 1
            r = self.j.append(ML.enc_seal(seq, s.boot, pend[0][0], pend[n - 1][0]))
            if r < 0:  # G2: no seal record, no publish; the rounds stay unsealed
                s.next_seq = seq
                del s.outbox[seq]
                s.force = force
                self._event("seal_refused", REFUSALS[r])
                return
            self.batches[seq] = pend[0][0]
            del pend[:n]
            self.npend -= n
            if self.npend and force:
                s.force = force
            self.dirty = True  # M4: the seal record stands for the seal's persist
            self.out.append((acts[2][1], acts[2][2]))

    def tick(self, now):
        """Timers: unended rounds (meter M6), batches due, retransmissions and lease messages,
        idle lease return (cfg["idle"] seconds, 0: never), checkpoint and compaction (M4)."""
        s = self._check()
        self._settle(now, False)
        self._seal(now)
        self._run(s.tick(now))
        idle = self.cfg["idle"]
        if (idle and not self.idled and not self.rounds and now - self.last_round >= idle
                and s.lease.st != L.NONE):
            self.idled = True
            self._run(s.idle(now))
        if self.since_cp >= self.cfg["checkpoint"]:
            self._write_state()
        self._compact(False)

    def connected(self, now):
        """The link is up (after every CONNACK): resend unacked batches (device_session D4)."""
        self._run(self._check().connected(now))
        self._seal(now)

    def receive(self, suffix, data, now):
        """A message from a down topic (suffix "down/ack" etc.)."""
        self._run(self._check().receive(data, now, suffix))
        self._seal(now)

    def drain(self, now, release=True):
        """Before a clean shutdown: settle every open round (meter M6), seal every pending round,
        and, when release, return the lease (lease L8). Publish, wait for acks, then close()."""
        s = self._check()
        self.closing = True
        self._settle(now, True)
        s.force = 1
        self._seal(now)
        if release and not s.postpaid:
            self._run(s.idle(now))

    def close(self):
        """Checkpoint the state, compact, close the journal."""
        if self.s is not None:
            self._write_state()
            self._compact(True)
        self.j.close()

    # ------------------------------------------------------------------ outputs
    def publishes(self):
        """[(topic suffix, bytes)] to publish QoS 1, oldest first (taken: the list empties)."""
        out = self.out
        self.out = []
        return out

    def events(self):
        """[(name, detail)] since the last call (at most cfg["max_events"] kept)."""
        ev = self.ev
        self.ev = []
        return ev

    def topic(self, suffix):
        return P.topic(self.ws, self.dev, suffix)

    def status(self):
        """A dict for logs, the SDK and the local API."""
        s = self._check()
        ls = s.lease
        return {"dev": self.dev, "boot": s.boot, "served": s.served, "seq": s.next_seq - 1,
                "acked": s.acked, "unacked": len(s.outbox), "unsealed": self.npend,
                "open": len(self.rounds), "suspended": s.suspended, "postpaid": s.postpaid,
                "lease": ls.lease, "lease_state": L.STATES[ls.st], "remaining": ls.remaining(),
                "used": ls.used, "book": s.book["version"], "rounds": self.n_rounds,
                "ucny": self.n_ucny, "journal_free": self._free(),
                "journal_bytes": self.j.bytes_written, "state_bytes": self.st.bytes_written}

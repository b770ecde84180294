"""The rater's group step, free of MQTT: a group of received messages in, one committed
transaction and the downlink to publish out. cloud/rater.py feeds it from the broker.

Ingest.process() chains public steps, each testable alone (tests/cloud/test_ingest_steps.py):
screen (G1), load_devices and session (G2, G9), receive through the device's session, book
(G3, G4), charge (G5), reply (G6, G10), save (G6, G9). The SQL it writes by hand is in
cloud/ledger.py (device_rows, booked_between, the bulk inserts), under one statement-size rule.

For each message, in order (rules G1-G10; the protocol rules are firmware_py.cloud_session's):
 G1. Screening before any database work: a payload over proto.MAX_MSG is `oversized`; a topic
     that is not em/<ws>/<dev>/up/<kind> is `wrong_topic`; a device the registry does not know
     is `unknown_device`; a device publishing under another workspace's tree is `wrong_topic`.
 G2. The device's CloudSession is built from its stored state and keys (key ids up to the last
     one delivered) and decides: MAC, strictness, freshness, duplicates, re-rating, leases.
     Its rejections become dead letters with a reason code (malformed, unknown_kid, bad_mac,
     wrong_device, wrong_topic, replay, no_pool, foreign_lease, out_of_range: an integer the
     ledger cannot hold, cloud_session C8). A dead letter changes nothing
     but the dead-letter table.
 G3. Bookings are inserted with ON CONFLICT (device_id, seq) DO NOTHING; a row that comes back
     was booked now, one that does not was already booked (a duplicate, acked again). For each
     new batch: its usage lines (per item and multiplier, from the core's rating lines), a
     mismatch record when the core's verdict is not OK or its lease is not the device's.
 G4. License workspaces: lease messages go through the session against the workspace Pool
     (loaded with the leases concerned, under its row lock) and their entries are stored;
     booked batches are then reported on their leases (cloud.pools.report_booked). One that
     would take its lease's booked total past billing.LIMIT (cloud.pools S7) stays booked,
     unreported, with a "lease limit" mismatch, and its device is acked V_INVALID for it.
 G5. Postpaid workspaces: each new batch's cloud-rated amount is charged to the account at the
     booking time (cloud.accounts.charge); accounts whose suspension flag changed get suspend /
     resume commands on all their postpaid devices, signed by each device's session. A batch
     the core refuses at the debt limit (firmware_py.billing P9) stays booked, uncharged, with
     a "debt limit" mismatch, and its device is acked V_INVALID for it.
 G6. Every device with usage in the group gets one cumulative ack, computed inside the
     transaction from what is booked (including this group's rows) and carrying the verdicts of
     its non-OK batches; a device that sent a batch of an older price-book version also gets
     the newest book. Session state is saved with the messages that used it (cloud_session C7).
 G7. All of it is one transaction; the downlink is returned to the caller, which publishes it
     and only then acknowledges the group's MQTT messages to the broker. A crash before the
     commit leaves nothing behind; the broker (or the device) sends the messages again.
 G8. The core's rating is pure, so re-rating lines are memoised per (book version, round wire
     form); the memo is bounded.
 G10. Price books: every group first loads the books published since the last one it knew
     (an operator's `edgemeter admin book publish`; no restart) and pushes (G6) the newest book
     whose effective time has come; a batch is re-rated with the book of its own version,
     the one the device rated it with (cloud.books B5).
 G9. The sessions a group saved are kept (bounded, LIVE_MAX) with the JSON saved from them; the
     next group that loads such a device reuses the object, without parsing, only when the
     locked row holds exactly that JSON and the same keys (so a rolled-back group, another
     rater or a command saved in between all mean a fresh parse). A session is taken out of
     the cache when used, so no two holders ever share one.
 G10. A device's cumulative ack needs to know which seqs between its last ack and the highest
     seq it sent are booked; those not booked in this group (by another rater, or earlier) are
     read for all the group's devices at once before the acks are computed, instead of one
     query per seq (several raters sharing a device's batches made that a few queries per
     batch, which cost more CPU than the booking).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, select, update
from sqlalchemy.engine import Connection, Engine

from edgemeter.cloud import accounts, db, keystore, ledger, pools
from edgemeter.cloud import schema as S
from firmware_py import cloud_session as CS
from firmware_py import proto as P
from firmware_py import rating

MEMO_MAX = 100_000
LIVE_MAX = 20_000
LINE_COLS = ("batch_id", "item", "multiplier", "calls", "ucny")


@dataclass
class Incoming:
    topic: str
    payload: bytes
    received_ms: int
    mid: int = 0


@dataclass
class Outcome:
    """What one group did; `publish` is the downlink to send after the commit."""
    publish: list[tuple[str, bytes]] = field(default_factory=list)
    booked: int = 0
    rounds: int = 0
    ucny: int = 0
    duplicates: int = 0
    mismatches: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    lag_ms: list[int] = field(default_factory=list)
    events: list[tuple[str, int, Any]] = field(default_factory=list)


class Ingest:
    """Books groups of messages into the store (rules G1-G9)."""

    def __init__(self, engine: Engine, now_ms: Callable[[], int] | None = None):
        self.engine = engine
        self.now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        with db.write_connect(engine) as conn, conn.begin():
            self.books = ledger.ensure_books(conn, self.now_ms() // 1000)
        self.latest = ledger.book_in_force(self.books, self.now_ms() // 1000)
        self._memo: dict[tuple[int, Any], Any] = {}
        self._ws_cache: dict[int, Any] = {}
        self._live: dict[int, tuple[str, MemoSession]] = {}     # rule G9
        self._topics: dict[str, tuple[int, int, str]] = {}    # parse_topic's answers (bounded)

    # ------------------------------------------------------------------ rating memo (G8)
    def clear_memo(self) -> None:
        """Forget every memoised rating (a benchmark's cold start)."""
        self._memo.clear()

    def rated(self, book: dict, wire: list) -> tuple[list, int] | ValueError:
        """rating.rate(book, round_from_wire(wire)), or the ValueError it raised, memoised under
        one key per round: (book version, the tuple of its entries) for a round of plain item
        ids (the usual), (book version, repr of it) when an entry is a list (counts or models:
        not hashable). The key is hashed once, by the lookup itself (this runs per round)."""
        try:
            key: tuple[int, Any] = (book["version"], tuple(wire))
            hit = self._memo.get(key)
        except TypeError:
            key = (book["version"], repr(wire))
            hit = self._memo.get(key)
        if hit is None:
            try:
                hit = rating.rate(book, rating.round_from_wire(wire))
            except ValueError as e:
                hit = e
            if len(self._memo) >= MEMO_MAX:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    @staticmethod
    def batch_lines(rated: list[tuple[list, int]]) -> dict[tuple[int, int], list[int]]:
        """{(item, multiplier): [calls, µCNY]} of a batch's valid rounds, given their ratings
        (the memo's values: rating.rate's (lines, total)); equal rounds share one object."""
        agg: dict[tuple[int, int], list[int]] = {}
        if rated and rated.count(rated[0]) == len(rated):
            groups: Any = ((rated[0], len(rated)),)
        else:
            by_id: dict[int, list] = {}
            for r in rated:
                g = by_id.get(id(r))
                if g is None:
                    by_id[id(r)] = [r, 1]
                else:
                    g[1] += 1
            groups = by_id.values()
        for (lines, _total), n in groups:
            for item, calls, mult, ucny, _model in lines:
                a = agg.get((item, mult))
                if a is None:
                    agg[(item, mult)] = [calls * n, ucny * n]
                else:
                    a[0] += calls * n
                    a[1] += ucny * n
        return agg

    # ------------------------------------------------------------------ the group
    def process(self, msgs: Sequence[Incoming]) -> Outcome:
        """One group (rules G1-G10): screen, then in one transaction load, receive, book,
        charge, reply and save; the Outcome holds the downlink to publish after the commit."""
        out = Outcome()
        now_ms = self.now_ms()
        now = now_ms // 1000
        screened, dead = self.screen(msgs)
        with db.write_connect(self.engine) as conn:
            with conn.begin():
                self.refresh_books(conn, now)
                self._group(conn, screened, dead, out, now, now_ms)
        done_ms = self.now_ms()
        out.lag_ms = [done_ms - m.received_ms for m in msgs]
        return out

    def screen(self, msgs: Sequence[Incoming]) -> tuple[list[tuple[Incoming, int, int, str]], list[tuple[str, str, bytes, str]]]:
        """Step "screen" (rule G1), before any database work: ([(message, ws, dev, topic
        suffix)] to receive, [(reason, topic, payload, detail)] dead letters)."""
        screened: list[tuple[Incoming, int, int, str]] = []
        dead: list[tuple[str, str, bytes, str]] = []
        for m in msgs:
            if len(m.payload) > P.MAX_MSG:
                dead.append(("oversized", m.topic, m.payload, f"{len(m.payload)} bytes > {P.MAX_MSG}"))
                continue
            parsed = self._topics.get(m.topic)
            if parsed is None:
                try:
                    parsed = P.parse_topic(m.topic)
                except P.ProtoError as e:
                    dead.append(("wrong_topic", m.topic, m.payload, e.reason))
                    continue
                if len(self._topics) >= LIVE_MAX:
                    self._topics.clear()
                self._topics[m.topic] = parsed
            ws, dev, suffix = parsed
            if not suffix.startswith("up/"):
                dead.append(("wrong_topic", m.topic, m.payload, "not an uplink topic"))
                continue
            screened.append((m, ws, dev, suffix))
        return screened, dead

    def refresh_books(self, conn: Connection, now: int) -> None:
        """Rule G10: load price books published since (one max() query per group) and take the
        one in force at now as the book to push."""
        top = conn.execute(select(func.max(S.price_books.c.version))).scalar()
        if top is not None and top > max(self.books):
            self.books.update(ledger.books_since(conn, max(self.books)))   # in place: sessions share it
        self.latest = ledger.book_in_force(self.books, now)

    def dead_letter(self, m: Incoming, reason: str, detail: str) -> Outcome:
        """Record one message as a dead letter in its own transaction (nothing else changes)."""
        now_ms = self.now_ms()
        with db.write_connect(self.engine) as conn, conn.begin():
            ledger.record_dead_letter(conn, reason, m.topic, m.payload, detail, now_ms)
        return Outcome(dead={reason: 1}, lag_ms=[now_ms - m.received_ms])

    def forget_workspaces(self) -> None:
        """Drop the cached workspace rows (their lease terms may have changed)."""
        self._ws_cache.clear()

    def _workspaces(self, conn: Connection, ids: set[int]) -> dict[int, Any]:
        missing = ids - set(self._ws_cache)
        if missing:
            for r in conn.execute(select(S.workspaces).where(S.workspaces.c.id.in_(sorted(missing)))).mappings():
                self._ws_cache[r["id"]] = dict(r)
        return {i: self._ws_cache[i] for i in ids if i in self._ws_cache}

    def load_devices(self, conn: Connection, devs: set[int]) -> tuple[dict[int, Any], dict[int, dict[int, bytes]]]:
        """Step "load": the devices' rows, locked (cloud.ledger.device_rows), and their keys
        unwrapped up to the last key id delivered to each."""
        if not devs:
            return {}, {}
        rows, found = ledger.device_rows(conn, devs)
        keys: dict[int, dict[int, bytes]] = {}
        for d, kid, key in found:
            if d in rows and kid <= rows[d]["kid_sent"]:
                keys.setdefault(d, {})[kid] = keystore.unwrap(d, kid, bytes(key))
        return rows, keys

    def session(self, row: Any, keys: dict[int, bytes]) -> "MemoSession":
        """The device's session from its row (rule G9: the one this Ingest saved last, when the
        row still holds exactly what was saved from it and the keys are the same)."""
        live = self._live.pop(row["id"], None)
        if live is not None and live[0] == row["session"] and live[1].keys == keys \
                and live[1].ws == row["workspace_id"]:
            return live[1]
        state = json.loads(row["session"]) if row["session"] else None
        return MemoSession(row["workspace_id"], row["id"], keys, state or None, self.books, self)

    def _group(self, conn: Connection, screened: list, dead: list, out: Outcome, now: int, now_ms: int) -> None:
        rows, keys = self.load_devices(conn, {dev for _, _, dev, _ in screened})
        wss = self._workspaces(conn, {r["workspace_id"] for r in rows.values()})
        sessions: dict[int, MemoSession] = {}
        status_of: dict[int, str] = {}
        firmware_of: dict[int, str] = {}
        bookings: list[tuple[Incoming, Any, dict]] = []
        dups: dict[int, set[int]] = {}
        pools_: dict[int, Any] = {}
        pool_entries: dict[int, list] = {}
        for m, ws, dev, suffix in screened:
            row = rows.get(dev)
            if row is None or dev not in keys:
                dead.append(("unknown_device", m.topic, m.payload, f"device {dev} is not registered"))
                continue
            if row["workspace_id"] != ws:
                dead.append(("wrong_topic", m.topic, m.payload, f"device {dev} belongs to workspace {row['workspace_id']}"))
                continue
            sess = sessions.get(dev)
            if sess is None:
                sess = sessions[dev] = self.session(row, keys[dev])
            pool = None
            if suffix != "up/usage" and wss[ws]["billing"] == "license":
                pool = self._pool_for(conn, pools_, ws, wss[ws], m.payload, sess, now)
            sess.rated = []
            acts = sess.receive(m.payload, now, _never, pool=pool, suffix=suffix)
            for a in acts:
                kind = a[0]
                if kind == "book":
                    bookings.append((m, wss[ws], a[1], sess.rated))
                elif kind == "duplicate":
                    dups.setdefault(dev, set()).add(a[1])
                    out.duplicates += 1
                elif kind == "pool":
                    pool_entries.setdefault(ws, []).append(a[1])
                elif kind == "publish":
                    out.publish.append((P.topic(ws, dev, a[1]), a[2]))
                elif kind == "reject":
                    dead.append((a[1], m.topic, m.payload, a[2]))
                elif kind == "event":
                    detail = a[2]
                    if a[1] == "firmware":
                        detail = firmware_of[dev] = a[2][:64].decode("utf-8", "replace")
                    elif a[1] == "status":
                        status_of[dev] = json.dumps({k: v for k, v in a[2].items() if k not in ("kid",)},
                                                    sort_keys=True)
                        detail = None
                    out.events.append((a[1], dev, detail))
        for ws, es in pool_entries.items():
            pools.store(conn, pools_[ws], es, now)
        new = self.book(conn, bookings, dups, out, now, now_ms, sessions)
        self.reply(conn, sessions, new, dups, bookings, out)
        self.save(conn, sessions, status_of, now_ms, firmware_of)
        for reason, topic, payload, detail in dead:
            ledger.record_dead_letter(conn, reason, topic, payload, detail, now_ms)
            out.dead[reason] = out.dead.get(reason, 0) + 1

    def _pool_for(self, conn: Connection, cache: dict, ws: int, wsrow: Any, payload: bytes,
                  sess: CS.CloudSession, now: int) -> Any:
        """The workspace's Pool for a lease/status message, with the leases it names loaded
        (rule G4); ended licences are expired first (cloud.pools S5). The lease id is read
        from the message only after its tag verifies, so a forged message loads no rows."""
        want = {sess.s["lease"]} - {0}
        outcome, msg = P.check(payload, sess.keys, sess.dev)
        if outcome == P.OK and msg.get("lease") and not CS.out_of_range(msg):
            want.add(msg["lease"])   # only a verified message names a lease to load (proto W1), in range (cloud_session C8)
        # anything else: the session rejects it (malformed, unknown kid, bad MAC, wrong device)
        pool = cache.get(ws)
        if pool is None:
            pools.expire_due(conn, self.latest, ws, now)
            pool = cache[ws] = pools.load(conn, ws, want, wsrow)
        else:
            pools.load_leases(conn, pool, want)
        return pool

    # ------------------------------------------------------------------ booking (G3-G5)
    def book(self, conn: Connection, bookings: list, dups: dict, out: Outcome, now: int,
              now_ms: int, sessions: dict[int, "MemoSession"]) -> dict[int, list]:
        """Step "book" (rules G3, G4): insert the bookings [(message, workspace row, booking, its
        rounds' ratings)] once each, with their usage lines, mismatches and License lease
        reports, and charge the postpaid ones (step "charge"); returns {dev: [(seq, verdict)]}
        of the ones booked now (the others are duplicates, added to dups)."""
        rows, first = [], []
        seen: set[tuple[int, int]] = set()
        for m, ws, b, rated in bookings:
            key = (b["dev"], b["seq"])
            if key in seen:     # the same batch twice in one group: the second is a duplicate
                dups.setdefault(b["dev"], set()).add(b["seq"])
                out.duplicates += 1
                continue
            seen.add(key)
            first.append((ws, b, rated))
            rows.append((b["dev"], b["seq"], b["boot"], b["ver"], b["lease"], b["t0"], len(b["rounds"]),
                         b["device_ucny"], b["ucny"], b["verdict"] != P.V_OK, m.payload, ws["id"],
                         ws["account_id"], m.received_ms, now_ms))     # ledger.BATCH_COLS
        ids = ledger.insert_batch_tuples(conn, rows)
        new: dict[int, list] = {}
        lines: list[tuple] = []
        mism: dict[int, dict] = {}
        by_id: dict[int, dict] = {}
        reports: dict[int, list] = {}
        charges: list[tuple[int, int, int]] = []

        def mismatch(bid: int, b: dict, reason: str) -> None:
            if bid in mism:
                mism[bid]["reason"] += ", " + reason
            else:
                mism[bid] = {"batch_id": bid, "device_id": b["dev"], "device_ucny": b["device_ucny"],
                             "rated_ucny": b["ucny"], "reason": reason, "at_ms": now_ms}

        for ws, b, rated in first:
            bid = ids.get((b["dev"], b["seq"]))
            if bid is None:     # booked before this group: a duplicate
                dups.setdefault(b["dev"], set()).add(b["seq"])
                out.duplicates += 1
                continue
            by_id[bid] = b
            new.setdefault(b["dev"], []).append((b["seq"], b["verdict"]))
            out.booked += 1
            out.rounds += len(b["rounds"])
            out.ucny += b["ucny"]
            # rated: the ratings of its valid rounds (all, unless the verdict says not)
            if len(rated) != len(b["rounds"]) and b["verdict"] != P.V_UNKNOWN_BOOK and \
                    len(rated) != sum(1 for r in b["rounds"] if r[2] is not None):   # rated without the hook
                rated = [self.rated(self.books[b["ver"]], r[1]) for r in b["rounds"]
                         if r[2] is not None]
            agg = self.batch_lines(rated)
            for (item, mult), (calls, ucny) in agg.items():
                lines.append((bid, item, mult, calls, ucny))
            if b["verdict"] != P.V_OK:
                mismatch(bid, b, P.VERDICTS[b["verdict"]])
            if b.get("range"):     # cloud_session C8: booked at 0, the fields stored as 0
                mismatch(bid, b, "out of range: " + ", ".join(b["range"]))
            if ws["billing"] == "license":
                if b["lease"]:
                    reports.setdefault(ws["id"], []).append((b["lease"], b["dev"], b["ucny"], bid))
                else:
                    mismatch(bid, b, "no lease")
            elif b["ucny"]:
                charges.append((ws["account_id"], bid, b["ucny"]))
        ledger.insert_tuples(conn, S.usage_lines, LINE_COLS, lines)
        refused = {bid: "debt limit" for bid in (self.charge(conn, charges, out, now, sessions) if charges else ())}
        for ws_id, items in reports.items():
            for bid, problem in pools.report_booked(conn, ws_id, items, now).items():
                why = problem.replace("-", " ")
                if problem == pools.LEASE_LIMIT:
                    refused[bid] = why
                else:
                    mismatch(bid, by_id[bid], why)
        for bid, why in refused.items():      # G4, G5: booked uncharged at a limit, the device told
            b = by_id[bid]
            mismatch(bid, b, why)
            new[b["dev"]] = [(q, P.V_INVALID if q == b["seq"] else v) for q, v in new[b["dev"]]]
        self.flag_mismatches(conn, mism, out)
        return new

    @staticmethod
    def flag_mismatches(conn: Connection, mism: dict[int, dict], out: Outcome) -> None:
        """The mismatch records {batch id: row} of a group written, their batches flagged."""
        if mism:
            conn.execute(update(S.usage_batches).where(S.usage_batches.c.id == bindparam("b_id"))
                         .values(mismatch=True), [{"b_id": k} for k in mism])
            ledger.insert_rows(conn, S.mismatches, list(mism.values()))
            out.mismatches += len(mism)

    def charge(self, conn: Connection, charges: list, out: Outcome, now: int,
               sessions: dict[int, "MemoSession"]) -> list[int]:
        """Step "charge" (rule G5): charge [(account, batch id, µCNY)] and command the devices of
        the accounts whose suspension flips; returns the batch ids refused at the debt limit."""
        accs = {a for a, _, _ in charges}
        before = accounts.load_state(conn, accs)
        flags = {a: st["suspended"] for a, st in before.items()}
        after, refused = accounts.charge(conn, charges, now, before)
        flipped = [a for a, st in after.items() if st["suspended"] != flags[a]]
        if flipped:
            self.send_commands(conn, accounts.commands_due(conn, flipped), out, sessions)
        return refused

    def send_commands(self, conn: Connection, cmds: list[tuple[int, int, str]], out: Outcome,
                      sessions: dict[int, "MemoSession"] | None = None) -> None:
        """Sign and queue suspend/resume commands and record them (accounts rule A4). A device
        whose session the group already holds (`sessions`) is commanded through that session,
        which the group saves at its end; saving a second copy here would be overwritten by it
        and the command counter (cn) would go back, so that the device's next command would be
        refused as stale."""
        if not cmds:
            return
        held = sessions or {}
        rows, keys = self.load_devices(conn, {d for d, _, _ in cmds if d not in held})
        saved = []
        for dev, ws, op in cmds:
            sess = held.get(dev)
            if sess is None:
                if dev not in rows or dev not in keys:
                    continue
                sess = self.session(rows[dev], keys[dev])
                saved.append(sess)
            data = sess.command(P.OP_SUSPEND if op == "suspend" else P.OP_RESUME)
            out.publish.append((P.topic(ws, dev, "down/cmd"), data))
            out.commands[op] = out.commands.get(op, 0) + 1
        if saved:
            conn.execute(update(S.devices).where(S.devices.c.id == bindparam("b_id")).values(session=bindparam("b_s")),
                         [{"b_id": x.dev, "b_s": json.dumps(x.state(), sort_keys=True)} for x in saved])
        accounts.mark_commanded(conn, cmds)

    # ------------------------------------------------------------------ acks and state (G6)
    def reply(self, conn: Connection, sessions: dict, new: dict, dups: dict, bookings: list, out: Outcome) -> None:
        """Step "reply" (rules G6, G10): one cumulative ack per device with usage in the group,
        with its non-OK verdicts, and the newest price book to a device that used an older one."""
        versions: dict[int, int] = {}
        for _, _, b, _ in bookings:
            versions[b["dev"]] = min(versions.get(b["dev"], b["ver"]), b["ver"])
        devs = sorted(set(new) | set(dups))
        knowns = {dev: {s for s, _ in new.get(dev, ())} | dups.get(dev, set()) for dev in devs}
        gaps = {dev: (sessions[dev].s["acked"], sessions[dev].s["top"]) for dev in devs
                if any(q not in knowns[dev] for q in range(sessions[dev].s["acked"] + 1, sessions[dev].s["top"] + 1))}
        for dev, seq in ledger.booked_between(conn, gaps):   # rule G10, in one go
            knowns[dev].add(seq)
        for dev in devs:
            sess = sessions[dev]
            known = knowns[dev]
            verdicts = {s: v for s, v in new.get(dev, ()) if v != P.V_OK}

            def booked(seq: int, dev: int = dev, known: set = known) -> bool:
                if seq in known:
                    return True
                b = S.usage_batches
                return bool(conn.execute(select(exists().where(and_(b.c.device_id == dev, b.c.seq == seq)))).scalar())

            out.publish.append((P.topic(sess.ws, dev, "down/ack"), sess.ack(booked, verdicts or None)))
            if versions.get(dev, self.latest["version"]) < self.latest["version"] and sess.s["bv"] < self.latest["version"]:
                out.publish.append((P.topic(sess.ws, dev, "down/book"), sess.push_book(self.latest)))

    def save(self, conn: Connection, sessions: dict, status_of: dict, now_ms: int,
             firmware_of: dict[int, str] | None = None) -> None:
        """Step "save" (rules G6, G9): the group's sessions, kept live, and the devices' last
        status and firmware reports."""
        if not sessions:
            return
        saved = [(json.dumps(s.state(), sort_keys=True), s.s["acked"], now_ms, dev) for dev, s in sessions.items()]
        # straight through the driver: this runs for every group
        ledger.update_tuples(conn, S.devices, ("session", "acked_seq", "last_seen_ms"), "id", saved)
        if len(self._live) + len(saved) > LIVE_MAX:
            self._live.clear()
        for text, _acked, _seen, dev in saved:     # rule G9
            self._live[dev] = (text, sessions[dev])
        if status_of:
            ledger.update_tuples(conn, S.devices, ("last_status",), "id", [(v, k) for k, v in status_of.items()])
        if firmware_of:
            ledger.update_tuples(conn, S.devices, ("firmware",), "id", [(v, k) for k, v in firmware_of.items()])


class MemoSession(CS.CloudSession):
    """The core's cloud session with its per-round rating (CloudSession.rate_round, the hook
    the core offers for this) memoised by an Ingest (rule G8)."""

    def __init__(self, ws: int, dev: int, keys: dict[int, bytes], state: Any, books: dict[int, dict],
                 ingest: Ingest) -> None:
        super().__init__(ws, dev, keys, state, books)
        self.ingest = ingest
        self.rated: list = []    # the ratings (memo values) of the valid rounds of the message in hand

    def rate_round(self, book: dict, wire: list) -> int:
        hit = self.ingest.rated(book, wire)
        if isinstance(hit, ValueError):
            raise hit
        self.rated.append(hit)
        return hit[1]


def _never(_seq: int) -> bool:
    """The session's booked() during receive: the database's unique key decides (rule G3)."""
    return False

"""The rater's group step taken apart (cloud.ingest): screen, load, book, reply and save, each
on its own against a real SQLite store, as process() chains them."""
from __future__ import annotations

import json

import pytest

from rater_helpers import NOW, setup_store
from edgemeter.cloud import db, ingest
from edgemeter.tools.fleetpub import STANDARD_CHAT, Device
from firmware_py import proto as P


@pytest.fixture()
def rig(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reg = setup_store(url, postpaid_devices=2)
    engine = db.open_store(url)
    ing = ingest.Ingest(engine, now_ms=lambda: NOW * 1000)
    yield reg, engine, ing
    engine.dispose()


def test_screen_sorts_out_what_no_database_work_can_save(rig):
    reg, _, ing = rig
    d = reg["postpaid"][0]
    topic, payload = Device(d["workspace"], d["id"], d["key"]).usage([STANDARD_CHAT])
    msgs = [ingest.Incoming(topic, payload, 0), ingest.Incoming(topic, b"x" * (P.MAX_MSG + 1), 0),
            ingest.Incoming("em/x/1/up/usage", payload, 0),
            ingest.Incoming(f"em/{d['workspace']}/{d['id']}/down/ack", payload, 0)]
    screened, dead = ing.screen(msgs)
    assert [(ws, dev, suffix) for _, ws, dev, suffix in screened] == [(d["workspace"], d["id"], "up/usage")]
    assert [r for r, *_ in dead] == ["oversized", "wrong_topic", "wrong_topic"]


def test_load_book_reply_save_one_batch_then_its_duplicate(rig):
    reg, engine, ing = rig
    d = reg["postpaid"][0]
    dev = Device(d["workspace"], d["id"], d["key"])
    topic, payload = dev.usage([STANDARD_CHAT])
    with db.write_connect(engine) as conn, conn.begin():
        rows, keys = ing.load_devices(conn, {d["id"], 999_999})
        assert set(rows) == {d["id"]} and set(keys[d["id"]]) == {1}   # an unknown device loads nothing
        sess = ing.session(rows[d["id"]], keys[d["id"]])
        acts = sess.receive(payload, NOW, lambda _seq: False, suffix="up/usage")
        booking = [a[1] for a in acts if a[0] == "book"][0]
        bookings = [(ingest.Incoming(topic, payload, 0), {"id": d["workspace"], "billing": "postpaid",
                                                          "account_id": reg["account"]}, booking, sess.rated)]
        out, dups = ingest.Outcome(), {}
        new = ing.book(conn, bookings, dups, out, NOW, NOW * 1000, {d["id"]: sess})
        assert new == {d["id"]: [(booking["seq"], P.V_OK)]} and out.booked == 1 and out.ucny == booking["ucny"]
        again = ing.book(conn, bookings, dups, out, NOW, NOW * 1000, {d["id"]: sess})
        assert again == {} and dups == {d["id"]: {booking["seq"]}}        # booked once (rule G3)
        ing.reply(conn, {d["id"]: sess}, new, dups, bookings, out)
        assert [t for t, _ in out.publish] == [P.topic(d["workspace"], d["id"], "down/ack")]
        ing.save(conn, {d["id"]: sess}, {}, NOW * 1000)
    with engine.connect() as conn:
        rows, _ = ing.load_devices(conn, {d["id"]})
    assert json.loads(rows[d["id"]]["session"])["acked"] == booking["seq"]

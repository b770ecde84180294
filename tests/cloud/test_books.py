"""Price books an operator publishes (cloud.books B1-B6): export, publish, refusals, and a book
published while devices serve reaching the rater's booking step and the devices without a
restart, with the rounds before and after it rated each by its own book and invoiced apart."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from edgemeter.cloud import admin, books, db, invoices, ledger
from edgemeter.cloud import schema as S
from firmware_py import civil, pricebook

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dashboard"))
import dashfleet  # noqa: E402  (the in-process fleet: real device sessions, the rater's booking step)

T0 = civil.to_unix(2026, 7, 1, 10)


def _edit(doc: dict, table: str, row_id: int, col: str, value) -> str:
    cols = doc[table]["columns"]
    for r in doc[table]["rows"]:
        if r[0] == row_id:
            r[cols.index(col)] = value
    return books.to_text(doc)


def test_export_round_trips_and_publish_refuses_what_would_break(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    assert admin.main(["migrate", "--db", url]) == 0
    capsys.readouterr()
    f = tmp_path / "book.json"
    assert admin.main(["book", "export", str(f), "--db", url, "--json"]) == 0
    text = f.read_text()
    assert books.parse(text, 1)["hash"] == pricebook.default()["hash"]          # exactly the default book
    assert text.count("\n") > 60 and '  [6, "chat", 2200, 0, 4, 3, 16, 1, 1],' in text   # one row per line

    def publish(body: str, effective: str = "2026-07-02", at: str = "2026-07-01T12:00") -> tuple[int, str]:
        f.write_text(body)
        rc = admin.main(["book", "publish", str(f), "--effective", effective, "--at", at, "--db", url, "--json"])
        cap = capsys.readouterr()
        return rc, cap.out if rc == 0 else cap.err

    capsys.readouterr()
    doc = json.loads(text)
    refusals = [
        (text, "nothing to publish"),
        (_edit(json.loads(text), "items", 6, "name", "casual-chat"), "item 6 (chat)"),
        (_edit(json.loads(text), "items", 6, "flags", 0), "item 6 (chat)"),
        (_edit(json.loads(text), "models", 9, "comp", 1), "model 9"),
        (_edit(json.loads(text), "items", 6, "price_ucny", -1), "item 6 price"),
        (books.to_text({**doc, "items": {**doc["items"], "rows": doc["items"]["rows"][1:]}}), "item 1 (asr-lite) is missing"),
        (books.to_text({**doc, "plans": {"columns": ["lo"], "rows": []}}), "plans: expected"),
        ("{not json", "not JSON"),
    ]
    for body, why in refusals:
        rc, err = publish(body)
        assert rc == 2 and why in err, (why, err)
    new = _edit(json.loads(text), "items", 6, "price_ucny", 2300)
    rc, err = publish(new, effective="2026-07-01T11:59")                          # before now
    assert rc == 2 and "re-rate rounds already served" in err
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(S.price_books)).scalar_one() == 1   # nothing written
    rc, out = publish(new)
    res = json.loads(out)
    assert rc == 0 and res["version"] == 2 and res["replaces"] == 1 and res["effective"].startswith("2026-07-02T00:00")
    with engine.connect() as conn:
        stored = ledger.books_since(conn, 0)
    engine.dispose()
    assert stored[2]["hash"].hex() == res["hash"] and stored[2]["items"][6][2] == 2300
    rc, err = publish(_edit(json.loads(text), "items", 6, "price_ucny", 2400), effective="2026-07-01T23:00")
    assert rc == 2 and "before 2026-07-02" in err                                 # not before v2 comes into force
    assert ledger.book_in_force(stored, civil.parse_iso("2026-07-01T23:59:59"))["version"] == 1
    assert ledger.book_in_force(stored, civil.parse_iso("2026-07-02"))["version"] == 2


def test_a_book_published_while_devices_serve_reaches_them_without_a_restart(tmp_path):
    clock = [float(T0)]
    fleet = dashfleet.Fleet(f"sqlite:///{tmp_path / 'f.db'}", clock=lambda: clock[0])
    try:
        acc = fleet.account("shop", top_up_ucny=10**9)
        ws = fleet.workspace(acc, "stores", "postpaid")
        d = fleet.device(ws)
        assert fleet.serve(d, 10, "text") == 10                      # text chat: intent 800 + chat 2200
        doc = books.export(pricebook.default())
        with fleet.tx() as conn, conn.begin():
            books.publish(conn, _edit(doc, "items", 6, "price_ucny", 2300), T0 + 3600, T0 + 60)
        clock[0] = T0 + 120
        fleet.serve(d, 5, "text")                                    # not in force yet: still v1, no push
        assert d.s.book["version"] == 1 and fleet.ingest.latest["version"] == 1 and 2 in fleet.ingest.books
        clock[0] = T0 + 3600
        fleet.serve(d, 5, "text")              # these were served with v1; the ack brings v2 along
        assert d.s.book["version"] == 2 and ("book", 2) in d.events
        fleet.serve(d, 10, "text")                                   # served and rated with v2
        with fleet.tx() as conn:
            assert conn.execute(select(func.count()).select_from(S.mismatches)).scalar_one() == 0
            inv = invoices.compute(conn, acc, "2026-07")
        chat = [(ln["book_version"], ln["unit_ucny"], ln["calls"]) for ln in inv["lines"] if ln["name"] == "chat"]
        assert chat == [(1, 2200, 20), (2, 2300, 10)]
        assert d.served_ucny == 20 * 3000 + 10 * 3100 == sum(ln["list_ucny"] for ln in inv["lines"])
    finally:
        fleet.close()


@pytest.mark.parametrize("bad", [["book", "publish"], ["book", "export", "--effective", "now"]])
def test_book_command_mistakes_exit_2(tmp_path, capsys, bad):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert admin.main(["migrate", "--db", url]) == 0
    capsys.readouterr()
    assert admin.main(bad + ["--db", url]) == 2
    assert "edgemeter admin book:" in capsys.readouterr().err

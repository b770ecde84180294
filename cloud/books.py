"""Price books an operator publishes: export the current one as an editable file, publish a new
version with an effective time.

    edgemeter admin book export [FILE]                      (stdout without FILE)
    edgemeter admin book publish FILE --effective TIME

Rules:
 B1. The file is JSON (export() writes it, with its own documentation under "about"): the
     book's tables as rows with named columns, money in integer µCNY, exactly the rows
     firmware_py.pricebook.make() takes. Publishing validates it by the core's own rules
     (pricebook B1-B7: ids, names, prices, flags, ordered plan ranges, ...); any error names
     the table and the row.
 B2. A published book gets the next version (the newest stored + 1) and its content hash
     (pricebook: sha256 of its canonical CBOR); both are printed and stored. A file whose rows
     equal the newest book's is refused (nothing to publish).
 B3. Item and model ids are the wire's: a book may change prices, multipliers, model names,
     tiers, plans, the trial and licence terms, and add items or models, but every item id of
     the newest book must keep its name, unit, group, component and flags, and every model id
     its component. Anything else is refused.
 B4. --effective TIME is when the book comes into force, no earlier than now and than the
     newest book's own effective time: a book never re-rates a round already served (a round is
     rated by the book the device held when it served it). Raters take the newest book whose
     effective time has come (ledger.book_in_force) without a restart (cloud.ingest G10).
 B5. Devices that report an older version get the book in force pushed with their next ack
     (cloud.ingest G6); their batches name the version they were rated with, the cloud
     re-rates each with that version, and invoice lines keep book version and unit price apart.
 B6. Publishing is one transaction; a refused file changes nothing.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from edgemeter.cloud import ledger
from edgemeter.cloud import schema as S
from firmware_py import civil
from firmware_py import pricebook as pb

COLUMNS = {
    "items": ("id", "name", "price_ucny", "unit", "group", "comp", "flags", "min_count", "max_count"),
    "models": ("id", "comp", "multiplier", "names"),
    "tiers": ("id", "name", "price_ucny", "allowance_units"),
    "plans": ("lo_ucny", "lo_inclusive", "hi_ucny", "hi_inclusive", "discount_bp", "months"),
}
ABOUT = [
    "An edgemeter price book (docs/rating.md). Edit the rows, then: edgemeter admin book publish FILE "
    "--effective 2027-01-01T00:00 (billing calendar UTC+8 unless an offset is given).",
    "Money is integer µCNY: CNY X per 1,000 calls is X*1000 (0.75 -> 750). Multipliers and months are integers.",
    "items: id (the wire's; never change or reuse one), name, price_ucny per call, unit (0 round, 1 agent launch, "
    "2 proactive image, 3 use), group (1 ASR, 2 TTS, 3 intent, 4 LLM, 5 extra), comp (0 none, 1 ASR, 2 TTS, 3 LLM: "
    "whose model multiplier applies), flags (1 needs intent, 2 covered by chat, 4 per sentence, 8 photo, "
    "16 takes a model), min_count, max_count. Only price_ucny, the counts and new rows may change.",
    "models: id, comp, multiplier, names (lower-case, '-' for spaces; a name ending in '*' is a family: the "
    "longest matching prefix wins).",
    "tiers: id, name, price_ucny per device-year, allowance_units (pool units = µCNY of list-price usage).",
    "plans: savings-plan table rows in order: lo_ucny, lo_inclusive, hi_ucny, hi_inclusive, discount_bp "
    "(9000 = x0.90), months.",
    "trial: [amount_ucny, months]; license: [min_devices, activate_within_months, usage_months]; "
    "photo: [max_w, max_h] of photo balanced.",
    "version and hash are those of the book exported; publishing assigns the next version.",
]


class BookError(ValueError):
    """A file that is not a valid, publishable book; the message names what is wrong."""


def export(book: dict) -> dict[str, Any]:
    """The book as the editable document of rule B1."""
    doc: dict[str, Any] = {"about": ABOUT, "version": book["version"], "hash": book["hash"].hex(),
                           "effective": civil.iso(book.get("effective_at", 0))}
    for table, cols in COLUMNS.items():
        rows = ([book[table][k] for k in sorted(book[table])] if table != "plans" else list(book["plans"]))
        doc[table] = {"columns": list(cols), "rows": [[list(v) if isinstance(v, tuple) else v for v in r]
                                                      for r in rows]}
    doc.update(trial=list(book["trial"]), license=list(book["license"]), photo=list(book["photo"]))
    return doc


def to_text(doc: dict[str, Any]) -> str:
    """The document as JSON an operator edits: one table row per line."""
    def j(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)
    out = ["{"]
    keys = list(doc)
    for n, k in enumerate(keys):
        v = doc[k]
        if k == "about":
            body = "[\n" + ",\n".join("  " + j(x) for x in v) + "\n ]"
        elif k in COLUMNS:
            body = ("{\"columns\": " + j(v["columns"]) + ", \"rows\": [\n"
                    + ",\n".join("  " + j(r) for r in v["rows"]) + "\n ]}")
        else:
            body = j(v)
        out.append(f" {j(k)}: {body}" + ("," if n < len(keys) - 1 else ""))
    return "\n".join(out + ["}"]) + "\n"


def parse(text: str, version: int) -> dict:
    """The core's book of version `version` from the file's text (B1); BookError otherwise."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise BookError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BookError("the file is a JSON object with the book's tables")
    tables = {}
    for table, cols in COLUMNS.items():
        t = doc.get(table)
        if not isinstance(t, dict) or t.get("columns") != list(cols) or not isinstance(t.get("rows"), list):
            raise BookError(f"{table}: expected {{\"columns\": {list(cols)}, \"rows\": [...]}}")
        for i, r in enumerate(t["rows"]):
            if not isinstance(r, list) or len(r) != len(cols):
                raise BookError(f"{table} row {i + 1}: expected {len(cols)} values ({', '.join(cols)})")
        tables[table] = [tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in t["rows"]]
    for key, n in (("trial", 2), ("license", 3), ("photo", 2)):
        if not isinstance(doc.get(key), list) or len(doc[key]) != n:
            raise BookError(f"{key}: expected an array of {n} integers")
    try:
        return pb.make(version, tables["items"], tables["models"], tables["tiers"], tables["plans"],
                       tuple(doc["trial"]), tuple(doc["license"]), tuple(doc["photo"]))
    except (pb.PriceBookError, TypeError) as e:
        raise BookError(str(e)) from None


def check_ids(old: dict, new: dict) -> None:
    """B3: every item and model id keeps its meaning; BookError naming the first that does not."""
    for iid, row in sorted(old["items"].items()):
        nrow = new["items"].get(iid)
        if nrow is None:
            raise BookError(f"item {iid} ({row[1]}) is missing: item ids travel on the wire and stay")
        if (nrow[1], nrow[3], nrow[4], nrow[5], nrow[6]) != (row[1], row[3], row[4], row[5], row[6]):
            raise BookError(f"item {iid} ({row[1]}): its name, unit, group, component or flags changed; "
                            "only its price and counts may (add a new item id instead)")
    for mid, row in sorted(old["models"].items()):
        nrow = new["models"].get(mid)
        if nrow is None or nrow[1] != row[1]:
            raise BookError(f"model {mid} ({row[3][0]}) is missing or changed component: model ids stay")


def publish(conn: Connection, text: str, effective: int, now: int) -> dict[str, Any]:
    """B2-B6: store the file's book as the next version in force from `effective`."""
    books = ledger.ensure_books(conn, now)
    newest = ledger.latest_book(books)
    floor = max(now, newest.get("effective_at", 0))
    if effective < floor:
        raise BookError(f"--effective {civil.iso(effective)} is before {civil.iso(floor)} (now, or when book "
                        f"v{newest['version']} comes into force): it would re-rate rounds already served")
    book = parse(text, newest["version"] + 1)
    check_ids(newest, book)
    if pb.make(newest["version"], *_rows(book))["hash"] == newest["hash"]:
        raise BookError(f"the file has the same prices and rules as book v{newest['version']}: nothing to publish")
    conn.execute(insert(S.price_books).values(version=book["version"], hash=book["hash"], cbor=pb.to_cbor(book),
                                              created_at=now, effective_at=effective))
    return {"version": book["version"], "hash": book["hash"].hex(), "effective": civil.iso(effective),
            "replaces": newest["version"]}


def _rows(book: dict) -> tuple:
    return ([book["items"][k] for k in sorted(book["items"])], [book["models"][k] for k in sorted(book["models"])],
            [book["tiers"][k] for k in sorted(book["tiers"])], book["plans"], book["trial"], book["license"],
            book["photo"])

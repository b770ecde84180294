"""`edgemeter admin`: accounts, workspaces, licences, savings plans, devices, invoices, checks.

    edgemeter admin SUBCOMMAND --db URL [options]      (EDGEMETER_DB stands in for --db)

`admin migrate` creates the store or upgrades it to the newest schema; every other subcommand
opens an existing store at that schema (refusing a missing or older one, writing nothing:
cloud.db rule 3), does its work in one transaction and prints a readable result, or JSON with
--json. Times default to now;
--at YYYY-MM-DD[THH:MM[:SS]][+HH:MM] (billing calendar UTC+8 when no offset) sets them, for
back-dated entries and tests. Money is given in CNY as a decimal (`--cny 100`, `--cny 0.05`)
and converted exactly to integer µCNY. Ids, counts, amounts and lease terms are bounded before
anything reaches the store (TYPES below; the bounds are cloud.cliargs B1-B5, each flag's --help
shows its range).

Exit status: 0 done; 1 a business refusal (activation window closed, rebuild --check found
differences) or a failed operation (the store missing, unreachable or refusing, a file that
cannot be written); 2 a caller mistake (unknown id, bad argument; the message says which).
Every failure is one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.exc import DataError, DBAPIError

from edgemeter.cloud import (accounts, books, cliargs, db, devices, invoices, keystore, ledger, pools, rabbitmq,
                             rebuild)
from edgemeter.cloud import schema as S
from edgemeter.cloud.cliargs import parse_cny
from firmware_py import billing, civil
from firmware_py import pool as PL


def cny(ucny: int) -> str:
    sign = "-" if ucny < 0 else ""
    u = abs(ucny)
    return f"{sign}{u // 1_000_000}.{u % 1_000_000:06d}".rstrip("0").rstrip(".") if u % 1_000_000 else f"{sign}{u // 1_000_000}"


def cny2(ucny: int) -> str:
    """CNY with two decimals, as a customer reads money (rounded once to the fen)."""
    return accounts.cny2(ucny)


def _when(args: argparse.Namespace) -> int:
    return civil.parse_iso(args.at) if getattr(args, "at", None) else int(time.time())


class Refused(Exception):
    """A business outcome that is not success (exit 1)."""


# ------------------------------------------------------------------------------ subcommands
def cmd_migrate(conn, args, now):
    from alembic.runtime.migration import MigrationContext
    return {"revision": MigrationContext.configure(conn).get_current_revision()}


def cmd_create_account(conn, args, now):
    aid = accounts.create_account(conn, args.name, now)
    if args.trial:
        accounts.claim_trial(conn, _book(conn, now), aid, now)
    return {"account": aid, "name": args.name, "trial": bool(args.trial)}


def cmd_create_workspace(conn, args, now):
    terms = {"grant": args.grant, "max": args.max, "validity": args.validity, "allowance": args.offline_units,
             "low": args.low, "renew_pct": args.renew_pct}
    ws = accounts.create_workspace(conn, args.account, args.name, args.billing, now, policy=args.policy,
                                   **{k: v for k, v in terms.items() if v is not None})
    return {"workspace": ws, "account": args.account, "billing": args.billing}


def _purchase(fn: Callable, *a: Any) -> Any:
    """Run a purchase; a balance that cannot pay it is a business refusal (exit 1)."""
    try:
        return fn(*a)
    except accounts.PurchaseRefused as e:
        raise Refused(str(e)) from None


def _order_of(conn, kind: str, ref: int) -> dict[str, Any]:
    o = conn.execute(select(S.orders).where(S.orders.c.kind == kind, S.orders.c.ref == ref)).mappings().one()
    return {"order": o["id"], "paid_by": o["paid_by"], "paid_cny": cny2(o["price_ucny"])}


def cmd_buy_license(conn, args, now):
    pid = _purchase(pools.buy_license, conn, _book(conn, now), args.workspace, args.tier, args.devices, now, args.pay)
    row = conn.execute(select(S.license_purchases).where(S.license_purchases.c.id == pid)).mappings().one()
    return {"purchase": pid, "workspace": args.workspace, "tier": args.tier, "devices": args.devices,
            "price_cny": cny2(row["price_ucny"]), "addon": bool(row["addon"]),
            "activate_by": civil.iso(row["activate_by"]), **_order_of(conn, "license", pid)}


def cmd_activate(conn, args, now):
    aid, why = pools.activate(conn, _book(conn, now), args.purchase, args.count, now, args.device)
    if why is not None:
        raise Refused(f"purchase {args.purchase}: activation refused: {why}")
    row = conn.execute(select(S.license_activations).where(S.license_activations.c.id == aid)).mappings().one()
    return {"activation": aid, "purchase": args.purchase, "count": args.count, "units": row["units"],
            "period": [civil.iso(row["activated_at"]), civil.iso(row["period_end"])],
            "pool": pools.levels(conn, row["workspace_id"])}


def cmd_claim_trial(conn, args, now):
    try:
        t = accounts.claim_trial(conn, _book(conn, now), args.account, now)
    except accounts.TrialRefused as e:
        raise Refused(f"account {args.account}: {e}") from None
    return {"account": args.account, "trial_cny": cny(t["left"]), "ends": civil.iso(t["end"])}


def cmd_trial_rule(conn, args, now):
    if args.new_days is not None:
        accounts.set_trial_rule(conn, args.new_days)
    days = accounts.trial_rule(conn)
    return {"new_days": days, "rule": "the free trial goes to accounts with no usage and no purchase"
            + (f", claimed within {days} days of their creation" if days else " (no age limit)")}


def cmd_book(conn, args, now):
    if args.action == "export":
        if args.effective:
            raise ValueError("--effective belongs to book publish")
        doc = books.export(ledger.latest_book(ledger.ensure_books(conn, now)))
        text = books.to_text(doc)
        if args.file:
            Path(args.file).write_text(text)
            return {"exported": doc["version"], "hash": doc["hash"], "file": args.file}
        return {"text": text}
    if not args.file or not args.effective:
        raise ValueError("book publish needs FILE and --effective TIME")
    try:
        text = Path(args.file).read_text()
    except OSError as e:
        raise ValueError(f"cannot read {args.file}: {e.strerror}") from None
    effective = now if args.effective == "now" else civil.parse_iso(args.effective)
    return books.publish(conn, text, effective, now)


def cmd_buy_savings_plan(conn, args, now):
    pid = _purchase(accounts.buy_plan, conn, _book(conn, now), args.account, parse_cny(args.cny), now, args.pay)
    p = conn.execute(select(S.savings_plans).where(S.savings_plans.c.id == pid)).mappings().one()
    return {"plan": pid, "account": args.account, "commit_cny": cny2(p["commit_ucny"]), "discount_bp": p["bp"],
            "covers_list_cny": cny(p["cap_ucny"]), "ends": civil.iso(p["ends_at"]),
            **_order_of(conn, "savings-plan", pid)}


def cmd_top_up(conn, args, now):
    amount = parse_cny(args.cny)
    if amount <= 0:
        raise ValueError("a top-up is a positive amount")
    st = accounts.top_up(conn, args.account, amount, now, args.ref or "")
    due = accounts.commands_due(conn, [args.account])
    return {"account": args.account, "balance_cny": cny(st["balance"]), "suspended": st["suspended"],
            "commands_due": [{"device": d, "workspace": w, "op": op} for d, w, op in due]}


def cmd_register_device(conn, args, now):
    r = devices.register(conn, args.workspace, now, args.id)
    out = {"device": r["id"], "workspace": r["workspace"], "username": r["username"], "client_id": r["username"],
           "password": r["password"], "kid": r["kid"], "key": r["key"].hex()}
    if args.mosquitto_dir:
        out["mosquitto"] = devices.write_mosquitto_files(conn, args.mosquitto_dir)
    api = args.rabbitmq_api or os.environ.get("EDGEMETER_RABBITMQ_API")
    if api:   # cloud.rabbitmq R4: inside the transaction, so a refused push keeps no registration
        out["rabbitmq"] = rabbitmq.push_device(api, r["workspace"], r["id"], r["password"])
    return out


def cmd_rotate_key(conn, args, now):
    r = devices.rotate_key(conn, args.device, now)
    return {"device": r["id"], "kid": r["kid"], "key": r["key"].hex(),
            "note": "the rater sends it to the device in a ROTATE command (wrapped under the old key)"}


def cmd_wrap_keys(conn, args, now):
    return devices.wrap_all(conn)


def cmd_sync_mosquitto(conn, args, now):
    return devices.write_mosquitto_files(conn, args.mosquitto_dir)


def cmd_show(conn, args, now):
    out: dict[str, Any] = {"accounts": [], "workspaces": []}
    accs = conn.execute(select(S.accounts).order_by(S.accounts.c.id)).mappings().all()
    for a in accs:
        if args.account and a["id"] != args.account:
            continue
        b = accounts.balances(conn, a["id"])
        b["orders"] = [{**o, "at": civil.iso(o["at"])} for o in b["orders"]]
        out["accounts"].append({"id": a["id"], "name": a["name"], **b})
    q = select(S.workspaces).order_by(S.workspaces.c.id)
    for w in conn.execute(q).mappings().all():
        if (args.account and w["account_id"] != args.account) or (args.workspace and w["id"] != args.workspace):
            continue
        ndev = conn.execute(select(func.count()).select_from(S.devices)
                            .where(S.devices.c.workspace_id == w["id"])).scalar_one()
        item: dict[str, Any] = {"id": w["id"], "account": w["account_id"], "name": w["name"], "billing": w["billing"],
                                "devices": ndev}
        if w["billing"] == "license":
            item["pool"] = pools.levels(conn, w["id"])
            item["leases"] = [dict(r) for r in conn.execute(
                select(S.leases).where(S.leases.c.workspace_id == w["id"]).order_by(S.leases.c.id)).mappings()]
            item["activations"] = [{"id": a["id"], "count": a["count"], "units": a["units"],
                                    "period": [civil.iso(a["activated_at"]), civil.iso(a["period_end"])]}
                                   for a in pools.activations(conn, w["id"])]
        out["workspaces"].append(item)
    return out


def cmd_invoice(conn, args, now):
    inv = invoices.generate(conn, args.account, args.month, now, _book(conn, now))
    if args.csv:
        Path(args.csv).write_text(invoices.to_csv(inv))
        inv["csv"] = args.csv
    return inv


def cmd_rebuild(conn, args, now):
    r = rebuild.run(conn, check=args.check)
    out = {**r, "differences": [dict(zip(("table", "key", "column", "stored", "rebuilt"), d))
                                for d in r["differences"]]}
    if args.check and (r["differences"] or r["violations"]):
        out["refused"] = (f"{len(r['differences'])} projection(s) differ from the entries, "
                          f"{len(r['violations'])} invariant(s) broken")
    return out


def cmd_dead_letters(conn, args, now):
    t = S.dead_letters
    rows = conn.execute(select(t).order_by(t.c.last_seen_ms.desc()).limit(args.limit)).mappings().all()
    by = conn.execute(select(t.c.reason, func.sum(t.c.count)).group_by(t.c.reason).order_by(t.c.reason)).all()
    return {"by_reason": {r: int(n) for r, n in by},
            "recent": [{"id": r["id"], "reason": r["reason"], "topic": r["topic"], "count": r["count"],
                        "detail": r["detail"], "payload_hex": bytes(r["payload"][:64]).hex(),
                        "first_seen_ms": r["first_seen_ms"], "last_seen_ms": r["last_seen_ms"]} for r in rows]}


def cmd_housekeeping(conn, args, now):
    book = _book(conn, now)
    hk = pools.housekeeping(conn, book, now)
    return {"expired": [{"workspace": w, "activation": a, "units": u} for w, a, u in hk["expired"]],
            "reclaimed": [{"workspace": w, "lease": lid} for w, lid in hk["reclaimed"]]}


def cmd_create_token(conn, args, now):
    from edgemeter.cloud import tokens   # HTTP API tokens (owner: the API/dashboard)
    return tokens.create(conn, args.role, args.account, args.name or "", now)


def cmd_revoke_token(conn, args, now):
    from edgemeter.cloud import tokens
    return tokens.revoke(conn, args.id, now)


def _book(conn, now):
    return ledger.book_in_force(ledger.ensure_books(conn, now), now)


# ------------------------------------------------------------------------------ printing
def _text(name: str, out: dict[str, Any]) -> str:
    if name == "book" and "text" in out:
        return out["text"].rstrip("\n")
    if name == "invoice":
        return invoices.to_text(out) + (f"\nCSV written to {out['csv']}" if out.get("csv") else "")
    if name == "show":
        lines = []
        for a in out["accounts"]:
            t = a["trial"]
            lines.append(f"account {a['id']} {a['name']}: balance {cny(a['balance_ucny'])} CNY"
                         f"{' SUSPENDED' if a['suspended'] else ''}; paid {cny2(a['paid_ucny'])}, "
                         f"purchases {cny2(a['purchases_ucny'])}, pay-as-you-go {cny(a['payg_ucny'])}"
                         + (f"; trial left {cny(t['left_ucny'])} until {civil.iso(t['ends_at'])}" if t else ""))
            for o in a["orders"]:
                lines.append(f"  order {o['id']}: {o['kind']} {o['ref']} {o['price_cny']} CNY paid {o['paid_by']}"
                             f" at {o['at']}")
            for p in a["plans"]:
                lines.append(f"  savings plan {p['id']}: x{p['bp'] / 10000:.2f}, covers {cny(p['cap_ucny'])} CNY list,"
                             f" used {cny(p['used_ucny'])}, ends {civil.iso(p['ends_at'])}"
                             + (" (forfeited)" if p["closed"] else ""))
        for w in out["workspaces"]:
            lines.append(f"workspace {w['id']} {w['name']} (account {w['account']}, {w['billing']}): "
                         f"{w['devices']} device(s)")
            if "pool" in w:
                p = w["pool"]
                lines.append("  pool: " + ", ".join(f"{b} {p[b]}" for b in S.POOL_BUCKETS) + " (units = µCNY)")
                for a in w["activations"]:
                    lines.append(f"  activation {a['id']}: {a['count']} licence(s), {a['units']} units, "
                                 f"{a['period'][0]} .. {a['period'][1]}")
                for ls in w["leases"]:
                    st = {PL.LIVE: "live", PL.RECLAIMED: "reclaimed", PL.CLOSED: "closed"}.get(ls["state"], "?")
                    lines.append(f"  lease {ls['id']} device {ls['device_id']} {st}: total {ls['total']}, "
                                 f"offline {ls['allow']}, used {ls['used']}, booked {ls['booked']}")
        return "\n".join(lines) or "(empty store)"
    if name == "rebuild":
        head = (f"rebuilt {out['pools']} pool(s), {out['leases']} lease(s), {out['accounts']} account(s), "
                f"{out['devices']} device(s) from the entries ({out['rounds']} rounds) in {out['seconds']:.3f} s")
        broken = [f"  invariant: {v}" for v in out["violations"]] or ["every invariant holds"]
        if not out["differences"]:
            return "\n".join([head, "every projection equals its entries"] + broken)
        body = [f"  {d['table']} {d['key']} {d['column']}: stored {d['stored']} rebuilt {d['rebuilt']}"
                for d in out["differences"]]
        tail = "written: projections replaced by the rebuilt values" if out["written"] else "nothing written (--check)"
        return "\n".join([head, f"{len(body)} difference(s):"] + body + broken + [tail])
    if name == "dead-letters":
        lines = ["dead letters by reason: " + (", ".join(f"{r} {n}" for r, n in out["by_reason"].items()) or "none")]
        for r in out["recent"]:
            lines.append(f"  #{r['id']} {r['reason']} x{r['count']} on {r['topic']}: {r['detail']}")
        return "\n".join(lines)
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in out.items())


# ------------------------------------------------------------------------------ parser
# Every flag of every subcommand named here is checked by its type before the store is opened.
TYPES = {"db": cliargs.db_url, "at": cliargs.iso_time, "cny": cliargs.cny_text,
         "account": cliargs.ident, "workspace": cliargs.ident, "device": cliargs.ident, "purchase": cliargs.ident,
         "id": cliargs.ident, "devices": cliargs.licences, "count": cliargs.licences,
         "grant": cliargs.units, "max": cliargs.units, "offline_units": cliargs.units, "low": cliargs.units,
         "validity": cliargs.int_in(1, cliargs.MAX_VALIDITY_S, "a validity in seconds"),
         "renew_pct": cliargs.int_in(0, 100, "a percentage"), "limit": cliargs.int_in(1, 10_000, "a row count"),
         "csv": cliargs.out_file, "name": cliargs.text_in(1, 200, "a name"),
         "ref": cliargs.text_in(0, 128, "a payment reference")}


def _pay_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pay", choices=(billing.PAY_UPFRONT, billing.PAY_BALANCE), default=billing.PAY_UPFRONT,
                   help="an upfront charge (default) or from the account's balance, which a purchase may not "
                        "take below zero")


def _device_and_token_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The admin subcommands of devices, keys, the broker's files and API tokens."""
    p = add("register-device", cmd_register_device, "register a device: MQTT credentials and HMAC key")
    p.add_argument("--workspace", type=int, required=True)
    p.add_argument("--id", type=int, help="the device id (default: the next free one)")
    p.add_argument("--mosquitto-dir", help="rewrite passwd and acl in this directory (SIGHUP the broker)")
    p.add_argument("--rabbitmq-api", help="a clustered broker's management API, http://admin:PASSWORD@HOST:15672: "
                                          "create the device's user and permissions there (default: "
                                          "$EDGEMETER_RABBITMQ_API)")
    p = add("rotate-key", cmd_rotate_key, "issue a new HMAC key for a device (the rater delivers it)")
    p.add_argument("--device", type=int, required=True)
    add("wrap-keys", cmd_wrap_keys, "wrap device keys under the current KEK (EDGEMETER_KEK_FILE; "
        "cloud/keystore.py): clear ones and those under an older KEK", at=False)
    p = add("sync-mosquitto", cmd_sync_mosquitto, "rewrite the broker's passwd and acl from the registry", at=False)
    p.add_argument("--mosquitto-dir", required=True)
    p = add("create-token", cmd_create_token, "create an HTTP API token (printed once; only its hash is kept)")
    p.add_argument("--role", choices=("operator", "tenant"), required=True)
    p.add_argument("--account", type=int, help="the one account a tenant token sees")
    p.add_argument("--name", type=cliargs.text_in(0, 64, "a note"),
                   help="a note: who or what uses the token (at most 64 characters)")
    p = add("revoke-token", cmd_revoke_token, "revoke an HTTP API token by id")
    p.add_argument("--id", type=int, required=True)


def _parser() -> argparse.ArgumentParser:
    ap = cliargs.Parser(prog="edgemeter admin", description=__doc__.split("\n")[0], types=TYPES)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")

    def add(name: str, fn: Callable, help_: str, at: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--db", default=db.default_url(), required=db.default_url() is None, help="database URL")
        p.add_argument("--json", action="store_true", help="print JSON")
        if at:
            p.add_argument("--at", help="the time of the operation (ISO 8601; default now)")
        p.set_defaults(fn=fn)
        return p

    add("migrate", cmd_migrate, "create or upgrade the store's schema (Alembic)", at=False)
    p = add("create-account", cmd_create_account, "create an account (tenant)")
    p.add_argument("--name", required=True)
    p.add_argument("--trial", action="store_true", help="claim the one-time CNY 10 postpaid trial")
    p = add("create-workspace", cmd_create_workspace, "create a workspace of an account")
    p.add_argument("--account", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--billing", choices=("license", "postpaid"), required=True)
    p.add_argument("--policy", choices=("stop", "continue", "degrade"), help="offline policy of its leases")
    for flag, what in (("--grant", "units per grant"), ("--max", "max units per grant"),
                       ("--validity", "lease validity, seconds"), ("--offline-units", "offline allowance per lease"),
                       ("--low", "free units below which grants carry the final-unit flag"),
                       ("--renew-pct", "renew when this %% of a grant is left")):
        p.add_argument(flag, type=int, help=what)
    p = add("buy-license", cmd_buy_license, "buy licences (>= 100 devices) for a License workspace")
    p.add_argument("--workspace", type=int, required=True)
    p.add_argument("--tier", choices=("trial", "basic", "standard"), required=True)
    p.add_argument("--devices", type=int, required=True)
    _pay_flag(p)
    p = add("activate", cmd_activate, "activate licences of a purchase (units enter the pool)")
    p.add_argument("--purchase", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--device", type=int, help="the device the licence is bound to")
    p = add("claim-trial", cmd_claim_trial, "claim the one-time postpaid trial of a new account (see trial-rule)")
    p.add_argument("--account", type=int, required=True)
    p = add("book", cmd_book, "export the price book as an editable file, or publish a new version")
    p.add_argument("action", choices=("export", "publish"))
    p.add_argument("file", nargs="?", help="export: write here (default stdout); publish: the book to publish")
    p.add_argument("--effective", help="publish: when the book comes into force (ISO 8601 or 'now'; not in the past)")
    p = add("trial-rule", cmd_trial_rule, "show or set who is a new user for the free trial", at=False)
    p.add_argument("--new-days", type=int, help="days after its creation an account may claim the trial (0: no limit)")
    p = add("buy-savings-plan", cmd_buy_savings_plan, "buy a savings plan (commitment in CNY)")
    p.add_argument("--account", type=int, required=True)
    p.add_argument("--cny", required=True)
    _pay_flag(p)
    p = add("top-up", cmd_top_up, "add to an account's pay-as-you-go balance")
    p.add_argument("--account", type=int, required=True)
    p.add_argument("--cny", required=True)
    p.add_argument("--ref", help="payment reference")
    p = add("show", cmd_show, "balances, pools, activations and leases", at=False)
    p.add_argument("--account", type=int)
    p.add_argument("--workspace", type=int)
    p = add("invoice", cmd_invoice, "the monthly invoice of an account")
    p.add_argument("--account", type=int, required=True)
    p.add_argument("--month", required=True, help="YYYY-MM (billing calendar, UTC+8)")
    p.add_argument("--csv", help="also write the lines to this CSV file")
    p = add("rebuild", cmd_rebuild, "recompute projections from the entries", at=False)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    p = add("dead-letters", cmd_dead_letters, "rejected messages by reason, most recent first", at=False)
    p.add_argument("--limit", type=int, default=20)
    add("housekeeping", cmd_housekeeping, "expire ended activations and reclaim silent leases now")
    _device_and_token_commands(add)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except (Refused, rabbitmq.RabbitMQError) as e:
        print(f"edgemeter admin {args.cmd}: {e}", file=sys.stderr)
        return 1
    except DataError as e:     # a value the store's column refuses: a caller mistake
        print(f"edgemeter admin {args.cmd}: the store refused a value: {db.reason(e)}", file=sys.stderr)
        return 2
    except DBAPIError as e:
        print(f"edgemeter admin {args.cmd}: the store at {db.redact(args.db)} failed: {db.reason(e)}", file=sys.stderr)
        return 1
    except (ValueError, billing.BillingError, db.StoreError, keystore.KeyStoreError, OSError) as e:   # StoreURLError is a ValueError
        return cliargs.fail(f"admin {args.cmd}", e)


def _run(args: argparse.Namespace) -> int:
    """One subcommand in one transaction; only `migrate` may create the store (cloud.db rule 3)."""
    now = _when(args) if hasattr(args, "at") else int(time.time())
    engine = db.open_store(args.db, create=args.cmd == "migrate")
    warning = db.open_directory(args.db) if args.cmd == "migrate" else None
    if warning:
        print(f"edgemeter admin migrate: warning: {warning}", file=sys.stderr)
    try:
        with db.write_connect(engine) as conn:
            with conn.begin():
                out = args.fn(conn, args, now)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True, default=str))
    else:
        print(_text(args.cmd, out))
    return 1 if out.get("refused") else 0

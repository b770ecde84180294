"""The audit: the simulator's ground truth against the ledger, per device and in total, to the
µCNY; the rater's own checks (re-rating mismatches, dead letters); pool, lease and account
balances against the bookings; and cloud.rebuild's check that every projection equals what
its immutable entries replay to.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from edgemeter.cloud import db, pools, rebuild
from edgemeter.cloud import schema as S


def ledger_by_device(conn, workspaces: list[int]) -> dict[int, dict[str, int]]:
    b = S.usage_batches
    rows = conn.execute(select(b.c.device_id, func.count(), func.count(func.distinct(b.c.seq)),
                               func.sum(b.c.rounds), func.sum(b.c.rated_ucny), func.sum(b.c.device_ucny))
                        .where(b.c.workspace_id.in_(workspaces)).group_by(b.c.device_id)).all()
    return {int(d): {"batches": int(n), "distinct": int(nd), "rounds": int(r or 0), "ucny": int(u or 0),
                     "device_ucny": int(du or 0)} for d, n, nd, r, u, du in rows}


def run(url: str, truth: dict[int, dict[str, int]], ids: dict[str, Any]) -> dict[str, Any]:
    """truth: {dev: {"rounds", "ucny"}} served by the simulated devices. Returns the report's
    "audit" section; report["ok"] is False on any difference."""
    engine = db.make_engine(url)
    problems: list[str] = []
    with engine.connect() as conn:
        led = ledger_by_device(conn, [ids["license_ws"], ids["postpaid_ws"]])   # this run's devices
        per_dev: list[dict[str, Any]] = []
        for dev in sorted(set(truth) | set(led)):
            t = truth.get(dev, {"rounds": 0, "ucny": 0})
            g = led.get(dev, {"batches": 0, "distinct": 0, "rounds": 0, "ucny": 0, "device_ucny": 0})
            if (t["rounds"], t["ucny"]) != (g["rounds"], g["ucny"]) or g["ucny"] != g["device_ucny"] \
                    or g["batches"] != g["distinct"]:
                per_dev.append({"device": dev, "served": t, "ledger": g})
        for d in per_dev[:20]:
            problems.append("device %d: served %d rounds / %d uCNY, ledger %d rounds / %d uCNY (device %d)"
                            % (d["device"], d["served"]["rounds"], d["served"]["ucny"], d["ledger"]["rounds"],
                               d["ledger"]["ucny"], d["ledger"]["device_ucny"]))
        served_r = sum(t["rounds"] for t in truth.values())
        served_u = sum(t["ucny"] for t in truth.values())
        led_r = sum(g["rounds"] for g in led.values())
        led_u = sum(g["ucny"] for g in led.values())
        lost = sum(max(0, truth.get(d, {}).get("rounds", 0) - led.get(d, {}).get("rounds", 0)) for d in truth)
        dup = sum(max(0, g["rounds"] - truth.get(d, {}).get("rounds", 0)) for d, g in led.items())
        mism = int(conn.execute(select(func.count()).select_from(S.mismatches)
                                .where(S.mismatches.c.device_id.in_(list(truth)))).scalar_one())
        if mism:
            problems.append(f"{mism} rating mismatch(es)")
        dead = {r: int(n) for r, n in conn.execute(select(S.dead_letters.c.reason, func.sum(S.dead_letters.c.count))
                                                   .group_by(S.dead_letters.c.reason))}
        lic, pp = ids["license_ws"], ids["postpaid_ws"]
        license_part = _license(conn, lic, problems)
        postpaid_part = _postpaid(conn, pp, ids["account"], problems)
    with db.write_connect(engine) as conn, conn.begin():
        rb = rebuild.run(conn, check=True)
    engine.dispose()
    if rb["differences"]:
        problems.append(f"rebuild --check: {len(rb['differences'])} projection(s) differ: {rb['differences'][:5]}")
    if (served_r, served_u) != (led_r, led_u):
        problems.append(f"total: served {served_r} rounds / {served_u} uCNY, ledger {led_r} / {led_u}")
    return {
        "ok": not problems and not per_dev,
        "problems": problems,
        "devices": len(truth),
        "devices_differing": len(per_dev),
        "served": {"rounds": served_r, "ucny": served_u},
        "ledger": {"rounds": led_r, "ucny": led_u, "batches": sum(g["batches"] for g in led.values())},
        "lost_rounds": lost,
        "duplicated_rounds": dup,
        "mismatches": mism,
        "dead_letters": dead,
        "license": license_part,
        "postpaid": postpaid_part,
        "rebuild": {"differences": len(rb["differences"]), "seconds": round(rb["seconds"], 3),
                    "rounds": rb["rounds"]},
    }


def _license(conn: Any, lic: int, problems: list[str]) -> dict[str, Any]:
    """The License workspace: its pool and leases against its bookings (problems appended)."""
    b = S.usage_batches
    lic_u = int(conn.execute(select(func.coalesce(func.sum(b.c.rated_ucny), 0))
                             .where(b.c.workspace_id == lic)).scalar_one())
    lic_leased_u = int(conn.execute(select(func.coalesce(func.sum(b.c.rated_ucny), 0))
                                    .where(b.c.workspace_id == lic, b.c.lease_id != 0)).scalar_one())
    lease_booked = int(conn.execute(select(func.coalesce(func.sum(S.leases.c.booked), 0))
                                    .where(S.leases.c.workspace_id == lic)).scalar_one())
    levels = pools.levels(conn, lic)
    if lease_booked != lic_leased_u:
        problems.append(f"leases booked {lease_booked} != License batches on leases {lic_leased_u}")
    conserved = levels["added"] + levels["overdraft"] == (levels["free"] + levels["out"] + levels["unrec"]
                                                          + levels["consumed"])
    if not conserved:
        problems.append(f"pool buckets do not add up: {levels}")
    live = conn.execute(select(func.count()).select_from(S.leases)
                        .where(S.leases.c.workspace_id == lic, S.leases.c.state == 0)).scalar_one()
    return {"workspace": lic, "booked_ucny": lic_u, "on_leases_ucny": lic_leased_u,
            "leases_booked": lease_booked, "pool": levels, "pool_conserved": conserved,
            "live_leases": int(live)}


def _postpaid(conn: Any, pp: int, account: int, problems: list[str]) -> dict[str, Any]:
    """The postpaid workspace: every booked µCNY charged once (trial, savings plan or
    pay-as-you-go; problems appended)."""
    b, e = S.usage_batches, S.account_entries
    pp_u = int(conn.execute(select(func.coalesce(func.sum(b.c.rated_ucny), 0))
                            .where(b.c.workspace_id == pp)).scalar_one())
    charged = int(conn.execute(select(func.coalesce(func.sum(e.c.list_ucny), 0))
                               .where(e.c.account_id == account,
                                      e.c.kind.in_(("trial", "plan", "payg")))).scalar_one())
    if charged != pp_u:
        problems.append(f"postpaid charges {charged} != postpaid bookings {pp_u}")
    by_kind = {k: int(v) for k, v in conn.execute(select(e.c.kind, func.sum(e.c.list_ucny))
                                                  .where(e.c.account_id == account).group_by(e.c.kind))}
    return {"workspace": pp, "booked_ucny": pp_u, "charged_list_ucny": charged, "entries": by_kind}

"""Pools, licences, leases, postpaid accounts and invoices over a real store (SQLite file and a
fresh PostgreSQL database), with the core's rules deciding."""
from __future__ import annotations

import pytest
from sqlalchemy import insert, select

from edgemeter.cloud import accounts, db, invoices, ledger, pools
from edgemeter.cloud import schema as S
from firmware_py import billing, civil
from firmware_py import pool as PL
from firmware_py import pricebook

BOOK = pricebook.default()
T0 = civil.to_unix(2026, 7, 1)          # 2026-07-01 00:00 UTC+8
BASIC = BOOK["tiers"][pricebook.tier_id(BOOK, "basic")][3]   # allowance per licence-year


@pytest.fixture
def engine(store_url):
    e = db.open_store(store_url, create=True)
    yield e
    e.dispose()


def tx(engine):
    return db.write_connect(engine)


def _license_ws(conn, **terms):
    acc = accounts.create_account(conn, "acme", T0)
    ws = accounts.create_workspace(conn, acc, "fleet", "license", T0, **terms)
    return acc, ws


def _conserved(conn, ws):
    p = pools.levels(conn, ws)
    return p["added"] + p["overdraft"] == p["free"] + p["out"] + p["unrec"] + p["consumed"]


def test_license_purchase_rules_and_add_ons(engine):
    with tx(engine) as conn, conn.begin():
        acc, ws = _license_ws(conn)
        with pytest.raises(billing.BillingError) as e:
            pools.buy_license(conn, BOOK, ws, "basic", 99, T0)
        assert e.value.rule == "min-devices"
        first = pools.buy_license(conn, BOOK, ws, "basic", 100, T0)
        second = pools.buy_license(conn, BOOK, ws, "standard", 150, T0 + 86400)
        rows = conn.execute(select(S.license_purchases).order_by(S.license_purchases.c.id)).mappings().all()
        assert [(r["id"], r["addon"], r["price_ucny"]) for r in rows] == [
            (first, False, 100 * 5_000_000), (second, True, 150 * 10_000_000)]
        post = accounts.create_workspace(conn, acc, "pp", "postpaid", T0)
        with pytest.raises(pools.PoolError):
            pools.buy_license(conn, BOOK, post, "basic", 100, T0)


def test_activation_window_usage_period_and_pool_grant(engine):
    with tx(engine) as conn, conn.begin():
        _, ws = _license_ws(conn)
        p = pools.buy_license(conn, BOOK, ws, "basic", 100, T0)
        a1, why = pools.activate(conn, BOOK, p, 40, civil.to_unix(2026, 10, 1))
        assert why is None
        row = conn.execute(select(S.license_activations).where(S.license_activations.c.id == a1)).mappings().one()
        assert row["period_end"] == civil.to_unix(2027, 10, 1)     # billing.txt's example
        assert row["units"] == 40 * BASIC
        assert pools.levels(conn, ws)["free"] == 40 * BASIC
        with pytest.raises(billing.BillingError):
            pools.activate(conn, BOOK, p, 61, civil.to_unix(2026, 11, 1))
        # the window is [bought, bought + 12 months): closed on 2027-07-01
        aid, why = pools.activate(conn, BOOK, p, 10, civil.to_unix(2027, 7, 1))
        assert (aid, why) == (None, "window-closed")
        aid, why = pools.activate(conn, BOOK, p, 60, civil.to_unix(2027, 7, 1) - 1)
        assert why is None and pools.levels(conn, ws)["added"] == 100 * BASIC
        assert _conserved(conn, ws)


def test_leases_grant_report_return_reclaim(engine):
    with tx(engine) as conn, conn.begin():
        _, ws = _license_ws(conn, grant=1_000_000, max=2_000_000, validity=3600, allowance=50_000)
        p = pools.buy_license(conn, BOOK, ws, "basic", 100, T0)
        pools.activate(conn, BOOK, p, 100, T0)
        conn.execute(insert(S.devices), [dict(id=d, workspace_id=ws, username=f"{ws}/{d}", password_hash="x", kid=1,
                                              created_at=T0) for d in (11, 12)])
        g1 = pools.lease_open(conn, BOOK, ws, 11, 0, T0)
        assert (g1["total"], g1["allowance"], g1["final"]) == (1_000_000, 50_000, 0)
        lv = pools.levels(conn, ws)
        assert lv["out"] == 1_050_000 and lv["free"] == 100 * BASIC - 1_050_000
        # booked batches are reports of use; a renewal adds to the same lease (P3)
        assert pools.report_booked(conn, ws, [(g1["lease"], 11, 300_000, 1), (g1["lease"], 11, 5450, 2)], T0 + 10) == {}
        assert pools.levels(conn, ws)["consumed"] == 305_450
        g1b = pools.lease_renew(conn, BOOK, ws, 11, g1["lease"], 305_450, 0, T0 + 20)
        assert g1b["lease"] == g1["lease"] and g1b["total"] == 2_000_000
        # a batch on another device's lease is not this device's use
        assert pools.report_booked(conn, ws, [(g1["lease"], 12, 10, 3), (999, 12, 10, 4)], T0 + 30) == {
            3: "foreign-lease", 4: "unknown-lease"}
        with pytest.raises(pools.PoolError):
            pools.lease_close(conn, ws, 12, g1["lease"], 0, T0)
        # return: the unused rest goes back to free
        pools.lease_close(conn, ws, 11, g1["lease"], 400_000, T0 + 40)
        lv = pools.levels(conn, ws)
        assert (lv["out"], lv["consumed"], lv["free"]) == (0, 400_000, 100 * BASIC - 400_000)
        # a silent lease is reclaimed after twice its validity into unrec, not free
        g2 = pools.lease_open(conn, BOOK, ws, 12, 500_000, T0 + 100)
        assert pools.reclaim_due(conn, ws, T0 + 100 + 2 * 3600 - 1) == []
        assert pools.reclaim_due(conn, ws, T0 + 100 + 2 * 3600) == [g2["lease"]]
        lv = pools.levels(conn, ws)
        assert lv["unrec"] == 550_000 and lv["out"] == 0
        assert conn.execute(select(S.leases.c.state).where(S.leases.c.id == g2["lease"])).scalar() == PL.RECLAIMED
        # the device comes back and reports: the lease revives and its use is consumed
        pools.report_booked(conn, ws, [(g2["lease"], 12, 100_000, 5)], T0 + 9000)
        lv = pools.levels(conn, ws)
        assert lv["unrec"] == 0 and lv["out"] == 450_000 and lv["consumed"] == 500_000
        assert _conserved(conn, ws)


def test_pool_is_never_overspent(engine):
    with tx(engine) as conn, conn.begin():
        _, ws = _license_ws(conn, grant=10**12, max=10**12, allowance=0, policy="stop")
        p = pools.buy_license(conn, BOOK, ws, "trial", 100, T0)
        pools.activate(conn, BOOK, p, 100, T0)
        conn.execute(insert(S.devices), [dict(id=d, workspace_id=ws, username=f"{ws}/{d}", password_hash="x", kid=1,
                                              created_at=T0) for d in (21, 22)])
        g = pools.lease_open(conn, BOOK, ws, 21, 0, T0)
        assert g["total"] == 100 * 2_000_000 and g["final"] == 1
        g2 = pools.lease_open(conn, BOOK, ws, 22, 0, T0)
        assert g2["total"] == 0 and g2["final"] == 1
        # use beyond the grant is overdraft, counted, never taken from nowhere
        pools.report_booked(conn, ws, [(g["lease"], 21, 100 * 2_000_000 + 7, 1)], T0 + 1)
        lv = pools.levels(conn, ws)
        assert lv["overdraft"] == 7 and lv["free"] == 0 and _conserved(conn, ws)


def test_expiry_withdraws_what_the_ending_activation_still_holds(engine):
    with tx(engine) as conn, conn.begin():
        _, ws = _license_ws(conn, grant=10**12, max=10**12, allowance=0)
        p = pools.buy_license(conn, BOOK, ws, "basic", 200, T0)
        a1, _ = pools.activate(conn, BOOK, p, 100, T0)
        a2, _ = pools.activate(conn, BOOK, p, 100, civil.add_months(T0, 3))
        conn.execute(insert(S.devices).values(id=31, workspace_id=ws, username=f"{ws}/31", password_hash="x", kid=1,
                                              created_at=T0))
        g = pools.lease_open(conn, BOOK, ws, 31, 200 * BASIC // 10, T0 + 5)   # 100M drawn
        pools.lease_close(conn, ws, 31, g["lease"], 200 * BASIC // 10, T0 + 6)
        end1 = civil.add_months(T0, 12)
        assert pools.expire_due(conn, BOOK, ws, end1 - 1) == []
        # drawn earliest end first: a1 gave the 100M, so it still holds 400M, which expire
        assert pools.expire_due(conn, BOOK, ws, end1) == [(a1, 100 * BASIC - 200 * BASIC // 10)]
        assert pools.expire_due(conn, BOOK, ws, end1 + 1) == []
        lv = pools.levels(conn, ws)
        assert lv["free"] == 100 * BASIC and lv["added"] == 100 * BASIC + 200 * BASIC // 10
        assert pools.expire_due(conn, BOOK, ws, civil.add_months(T0, 15)) == [(a2, 100 * BASIC)]
        assert pools.levels(conn, ws)["free"] == 0 and _conserved(conn, ws)


def _postpaid(conn):
    acc = accounts.create_account(conn, "shop", T0)
    ws = accounts.create_workspace(conn, acc, "stores", "postpaid", T0)
    conn.execute(insert(S.devices), [dict(id=d, workspace_id=ws, username=f"{ws}/{d}", password_hash="x", kid=1,
                                          created_at=T0) for d in (41, 42)])
    return acc, ws


def test_postpaid_trial_then_payg_suspends_and_top_up_resumes(engine):
    with tx(engine) as conn, conn.begin():
        acc, ws = _postpaid(conn)
        with pytest.raises(accounts.AccountError):
            accounts.create_account(conn, "shop", T0)
        accounts.claim_trial(conn, BOOK, acc, T0)
        with pytest.raises(accounts.TrialRefused) as refused:
            accounts.claim_trial(conn, BOOK, acc, T0)
        assert refused.value.reason == "trial-claimed"
        accounts.charge(conn, [(acc, 1, 6_000_000), (acc, 2, 6_000_000)], T0 + 60)
        kinds = conn.execute(select(S.account_entries.c.batch_id, S.account_entries.c.kind, S.account_entries.c.list_ucny)
                             .order_by(S.account_entries.c.id)).all()
        assert [tuple(k) for k in kinds] == [(1, "trial", 6_000_000), (2, "trial", 4_000_000), (2, "payg", 2_000_000)]
        bal = accounts.balances(conn, acc)
        assert (bal["balance_ucny"], bal["suspended"], bal["trial"]["left_ucny"]) == (-2_000_000, True, 0)
        assert accounts.commands_due(conn) == [(41, ws, "suspend"), (42, ws, "suspend")]
        accounts.mark_commanded(conn, accounts.commands_due(conn))
        assert accounts.commands_due(conn) == []
        accounts.top_up(conn, acc, 1_000_000, T0 + 70)
        assert accounts.commands_due(conn) == []          # still below zero
        accounts.top_up(conn, acc, 1_000_000, T0 + 80)
        assert accounts.commands_due(conn) == [(41, ws, "resume"), (42, ws, "resume")]


def test_savings_plan_offsets_at_its_discount_and_forfeits_at_its_end(engine):
    with tx(engine) as conn, conn.begin():
        acc, _ = _postpaid(conn)
        with pytest.raises(billing.BillingError) as e:
            accounts.buy_plan(conn, BOOK, acc, 10_000_000, T0)
        assert e.value.rule == "plan-table"
        pid = accounts.buy_plan(conn, BOOK, acc, 100_000_000, T0)     # 100 CNY -> 0.90, one year
        plan = conn.execute(select(S.savings_plans)).mappings().one()
        assert (plan["bp"], plan["cap_ucny"], plan["ends_at"]) == (9000, 111_111_111, civil.to_unix(2027, 7, 1))
        accounts.top_up(conn, acc, 50_000_000, T0)
        accounts.charge(conn, [(acc, 1, 111_000_000), (acc, 2, 1_000_000)], T0 + 10)
        charges = conn.execute(select(S.account_entries.c.kind, S.account_entries.c.ref, S.account_entries.c.list_ucny,
                                      S.account_entries.c.bp).order_by(S.account_entries.c.id)).all()
        assert [tuple(c) for c in charges] == [("plan", pid, 111_000_000, 9000), ("plan", pid, 111_111, 9000),
                                               ("payg", 0, 888_889, 10000)]
        assert accounts.balances(conn, acc)["balance_ucny"] == 50_000_000 - 888_889
        # a second plan's rest is forfeited when it ends
        pid2 = accounts.buy_plan(conn, BOOK, acc, 20_000_000, T0 + 20)   # 20 CNY -> 0.95, 3 months
        accounts.settle(conn, acc, civil.add_months(T0 + 20, 3))
        f = conn.execute(select(S.account_entries.c.kind, S.account_entries.c.ref)
                         .where(S.account_entries.c.kind == "forfeit-plan")).all()
        assert [tuple(x) for x in f] == [("forfeit-plan", pid2)]
        accounts.settle(conn, acc, civil.add_months(T0 + 20, 4))     # forfeited once only
        assert len(conn.execute(select(S.account_entries).where(S.account_entries.c.kind == "forfeit-plan")).all()) == 1
        assert [p["id"] for p in accounts.state(conn, acc)["plans"]] == [pid]   # the year-long one lives on


def _book_batch(conn, acc, ws, dev, seq, lines, now):
    """What the rater does for one postpaid batch: book it, its lines, and charge the account."""
    total = sum(u for _, _, _, u in lines)
    ids = ledger.insert_batches(conn, [dict(device_id=dev, seq=seq, boot=1, book_version=1, lease_id=0, t0=now,
                                            rounds=1, device_ucny=total, rated_ucny=total, mismatch=False,
                                            payload=b"", workspace_id=ws, account_id=acc, received_ms=now * 1000,
                                            booked_ms=now * 1000)])
    bid = ids[(dev, seq)]
    ledger.insert_rows(conn, S.usage_lines, [dict(batch_id=bid, item=i, multiplier=m, calls=c, ucny=u)
                                              for i, m, c, u in lines])
    accounts.charge(conn, [(acc, bid, total)], now)
    return bid


STD_CHAT_1000 = [(2, 1, 1000, 750_000), (4, 1, 1000, 1_700_000), (5, 1, 1000, 800_000), (6, 1, 1000, 2_200_000)]


def test_invoice_lines_attribute_trial_and_payg_per_item_and_round_once(engine):
    with tx(engine) as conn, conn.begin():
        acc, ws = _postpaid(conn)
        accounts.claim_trial(conn, BOOK, acc, T0)
        _book_batch(conn, acc, ws, 41, 1, STD_CHAT_1000, T0 + 100)
        _book_batch(conn, acc, ws, 41, 2, STD_CHAT_1000, T0 + 200)
        _book_batch(conn, acc, ws, 42, 1, [(6, 4, 1, 8800)], civil.to_unix(2026, 8, 1))   # next month
        inv = invoices.generate(conn, acc, "2026-07", T0 + 300)
        by = {ln["name"]: ln for ln in inv["lines"]}
        assert list(by) == ["asr-standard", "tts-standard", "intent", "chat"]
        assert (by["asr-standard"]["calls"], by["asr-standard"]["list_fen"], by["asr-standard"]["trial_fen"],
                by["asr-standard"]["due_fen"]) == (2000, 150, 150, 0)
        # the second batch's 4.55 CNY of trial left covers its lines in item order; chat takes the rest
        assert (by["chat"]["list_fen"], by["chat"]["trial_fen"], by["chat"]["due_fen"]) == (440, 350, 90)
        assert (inv["list_fen"], inv["trial_fen"], inv["due_fen"]) == (1090, 1000, 90)
        assert [(x["kind"], x["amount_fen"]) for x in inv["by_kind"]] == [("payg", 90), ("trial", 1000)]
        aug = invoices.compute(conn, acc, "2026-08")
        assert [(x["name"], x["multiplier"], x["calls"], x["due_fen"]) for x in aug["lines"]] == [("chat", 4, 1, 1)]
        csv_text = invoices.to_csv(inv)
        assert csv_text.splitlines()[0].startswith("item,name,multiplier,book_version,unit_ucny,calls")
        assert csv_text.splitlines()[-1].endswith(",10.90,0.00,10.00,0.00,0.90,10900000,0,10000000,0,900000")
        again = invoices.generate(conn, acc, "2026-07", T0 + 400)       # regenerated whole
        assert conn.execute(select(S.invoices)).all().__len__() == 1 and again["due_fen"] == 90


def test_invoice_plan_lines_round_each_amount_once(engine):
    with tx(engine) as conn, conn.begin():
        acc, ws = _postpaid(conn)
        accounts.buy_plan(conn, BOOK, acc, 100_000_000, T0)
        for seq in range(1, 4):   # three 5450 µCNY rounds: 16350 list, plan pays 14715, discount 1635
            _book_batch(conn, acc, ws, 41, seq, [(2, 1, 1, 750), (4, 1, 1, 1700), (5, 1, 1, 800), (6, 1, 1, 2200)],
                        T0 + seq)
        inv = invoices.compute(conn, acc, "2026-07")
        chat = [x for x in inv["lines"] if x["name"] == "chat"][0]
        # The list total, 16350 µCNY, is rounded once: 2 fen. The plan paid 14715 (1.47 fen), which
        # its month may show as 1 fen at most (its spending to date rounded once, invoices I7); the
        # discount is 1635 (0.16 fen) and shows the other fen: 2 = 1 + 1. Of the lines (asr 0.225, tts 0.51, intent 0.24,
        # chat 0.66 fen of list) the two largest remainders, chat and tts, show 1 fen each.
        assert (chat["list_ucny"], chat["list_fen"], chat["plan_fen"], chat["discount_fen"]) == (6600, 1, 1, 0)
        assert [(x["name"], x["list_fen"]) for x in inv["lines"]] == [
            ("asr-standard", 0), ("tts-standard", 1), ("intent", 0), ("chat", 1)]
        assert (inv["list_fen"], inv["plan_fen"], inv["discount_fen"], inv["due_fen"]) == (2, 1, 1, 0)
        assert (chat["plan_ucny"], chat["discount_ucny"]) == ("5940", "660")
        assert [(x["kind"], x["list_ucny"], x["amount_fen"]) for x in inv["by_kind"]] == [("plan", 16350, 1)]
    with pytest.raises(invoices.InvoiceError):
        invoices.month_bounds("2026-13")


def test_rebuild_recomputes_every_projection_and_finds_tampering(engine):
    from edgemeter.cloud import rebuild
    with tx(engine) as conn, conn.begin():
        acc, ws = _license_ws(conn, grant=1_000_000, validity=60)
        p = pools.buy_license(conn, BOOK, ws, "basic", 100, T0)
        pools.activate(conn, BOOK, p, 100, T0)
        conn.execute(insert(S.devices), [dict(id=d, workspace_id=ws, username=f"{ws}/{d}", password_hash="x", kid=1,
                                              created_at=T0) for d in (51, 52)])
        g = pools.lease_open(conn, BOOK, ws, 51, 0, T0)
        for seq in (1, 2, 4):
            bid = ledger.insert_batches(conn, [dict(device_id=51, seq=seq, boot=1, book_version=1, lease_id=g["lease"],
                                                    t0=T0, rounds=10, device_ucny=54_500, rated_ucny=54_500,
                                                    mismatch=False, payload=b"", workspace_id=ws, account_id=acc,
                                                    received_ms=0, booked_ms=0)])[(51, seq)]
            pools.report_booked(conn, ws, [(g["lease"], 51, 54_500, bid)], T0 + seq)
        ledger.raise_acked(conn, {51: 2}, 0)
        pools.lease_open(conn, BOOK, ws, 52, 0, T0 + 5)
        pools.reclaim_due(conn, ws, T0 + 500)
        shop = accounts.create_account(conn, "shop2", T0)
        accounts.claim_trial(conn, BOOK, shop, T0)
        accounts.buy_plan(conn, BOOK, shop, 20_000_000, T0)
        accounts.top_up(conn, shop, 1_000_000, T0)
        accounts.charge(conn, [(shop, None, 35_000_000)], T0 + 1)
        accounts.settle(conn, shop, civil.add_months(T0, 4))
    with tx(engine) as conn, conn.begin():
        r = rebuild.run(conn, check=True)
        assert r["differences"] == [] and r["rounds"] == 30
        conn.execute(S.pools.update().values(free=S.pools.c.free + 1))
        conn.execute(S.account_balances.update().where(S.account_balances.c.account_id == shop)
                     .values(balance_ucny=0))
        conn.execute(S.devices.update().where(S.devices.c.id == 51).values(acked_seq=4))
    with tx(engine) as conn, conn.begin():
        diffs = rebuild.run(conn, check=True)["differences"]
        assert {(d[0], d[2]) for d in diffs} == {("pools", "free"), ("account_balances", "balance_ucny"),
                                                 ("devices", "acked_seq")}
        assert ("devices", "51", "acked_seq", 4, 2) in diffs
        assert rebuild.run(conn, check=False)["written"]
    with tx(engine) as conn, conn.begin():
        assert rebuild.run(conn, check=True)["differences"] == []


def test_trial_refused_after_usage(engine):
    with tx(engine) as conn, conn.begin():
        acc, ws = _postpaid(conn)
        _book_batch(conn, acc, ws, 41, 1, [(6, 1, 1, 2200)], T0 + 10)
        assert accounts.trial_eligibility(conn, acc, T0 + 5) is None        # the usage came later
        with pytest.raises(accounts.TrialRefused) as refused:
            accounts.claim_trial(conn, BOOK, acc, T0 + 20)
        assert refused.value.reason == "not-new-usage" and accounts.balances(conn, acc)["trial"] is None

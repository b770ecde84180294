"""`edgemeter admin` end to end on a SQLite file: exit codes, --json, invoices with CSV, checks."""
from __future__ import annotations

import json

import pytest

from edgemeter.cloud import admin, db
from edgemeter.cloud import schema as S


def _run(capsys, *args):
    try:
        rc = admin.main(list(args))
    except SystemExit as exc:       # a bad argument, refused by its type before the store opens
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_admin_flow_exit_codes_and_outputs(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert _run(capsys, "migrate", "--db", url)[0] == 0
    rc, out, _ = _run(capsys, "create-account", "--db", url, "--name", "acme", "--trial", "--at", "2026-07-01", "--json")
    acc = json.loads(out)["account"]
    rc, out, _ = _run(capsys, "create-workspace", "--db", url, "--account", str(acc), "--name", "shops",
                      "--billing", "postpaid", "--json")
    ws = json.loads(out)["workspace"]
    rc, out, _ = _run(capsys, "create-workspace", "--db", url, "--account", str(acc), "--name", "fleet",
                      "--billing", "license", "--policy", "degrade", "--json")
    lic = json.loads(out)["workspace"]
    assert _run(capsys, "buy-license", "--db", url, "--workspace", str(lic), "--tier", "basic",
                "--devices", "99")[0] == 2                                      # below the minimum: a caller mistake
    rc, out, _ = _run(capsys, "buy-license", "--db", url, "--workspace", str(lic), "--tier", "basic",
                      "--devices", "100", "--at", "2026-07-01", "--json")
    purchase = json.loads(out)["purchase"]
    assert _run(capsys, "activate", "--db", url, "--purchase", str(purchase), "--count", "10",
                "--at", "2027-07-01")[0] == 1                                   # window closed: refused
    rc, out, _ = _run(capsys, "activate", "--db", url, "--purchase", str(purchase), "--count", "10",
                      "--at", "2026-10-01", "--json")
    assert rc == 0 and json.loads(out)["pool"]["free"] == 10 * 5_000_000
    rc, out, _ = _run(capsys, "buy-savings-plan", "--db", url, "--account", str(acc), "--cny", "100", "--json")
    assert rc == 0 and json.loads(out)["discount_bp"] == 9000
    assert _run(capsys, "buy-savings-plan", "--db", url, "--account", str(acc), "--cny", "10")[0] == 2
    assert _run(capsys, "top-up", "--db", url, "--account", str(acc), "--cny", "0.5x")[0] == 2
    rc, out, _ = _run(capsys, "top-up", "--db", url, "--account", str(acc), "--cny", "12.34", "--json")
    assert json.loads(out)["balance_cny"] == "12.34"
    rc, out, _ = _run(capsys, "register-device", "--db", url, "--workspace", str(ws), "--json")
    dev = json.loads(out)
    assert dev["username"] == dev["client_id"] == f"{ws}/{dev['device']}" and len(bytes.fromhex(dev["key"])) == 32
    rc, out, _ = _run(capsys, "show", "--db", url)
    assert "account 1 acme: balance 12.34 CNY" in out and "pool: added 50000000" in out
    rc, out, _ = _run(capsys, "invoice", "--db", url, "--account", str(acc), "--month", "2026-07",
                      "--csv", str(tmp_path / "inv.csv"))
    assert rc == 0 and "TOTAL (CNY)" in out and (tmp_path / "inv.csv").read_text().startswith("item,name")
    assert _run(capsys, "invoice", "--db", url, "--account", str(acc), "--month", "July")[0] == 2
    assert _run(capsys, "rebuild", "--db", url, "--check")[0] == 0
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(S.account_balances.update().values(paid_ucny=1))
    engine.dispose()
    rc, out, _ = _run(capsys, "rebuild", "--db", url, "--check")
    # paid: the 12.34 top-up and the upfront orders (100 basic licences, CNY 500; the CNY 100 plan)
    assert rc == 1 and "paid_ucny: stored 1 rebuilt 612340000" in out
    assert _run(capsys, "rebuild", "--db", url)[0] == 0
    assert _run(capsys, "rebuild", "--db", url, "--check")[0] == 0
    assert _run(capsys, "show", "--db", "mysql://x/y")[0] == 2


def test_every_subcommand_prints_its_help(capsys):
    """argparse expands %-formats in help texts: a bare % made `--help` crash with a TypeError."""
    names = sorted(admin._parser()._subparsers._group_actions[0].choices)
    assert "create-workspace" in names and len(names) > 10
    for name in names:
        with pytest.raises(SystemExit) as exc:
            admin.main([name, "--help"])
        assert exc.value.code == 0, name
        assert capsys.readouterr().out.startswith("usage:"), name


def test_purchases_are_orders_paid_up_front_or_from_the_balance(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert admin.main(["migrate", "--db", url]) == 0
    capsys.readouterr()

    def js(*args):
        rc, out, err = _run(capsys, *args, "--db", url, "--json")
        return rc, (json.loads(out) if rc == 0 else err)

    _, a = js("create-account", "--name", "buyer", "--at", "2026-07-01")
    acc = str(a["account"])
    _, w = js("create-workspace", "--account", acc, "--name", "fleet", "--billing", "license")
    js("top-up", "--account", acc, "--cny", "150", "--at", "2026-07-02")
    rc, plan = js("buy-savings-plan", "--account", acc, "--cny", "100", "--pay", "balance", "--at", "2026-07-03")
    assert rc == 0 and (plan["paid_by"], plan["paid_cny"], plan["commit_cny"]) == ("balance", "100.00", "100.00")
    # the balance (CNY 50) cannot pay a second CNY 100 plan: refused (exit 1), nothing written
    rc, err = js("buy-savings-plan", "--account", acc, "--cny", "100", "--pay", "balance", "--at", "2026-07-04")
    assert rc == 1 and "insufficient-balance" in err and "50.00" in err and "100.00" in err
    rc, err = js("buy-license", "--workspace", str(w["workspace"]), "--tier", "standard", "--devices", "100",
                 "--pay", "balance", "--at", "2026-07-05")
    assert rc == 1 and "insufficient-balance" in err
    rc, lic = js("buy-license", "--workspace", str(w["workspace"]), "--tier", "standard", "--devices", "100",
                 "--at", "2026-08-05")
    assert rc == 0 and (lic["paid_by"], lic["price_cny"]) == ("upfront", "1000.00")
    _, show = js("show", "--account", acc)
    a = show["accounts"][0]
    # paid: the top-up and the upfront licences; the plan came out of the balance
    assert (a["paid_ucny"], a["purchases_ucny"], a["balance_ucny"]) == (1_150_000_000, 1_100_000_000, 50_000_000)
    assert [(o["kind"], o["price_cny"], o["paid_by"]) for o in a["orders"]] == [
        ("savings-plan", "100.00", "balance"), ("license", "1000.00", "upfront")]
    assert len(a["plans"]) == 1
    _, july = js("invoice", "--account", acc, "--month", "2026-07")
    _, aug = js("invoice", "--account", acc, "--month", "2026-08")
    assert [(p["kind"], p["price_cny"], p["paid_by"]) for p in july["purchases"]] == [("savings-plan", "100.00", "balance")]
    assert (july["purchases_cny"], aug["purchases_cny"], july["due_cny"]) == ("100.00", "1000.00", "0.00")
    rc, out, _ = _run(capsys, "invoice", "--db", url, "--account", acc, "--month", "2026-08")
    assert "purchase: order 2 license 1" in out and "1000.00 CNY paid upfront" in out
    assert _run(capsys, "rebuild", "--db", url, "--check")[0] == 0
    with pytest.raises(SystemExit) as exc:
        admin.main(["buy-savings-plan", "--db", url, "--account", acc, "--cny", "100", "--pay", "card"])
    assert exc.value.code == 2 and "invalid choice: 'card'" in capsys.readouterr().err


def test_claim_trial_is_for_new_users_by_the_operators_rule(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 't.db'}"
    assert admin.main(["migrate", "--db", url]) == 0
    capsys.readouterr()

    def run(*args):
        return _run(capsys, *args, "--db", url)

    rc, out, _ = run("trial-rule", "--json")
    assert rc == 0 and json.loads(out)["new_days"] == 30                     # the default rule
    run("create-account", "--name", "old", "--at", "2026-07-01T10:00")
    rc, _, err = run("claim-trial", "--account", "1", "--at", "2026-07-31T10:00")  # day 30: too late
    assert rc == 1 and "not-new-age" in err and "within 30 days" in err
    assert run("trial-rule", "--new-days", "-1")[0] == 2
    assert run("trial-rule", "--new-days", "31")[0] == 0
    rc, out, _ = run("claim-trial", "--account", "1", "--at", "2026-07-31T10:00", "--json")
    assert rc == 0 and json.loads(out)["trial_cny"] == "10"
    rc, _, err = run("claim-trial", "--account", "1", "--at", "2026-07-31T11:00")
    assert rc == 1 and "trial-claimed" in err
    run("create-account", "--name", "buyer", "--at", "2026-07-01T10:00")
    run("buy-savings-plan", "--account", "2", "--cny", "20", "--at", "2026-07-02T10:00")
    rc, _, err = run("claim-trial", "--account", "2", "--at", "2026-07-03T10:00")
    assert rc == 1 and "not-new-purchase" in err
    rc, out, _ = run("show", "--account", "2", "--json")
    assert json.loads(out)["accounts"][0]["trial"] is None                   # refused: nothing written
    assert run("trial-rule", "--new-days", "0")[0] == 0                      # no age limit
    run("create-account", "--name", "late", "--at", "2026-01-01T10:00")
    assert run("claim-trial", "--account", "3", "--at", "2029-01-01T10:00")[0] == 0

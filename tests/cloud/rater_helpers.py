"""Helpers for the rater tests: a store with accounts and devices, and rater processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from edgemeter.cloud import accounts, db, devices, pools
from edgemeter.cloud import schema as S
from firmware_py import civil, pricebook

ROOT = Path(__file__).resolve().parents[2]
BOOK = pricebook.default()
NOW = int(time.time())


def setup_store(url: str, postpaid_devices: int = 3, license_devices: int = 0, balance_ucny: int = 10**12,
                trial: bool = False) -> dict[str, Any]:
    """Accounts, workspaces and registered devices; returns ids and device keys."""
    engine = db.open_store(url, create=True)
    out: dict[str, Any] = {"postpaid": [], "license": []}
    with db.write_connect(engine) as conn, conn.begin():
        acc = accounts.create_account(conn, "tenant", NOW)
        pp = accounts.create_workspace(conn, acc, "postpaid", "postpaid", NOW)
        if trial:
            accounts.claim_trial(conn, BOOK, acc, NOW)
        if balance_ucny:
            accounts.top_up(conn, acc, balance_ucny, NOW)
        lic = accounts.create_workspace(conn, acc, "license", "license", NOW, grant=5_450_000, validity=3600)
        p = pools.buy_license(conn, BOOK, lic, "standard", 100, civil.add_months(NOW, -1))
        pools.activate(conn, BOOK, p, 100, civil.add_months(NOW, -1))
        for _ in range(postpaid_devices):
            out["postpaid"].append(devices.register(conn, pp, NOW))
        for _ in range(license_devices):
            out["license"].append(devices.register(conn, lic, NOW))
    engine.dispose()
    out.update(account=acc, pp_ws=pp, lic_ws=lic)
    return out


def fleet_devices(reg: dict[str, Any], kinds: tuple[str, ...] = ("postpaid", "license")) -> list[tuple[int, int, bytes]]:
    return [(d["workspace"], d["id"], d["key"]) for k in kinds for d in reg[k]]


class RaterProc:
    """`edgemeter rater` as a real process (kill -9 able)."""

    def __init__(self, broker_url: str, db_url: str, client_id: str, tmp: Path, *extra: str):
        self.args = [sys.executable, "-m", "edgemeter.tools.cli", "rater", "--broker", broker_url, "--db", db_url,
                     "--client-id", client_id, "--housekeeping", "0.5", *extra]
        self.log_path = tmp / f"{client_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RaterProc":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if '"subscribed"' in self.log_path.read_text()[offset:]:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("rater exited:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.05)
        raise RuntimeError("rater did not subscribe:\n" + self.log_path.read_text()[-3000:])

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def term(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text()


def ledger_summary(url: str) -> dict[str, Any]:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        b = S.usage_batches
        rows = conn.execute(select(b.c.device_id, b.c.seq)).all()
        out = {"batches": len(rows), "distinct": len(set(rows)),
               "rounds": int(conn.execute(select(func.coalesce(func.sum(b.c.rounds), 0))).scalar_one()),
               "ucny": int(conn.execute(select(func.coalesce(func.sum(b.c.rated_ucny), 0))).scalar_one()),
               "per_device": {d: n for d, n in conn.execute(select(b.c.device_id, func.count()).group_by(b.c.device_id))},
               "dead": {r: int(n) for r, n in conn.execute(select(S.dead_letters.c.reason, func.sum(S.dead_letters.c.count))
                                                          .group_by(S.dead_letters.c.reason))}}
    engine.dispose()
    return out


def wait_for(pred: Any, timeout: float = 20.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return pred()

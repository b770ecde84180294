"""One simulation: set-up, the serving loop with its faults, drain, audit (see tools/sim/__init__)."""
from __future__ import annotations

import heapq
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from firmware_py import meter as fm
from edgemeter.tools.broker import Broker
from edgemeter.tools.rabbit import accepts
from edgemeter.tools.sim import audit, stack
from edgemeter.tools.sim.fleet import Fleet
from edgemeter.tools.sim.net import UP

METER_CFG = {"age": 2, "rto": 5, "rto_max": 20, "retry": 5, "max_events": 1024}
FULL_CFG = {"max_bytes": 1024, "segment_bytes": 256}
# fault -> the run's progress fractions at which it fires
PLAN = {"dup": (0.1, 0.3, 0.5, 0.7, 0.9), "power": (0.15, 0.35, 0.55, 0.75), "partition": (0.2, 0.5),
        "lease": (0.22,), "rater": (0.3, 0.65), "full": (0.28,), "clock": (0.4,), "broker": (0.45,),
        "book": (0.5,), "tamper": (0.6,), "node": (0.62,)}


class Simulation:
    def __init__(self, args: Any, faults: set[str], work: Path) -> None:
        self.a, self.faults, self.work = args, faults, work
        self.rng = random.Random(args.seed)
        self.broker: Broker | None = None
        self.cluster: Any = None    # a RabbitCluster (tools.rabbit) with --broker rabbitmq
        self.node_stops: dict[int, threading.Thread] = {}   # clean node stops under way
        self.raters: list[stack.Rater] = []
        self.fleet: Fleet | None = None
        self.mp: Any = None
        self.counts: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self.later: list[tuple[float, str, Any]] = []   # (monotonic time, action, arg)
        self.cut_next: set[int] = set()
        self.stalled: list = []
        self.stop = False          # set from a signal handler: end the serving loop, drain, audit
        self.on_ready: Any = None  # called once every link is up, before serving
        self.store_opts: dict[str, Any] = {}   # overrides for stack.setup_store (the demo's pool)
        # [(seconds after serving starts, fault)]: replaces PLAN's fractions of the run (the demo)
        self.fault_times: list[tuple[float, str]] | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        a = self.a
        from edgemeter.tools.sim import raise_nofile
        self.nofile = raise_nofile(3 * (a.devices + a.micropython) + 1024)
        self.url = a.db or f"sqlite:///{self.work / 'ledger.db'}"
        n = a.devices + a.micropython
        n_lic = n // 2
        t = time.monotonic()
        opts = {"units": 3 * 20_000 * (a.rounds + a.micropython * a.mp_rounds), **self.store_opts}
        self.ids = stack.setup_store(self.url, n_lic, n - n_lic, validity=a.lease_validity, grant=545_000, **opts)
        regs = [(r, False) for r in self.ids["license"]] + [(r, True) for r in self.ids["postpaid"]]
        # interleave License and postpaid devices; the MicroPython ones are the last K
        regs.sort(key=lambda x: x[0]["id"])
        order = [x for pair in zip(regs[:n_lic], regs[n_lic:]) for x in pair] + regs[2 * n_lic:]
        self.setup_s = {"store": time.monotonic() - t}
        port: Any
        if a.broker == "rabbitmq":
            t = time.monotonic()
            from edgemeter.tools.rabbit import RabbitCluster
            self.cluster = RabbitCluster(a.broker_nodes, workdir=self.work / "rabbitmq").start()
            stack.load_rabbit_users(self.cluster, [r for r, _ in regs])
            host, port = self.cluster.host, self.cluster.mqtt_ports
            self.setup_s["broker"] = time.monotonic() - t
        elif a.broker != "mosquitto":
            u = urlsplit(a.broker)
            host, port = u.hostname or "127.0.0.1", u.port or 1883
        else:
            t = time.monotonic()
            self.broker = Broker(auth=True, workdir=self.work / "mosquitto")
            stack.write_broker_files(self.url, self.broker)
            self.broker.start(timeout=30)
            host, port = self.broker.host, self.broker.device_port
            self.setup_s["broker"] = time.monotonic() - t
        t = time.monotonic()
        for i in range(a.raters):
            r = stack.Rater(self.broker or self.cluster or a.broker, self.url, f"sim-rater-{i + 1}", self.work, node=i)
            self.raters.append(r.start())
        self.setup_s["raters"] = time.monotonic() - t
        t = time.monotonic()
        self.fleet = Fleet(str(self.work / "devices"), host, port, a.seed)
        self.fleet.spare_fds = 2 * a.devices + 512 > self.nofile
        meter_regs = order[:a.devices]
        self.mp_regs = order[a.devices:]
        full_dev = meter_regs[1][0]["id"] if "full" in self.faults else None
        for reg, pp in meter_regs:
            cfg = dict(METER_CFG, postpaid=1 if pp else 0)
            if reg["id"] == full_dev:
                cfg.update(FULL_CFG)
            self.fleet.add(reg, pp, cfg)
        self.full_dev = full_dev
        self.setup_s["devices"] = time.monotonic() - t
        if "clock" in self.faults:   # a skewed clock on 10% of the devices from the start
            for d in self.rng.sample(self.fleet.devices, max(1, len(self.fleet.devices) // 10)):
                d.offset = self.rng.choice((-1, 1)) * self.rng.randint(30, 250)
                self.counts["clock-skew"] += 1
        if a.micropython:
            from edgemeter.tools.sim.mp import MicroFleet
            self.mp = MicroFleet(self.work / "mp", host, port[0] if isinstance(port, list) else port, self.mp_regs, a.mp_heap, a.mp_rounds, a.seed,
                                 "power" in self.faults, self.note,
                                 firmware=getattr(a, "mp_firmware", "auto"))

    # ------------------------------------------------------------------ faults
    def note(self, kind: str, **detail: Any) -> None:
        self.counts[kind] += 1
        self.log.append({"t": round(time.monotonic() - self.t0, 2), "fault": kind, **detail})

    def fire(self, kind: str) -> None:
        f, rng = self.fleet, self.rng
        assert f is not None
        devs = f.devices
        now = time.monotonic()
        if kind == "dup":
            self.note("dup", batches=f.duplicate(50))
        elif kind == "tamper":
            self.note("tamper", batches=f.tamper(3))
        elif kind == "power":
            k = max(2, len(devs) // 50)
            idx = rng.sample(range(len(devs)), k)
            self.cut_next.update(idx)
            self.note("power", devices=[devs[i].dev for i in idx])
        elif kind == "partition":
            picked = rng.sample(devs, max(1, len(devs) // 10))
            secs = rng.uniform(4, 8)
            for d in picked:
                d.link.blocked_until = now + secs
                d.link.close(secs)
            self.note("partition", devices=len(picked), seconds=round(secs, 1))
        elif kind == "lease":
            lic = [d for d in devs if not d.postpaid and d.dev != self.full_dev]
            picked = rng.sample(lic, max(1, len(lic) // 20))
            secs = self.a.lease_validity + 5
            for d in picked:
                d.link.blocked_until = now + secs
                d.link.close(secs)
            self.note("lease", devices=[d.dev for d in picked], seconds=secs)
        elif kind == "full":
            fd = f.by_dev.get(self.full_dev or -1)
            if fd is not None:
                fd.link.blocked_until = now + 15
                fd.link.close(15)
                self.note("full", device=fd.dev, journal_bytes=FULL_CFG["max_bytes"])
        elif kind == "clock":
            picked = rng.sample(devs, max(1, len(devs) // 20))
            for d in picked:
                d.offset -= 3600
            self.note("clock-rollback", devices=len(picked), seconds=-3600)
        elif kind == "broker":   # only a broker this run started can be restarted
            if self.broker is not None:
                t = time.monotonic()
                self.broker.restart()
                self.note("broker", seconds=round(time.monotonic() - t, 2))
            elif self.cluster is not None:    # a clean stop of one node, started again 5 s later
                i = rng.randrange(len(self.cluster.names))
                th = self.node_stops[i] = threading.Thread(target=self.cluster.stop_node, args=(i,), daemon=True)
                th.start()
                self.later.append((now + 5.0, "node-start", i))
                self.note("broker", node=self.cluster.names[i])
        elif kind == "node":     # kill -9: of one cluster node (back 8 s later), or of Mosquitto
            if self.cluster is not None and not self._all_nodes_up():
                self.later.append((now + 2.0, "fire", "node"))   # one node lost at a time (a quorum of 3)
            elif self.cluster is not None:   # one a rater started on (rater i on node i), a third of the devices'
                i = rng.randrange(min(len(self.raters), len(self.cluster.names)))
                self.cluster.kill9(i)
                self.later.append((now + 8.0, "node-start", i))
                self.note("node", node=self.cluster.names[i])
            elif self.broker is not None:
                t = time.monotonic()
                self.broker.restart(hard=True)
                self.note("node", seconds=round(time.monotonic() - t, 2))
        elif kind == "rater":
            r = rng.choice(self.raters)
            r.kill9()
            self.later.append((now + 2.0, "rater-start", r))
            self.note("rater", rater=r.name)
        elif kind == "book":
            ver = stack.new_price_book(self.url, self.work)   # raters load it without a restart
            self.note("book", version=ver)

    def fault_plan(self) -> list[tuple[float, str]]:
        """[(when, fault)] in order: PLAN's fractions of the run, or the demo's fault_times (seconds)."""
        return sorted(self.fault_times if self.fault_times is not None else
                      [(p, k) for k in self.faults for p in PLAN[k]])

    def _all_nodes_up(self) -> bool:
        """Every cluster node running and answering, no clean stop under way."""
        c = self.cluster
        return all(c.alive(i) and accepts(c.mqtt_ports[i]) for i in range(len(c.names))) and \
            not any(th.is_alive() for th in self.node_stops.values())

    def _later(self) -> None:
        now = time.monotonic()
        keep = []
        due, self.later = self.later, []     # fire() may schedule more while these run
        for t, what, arg in due:
            if t > now:
                keep.append((t, what, arg))
            elif what == "fire":
                self.fire(arg)
            elif what == "rater-start" and not arg.alive:
                arg.start()
            elif what == "node-start" and self.cluster is not None:
                th = self.node_stops.get(arg)
                if th is not None and th.is_alive():      # its clean stop is still under way
                    keep.append((now + 1.0, what, arg))
                elif not self.cluster.alive(arg):
                    self.cluster.start_node(arg, wait=False)
        self.later = keep + self.later

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        self.setup()
        f = self.fleet
        assert f is not None
        devs = f.devices
        n = len(devs)
        total = self.a.rounds if self.a.duration is None else 1 << 60
        for i, d in enumerate(devs):
            d.quota = total // n + (1 if i < total % n else 0)
        target = sum(d.quota for d in devs)
        serve_s = self._serve(target)
        drained = self.drain()
        if not self.a.quiet:
            sys.stderr.write("\n")
        t = time.monotonic()
        au = self._audit(drained)
        return self._report(target, serve_s, drained, au, time.monotonic() - t)

    def _serve(self, target: int) -> float:
        """Serve rounds until the target (or the duration) is reached, firing the fault plan on
        the way and ticking every device's timers; returns the serving seconds."""
        f, a = self.fleet, self.a
        assert f is not None
        devs = f.devices
        n = len(devs)
        plan = self.fault_plan()
        interval = 1.0 / a.rate if a.rate else 0.0
        window = METER_CFG.get("window", 4)
        heap = [(time.monotonic() + self.rng.random() * interval, i) for i in range(n)]
        heapq.heapify(heap)
        last_scan = last_prog = last_tick = 0.0
        tick_i = 0
        self.connect_s = self.connect_all()
        if self.on_ready is not None:
            self.on_ready(self)
        if self.mp:
            self.mp.start()
        t_serve = time.monotonic()
        progress_at, last_served = t_serve, 0
        while True:
            now = time.monotonic()
            frac = (now - t_serve) / a.duration if a.duration else f.served_rounds / max(1, target)
            while plan and plan[0][0] <= (frac if self.fault_times is None else now - t_serve):
                self.fire(plan.pop(0)[1])
            if self.later:
                self._later()
            if self.stop or (a.duration is not None and now - t_serve >= a.duration):
                break
            if a.duration is None and f.served_rounds >= target:
                break
            budget = self._serve_due(heap, now, interval, window)
            # timers: every device ticked about once a second
            k = max(1, int(n * min(1.0, now - last_tick)))
            if now - last_tick >= 0.05:
                for _ in range(min(k, n)):
                    devs[tick_i % n].tick()
                    tick_i += 1
                last_tick = now
            if now - last_scan >= 0.1:
                f.net.scan()
                last_scan = now
                if self.mp:
                    self.mp.poll()
            f.net.poll(0 if budget == 0 else 0.002)
            if f.served_rounds != last_served:
                last_served, progress_at = f.served_rounds, now
            elif now - progress_at > 120:
                self.stalled = [dict(d.meter.status(), refused=dict(d.refused), link=d.link.state, quota=d.quota)
                                for d in devs if d.quota > 0][:10]
                break
            if not a.quiet and now - last_prog >= (0.5 if sys.stderr.isatty() else 10):
                self.progress(frac, target, now - t_serve)
                last_prog = now
        for _, kind in plan:     # a run that ended early still fires what was planned
            if not self.stop and self.fault_times is None:
                self.fire(kind)
        return time.monotonic() - t_serve

    def _serve_due(self, heap: list[tuple[float, int]], now: float, interval: float, window: int) -> int:
        """Serve one round on each device due by now (at most 400) that has room in its send
        window; the budget left."""
        assert self.fleet is not None
        devs = self.fleet.devices
        budget = 400
        while heap and heap[0][0] <= now and budget:
            _, i = heapq.heappop(heap)
            d = devs[i]
            if d.quota <= 0:
                continue
            if d.link.state == UP and len(d.meter.s.outbox) >= window and not d.pending_end:
                heapq.heappush(heap, (now + 0.02, i))
                continue
            cut = i in self.cut_next
            if cut:
                self.cut_next.discard(i)
            served = d.serve_one(cut)
            d.push()
            budget -= 1
            wait = interval or (0.0 if d.link.state == UP and served else
                                0.01 if d.dev == self.full_dev and served else 0.25)
            heapq.heappush(heap, (now + wait, i))
        return budget

    def _audit(self, drained: dict[str, Any]) -> dict[str, Any]:
        """The audit of the ledger against what was served, with the run's own findings."""
        assert self.fleet is not None
        a, devs = self.a, self.fleet.devices
        mp_truth = self.mp.finish() if self.mp else {}
        for r in self.raters:
            r.stop()
        truth = {d.dev: {"rounds": d.rounds, "ucny": d.ucny} for d in devs}
        truth.update(mp_truth)
        au = audit.run(self.url, truth, self.ids)
        if self.stalled:
            au["ok"] = False
            au["problems"].append("the run stalled: no round served for 120 s")
        if self.mp:
            bad = [d.dev for d in self.mp.devices if not d.done or d.rc != 0]
            if bad:
                au["ok"] = False
                au["problems"].append(f"MicroPython firmware process(es) {bad} did not finish with status 0")
            short = [d.dev for d in self.mp.devices if d.rounds != a.mp_rounds]
            if short:
                au["ok"] = False
                au["problems"].append(f"MicroPython device(s) {short} served fewer than {a.mp_rounds} rounds")
        if drained["not_acked"]:
            au["ok"] = False
            au["problems"].append(f"{drained['not_acked']} device(s) still had unacked batches after the drain")
        return au

    def _report(self, target: int, serve_s: float, drained: dict[str, Any], au: dict[str, Any],
                audit_s: float) -> dict[str, Any]:
        """The run's report, as `edgemeter sim --report` writes it."""
        f, a = self.fleet, self.a
        assert f is not None
        devs = f.devices
        n = len(devs)
        refused: Counter[str] = Counter()
        events: Counter[str] = Counter()
        for d in devs:
            refused.update(d.refused)
            events.update(d.events)
        cuts = [c for d in devs for c in d.cut_complete]
        booked = au["ledger"]["rounds"]
        elapsed = time.monotonic() - self.t0
        return {
            "seed": a.seed, "devices": n + (len(self.mp_regs) if self.mp else 0), "meter_devices": n,
            "mp_devices": len(self.mp_regs) if self.mp else 0, "raters": a.raters, "db": self.url,
            "rounds_target": target if a.duration is None else None, "seconds": round(elapsed, 1),
            "serve_seconds": round(serve_s, 1), "drain": drained, "setup_seconds": {k: round(v, 2) for k, v in self.setup_s.items()},
            "audit_seconds": round(audit_s, 2), "connect_seconds": round(self.connect_s, 2),
            "rounds_per_s": booked / max(1e-9, serve_s + drained["seconds"]),
            "faults": dict(self.counts), "fault_log": self.log[:200],
            "power_cuts": {"count": len(cuts), "complete_record": sum(cuts), "torn_record": len(cuts) - sum(cuts)},
            "refused": dict(refused), "events": dict(events),
            "links": {"connects": sum(d.link.connects for d in devs), "drops": sum(d.link.drops for d in devs),
                      "auth_refused": sum(d.link.refused for d in devs)},
            "duplicates_sent": f.dups_sent, "nofile_limit": self.nofile,
            "micropython": self.mp.report() if self.mp else None, "stalled": self.stalled,
            "audit": au,
        }

    def connect_all(self, timeout: float = 120.0) -> float:
        """Bring every device link up before serving (a connect storm, paced by net.scan)."""
        f = self.fleet
        assert f is not None
        t0 = time.monotonic()
        last = 0.0
        while f.net.up() < len(f.devices) and time.monotonic() - t0 < timeout:
            now = time.monotonic()
            if now - last >= 0.05:
                f.net.scan()
                last = now
                if not self.a.quiet and sys.stderr.isatty():
                    sys.stderr.write("\rconnecting: %d/%d links up   " % (f.net.up(), len(f.devices)))
            f.net.poll(0.01)
        for d in f.devices:
            d.push()
        return time.monotonic() - t0

    def progress(self, frac: float, target: int, secs: float) -> None:
        f = self.fleet
        assert f is not None
        w = 30
        fill = int(w * min(1.0, frac))
        rate = f.served_rounds / max(secs, 1.0)
        faults = " ".join(f"{k}:{v}" for k, v in sorted(self.counts.items()))
        bar = ("[%s%s] %3d%% " % ("#" * fill, "." * (w - fill), int(100 * min(1.0, frac)))
               if (self.a.duration or 0) < 1e8 else "%6.0f s " % secs)   # the demo runs until stopped
        sys.stderr.write(("\r" if sys.stderr.isatty() else "") + bar + "%d rounds %5.0f/s up %d/%d %s   " % (
            f.served_rounds, rate, f.net.up(), len(f.devices), faults) + ("" if sys.stderr.isatty() else "\n"))
        sys.stderr.flush()

    def drain(self) -> dict[str, Any]:
        """End of the run: heal partitions, bring every rater back, end rounds left pending,
        drain every meter (seal all, return the lease) and wait for every ack."""
        f = self.fleet
        assert f is not None
        t0 = time.monotonic()
        for d in f.devices:
            d.link.blocked_until = 0.0
            d.link.retry_at = min(d.link.retry_at, t0)
        if self.cluster is not None:     # every node back before the drain
            for th in self.node_stops.values():
                th.join(120)
            for i in range(len(self.cluster.names)):
                if not self.cluster.alive(i):
                    self.cluster.start_node(i, wait=False)
            for i in range(len(self.cluster.names)):
                self.cluster.wait_node(i, 180)
        for r in self.raters:
            if not r.alive:
                r.start()
        self.later = []
        deadline = t0 + self.a.drain_timeout
        drained: set[int] = set()
        last_scan = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            busy = 0
            for d in f.devices:
                if d.pending_end:
                    d.serve_one(False)
                    d.push()
                    busy += 1
                    continue
                if d.dev not in drained:
                    d.meter.drain(d.now())
                    d.push()
                    drained.add(d.dev)
                m = d.meter
                if m.s.outbox or m.npend or m.rounds:
                    busy += 1
            if self.mp:
                self.mp.poll()
                busy += self.mp.busy()
            if not busy:
                break
            if now - last_scan >= 0.2:
                for d in f.devices:
                    d.tick()
                f.net.scan()
                last_scan = now
                if not self.a.quiet:
                    sys.stderr.write("\rdrain: %d device(s) waiting for acks, %d links up        "
                                     % (busy, f.net.up()))
            f.net.poll(0.01)
        not_acked = [d.dev for d in f.devices if d.meter.s.outbox or d.meter.npend]
        for _ in range(20):     # let lease returns and last acks land
            f.net.poll(0.01)
        for d in f.devices:
            d.drain_events()
            d.meter.close()
        f.net.close()
        return {"seconds": round(time.monotonic() - t0, 1), "not_acked": len(not_acked),
                "not_acked_devices": not_acked[:20]}

    def close(self) -> None:
        for r in self.raters:
            try:
                r.stop(10)
            except Exception:   # noqa: BLE001 - best effort at teardown
                pass
        if self.mp:
            self.mp.kill_all()
        if self.broker is not None:
            self.broker.close()
        if self.cluster is not None:
            self.cluster.close()
        if os.environ.get("EDGEMETER_SIM_KEEP"):
            print(f"edgemeter sim: work directory kept: {self.work}", file=sys.stderr)

"""Broker isolation on the shipped Mosquitto configuration (deploy/mosquitto/): a registered
device, connected like any device over the TLS listener with its own valid credentials, tries
to hurt other tenants, and every other tenant's batch is still booked.

Attacks (each on a real broker, a real rater process and a real SQLite ledger):
 - join the raters' shared subscription ($share/raters/em/+/+/up/#, the name the docs give):
   Mosquitto 2.0.11 picks a group member before it checks the ACL, so a device in the group
   would swallow the messages dealt to it;
 - connect with the rater's client id (which would disconnect the rater);
 - connect with another device's client id (which would disconnect that device and take over
   its session and queued downlink);
 - log in on the private listener of raters and operators, where client ids are the clients'
   own: refused, that listener has its own password file.
"""
from __future__ import annotations

import threading

import pytest

import mqttprobe
from rater_helpers import RaterProc, fleet_devices, ledger_summary, setup_store, wait_for
from edgemeter.tools.broker import Broker
from edgemeter.tools.fleetpub import Fleet

pytestmark = pytest.mark.timeout(120)

ATTACK_FILTERS = ("$share/raters/em/+/+/up/#", "$share/raters/em/#", "$share/raters/#")


class Watched(Fleet):
    """A victim device's connection that counts the times the broker dropped it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.drops = 0
        self._lock2 = threading.Lock()
        self.client.on_disconnect = self._dropped

    def _dropped(self, *a):
        with self._lock2:
            self.drops += 1


def _victim(broker: Broker, d: dict) -> Watched:
    user, password = broker.add_device(d["workspace"], d["id"], d["password"])
    return Watched(broker.host, broker.tls_port, fleet_devices({"x": [d]}, ("x",)), username=user,
                   password=password, client_id=user, ca_file=broker.ca_file).start()


def test_a_device_cannot_drop_other_tenants_usage_nor_take_a_client_id(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reg = setup_store(url, postpaid_devices=2, license_devices=1)
    victim, victim2 = reg["postpaid"]
    intruder = reg["license"][0]             # another workspace
    with Broker(auth=True, tls=True, workdir=tmp_path / "mq") as broker:
        iuser, _ = broker.add_device(intruder["workspace"], intruder["id"], intruder["password"])
        rater = RaterProc(broker.url, url, "rater-1", tmp_path, "--username", "rater",
                          "--password", broker.users["rater"]).start()
        probes = []
        fleets = []
        try:
            # the intruder joins the raters' group on the device listener; should it reach the
            # private listener, its credentials are refused there (that listener has its own users)
            p = mqttprobe.Probe(broker, iuser, tls=True, v5=True)
            for f in ATTACK_FILTERS:
                p.subscribe(f)
            probes.append(p)
            for cid in ("rater-1", victim2["username"], "anything"):
                with pytest.raises(ConnectionRefusedError, match="Not authorized|CONNACK 135|CONNACK 5"):
                    mqttprobe.Probe(broker, iuser, v5=True, client_id=cid, port=broker.port)
            fleets = [_victim(broker, victim), _victim(broker, victim2)]
            f1, f2 = fleets
            for _ in range(20):
                f1.send(victim["id"], rounds=1)
            assert f1.wait_acked(30), "the victim's batches were not all acked"
            s = ledger_summary(url)
            assert s["per_device"] == {victim["id"]: 20} and s["dead"] == {}
            # the intruder takes the rater's client id, then the other victim's
            for stolen in ("rater-1", victim2["username"]):
                probes.append(mqttprobe.Probe(broker, iuser, tls=True, v5=True, client_id=stolen))
            f2.send(victim2["id"], rounds=1)
            f1.send(victim["id"], rounds=1)
            assert f1.wait_acked(30) and f2.wait_acked(30)
            assert (f1.drops, f2.drops) == (0, 0), "a victim device was disconnected"
            assert '"disconnected"' not in rater.log(), "the rater was disconnected"
            for cid in ("rater-1", victim2["username"]):
                assert f"Client {cid} already connected" not in broker.log_text()
            s = ledger_summary(url)
            assert s["per_device"] == {victim["id"]: 21, victim2["id"]: 1} and s["dead"] == {}
        finally:
            for p in probes:
                p.close()
            for f in fleets:
                f.stop()
            rater.kill9()

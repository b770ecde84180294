"""The shipped broker ACL (deploy/mosquitto/acl.example) against a real Mosquitto started from the
shipped mosquitto.conf: the two lines `pattern write em/%u/up/#` and `pattern read em/%u/down/#`
with the user name "<ws>/<dev>" confine a device to em/<ws>/<dev>/up/# (write) and
em/<ws>/<dev>/down/# (read). What it tries elsewhere (another device of its workspace, the same
device number in another workspace, a longer number with its digits as a prefix, its own
downlink) never reaches the rater's shared subscription nor an operator reading em/#, and
nothing but its own downlink reaches it."""
from __future__ import annotations

from typing import Iterator

import pytest

import mqttprobe
from edgemeter.tools import broker as tb

WS, DEV = 7, 9501
OWN_UP = f"em/{WS}/{DEV}/up/usage"
OWN_DOWN = f"em/{WS}/{DEV}/down/cmd"
FOREIGN = [
    f"em/{WS}/9502/%s",          # another device of the same workspace
    f"em/8/{DEV}/%s",            # the same device number in another workspace
    f"em/8/9503/%s",             # another workspace's device
    f"em/{WS}/{DEV}0/%s",        # a device number that starts with this one's digits
    f"em/{WS}{DEV}/%s",          # the levels run together
    f"em/{DEV}/{WS}/%s",         # the levels swapped
]


@pytest.fixture
def observers(secure_broker: tb.Broker) -> Iterator[tuple[mqttprobe.Probe, mqttprobe.Probe]]:
    rater = mqttprobe.Probe(secure_broker, "rater", v5=True)
    admin = mqttprobe.Probe(secure_broker, "admin")
    rater.subscribe("$share/raters/em/+/+/up/#")
    admin.subscribe("em/#")
    yield rater, admin
    rater.close()
    admin.close()


def test_a_device_writes_only_its_own_uplink(secure_broker: tb.Broker, observers) -> None:
    b = secure_broker
    rater, admin = observers
    user, _ = b.add_device(WS, DEV)
    b.add_device(WS, 9502)
    b.add_device(8, 9503)
    assert user == f"{WS}/{DEV}"
    d = mqttprobe.Probe(b, user, client_id=user, tls=True)   # devices come in over TLS
    try:
        for t in FOREIGN:
            d.publish(t % "up/usage", b"forged")   # QoS 1: PUBACKed, then dropped by the ACL
        d.publish(OWN_DOWN, b"self-command")       # its own downlink is read-only to it
        d.publish(f"em/{WS}/{DEV}/up/lease", b"mine-1")
        d.publish(OWN_UP, b"mine-2")
        # the broker handles one client's packets in order: once the last one is delivered,
        # every earlier one has been delivered or dropped
        assert [(m.topic, m.payload) for m in (rater.get(), rater.get())] == [
            (f"em/{WS}/{DEV}/up/lease", b"mine-1"), (OWN_UP, b"mine-2")]
        seen = [(m.topic, m.payload) for m in admin.drain()]
        assert seen == [(f"em/{WS}/{DEV}/up/lease", b"mine-1"), (OWN_UP, b"mine-2")]
        assert rater.drain() == []
    finally:
        d.close()


def test_a_device_reads_only_its_own_downlink(secure_broker: tb.Broker, observers) -> None:
    b = secure_broker
    rater, admin = observers
    user, _ = b.add_device(WS, 9511)
    neighbour, _ = b.add_device(WS, 9512)
    d = mqttprobe.Probe(b, user, client_id=user)
    n = mqttprobe.Probe(b, neighbour, client_id=neighbour)
    try:
        # Mosquitto 2.0 grants every SUBSCRIBE and checks "read" per message at delivery
        assert d.subscribe("#") == [1] and d.subscribe(f"em/{WS}/9512/down/#") == [1]
        n.subscribe(f"em/{WS}/9512/down/#")
        for t in [f"em/{WS}/9512/%s", f"em/8/9511/%s", f"em/{WS}/95110/%s"]:
            rater.publish(t % "down/cmd", b"not-yours")
        n.publish(f"em/{WS}/9512/up/usage", b"neighbour's uplink")
        rater.publish(f"em/{WS}/9511/down/cmd", b"yours")
        m = d.get()
        assert (m.topic, m.payload) == (f"em/{WS}/9511/down/cmd", b"yours")
        assert d.drain() == []
        assert n.get().payload == b"not-yours"     # the neighbour does get its own
    finally:
        d.close()
        n.close()


def test_a_user_name_with_wildcards_gets_no_pattern_access(secure_broker: tb.Broker,
                                                           observers) -> None:
    """Were "+/+" substituted, the patterns would open every device's tree; Mosquitto refuses
    pattern access to a user name containing + or # (the registry issues "<int>/<int>" only)."""
    b = secure_broker
    rater, admin = observers
    b.users["+/+"] = "wild-password"   # an operator's hand-made passwd line (add_device rewrites it)
    b.add_device(WS, 9521)
    w = mqttprobe.Probe(b, "+/+", client_id="wild")
    try:
        w.subscribe("em/#")
        w.publish(f"em/{WS}/9521/up/usage", b"forged")
        rater.publish(f"em/{WS}/9521/down/cmd", b"for-9521")
        assert admin.get().topic == f"em/{WS}/9521/down/cmd"     # the operator sees it,
        assert w.drain() == [] and rater.drain() == []           # the wildcard user does not
    finally:
        w.close()
        b.users.pop("+/+", None)
        b.remove_device(9521)              # rewrites passwd without "+/+" and reloads

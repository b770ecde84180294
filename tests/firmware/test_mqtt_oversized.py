"""A PUBLISH larger than the device's max_packet (firmware_py/mqtt.py rule C7, mqtt_codec R11)
against the real Mosquitto: the client skips it without dropping the connection, acknowledges
the QoS 1 copy so that a persistent session does not redeliver it after a reconnect, and goes on
receiving the messages behind it. Before C7 the device dropped the connection on it and, the
broker redelivering it after every reconnect, could never stay connected again."""
from __future__ import annotations

import pytest

import mqttprobe
from test_mqtt_micropython import Device, new_cmd
from edgemeter.tools import broker as tb


@pytest.mark.parametrize("runtime,dev", [("micropython", 9251), ("cpython", 9252)])
def test_oversized_publish_is_skipped_acked_and_not_redelivered(runtime: str, dev: int,
                                                                 secure_broker: tb.Broker) -> None:
    b = secure_broker
    user, _ = b.add_device(7, dev)
    cloud = mqttprobe.Probe(b, "rater")  # paho-mqtt on the cloud side
    down = f"em/7/{dev}/down/"
    book = bytes(range(256)) * 5 + b"p" * 20  # 1,300 bytes: a price book
    d = Device(runtime)
    try:
        d.ok(new_cmd(b, user, max_packet=512, rx_size=128))
        assert d.ok("connect 0")[0] == "0"               # a persistent session ...
        assert d.ok(f"sub {down}# 1") == ["1"]           # ... with a QoS 1 subscription
        cloud.publish(down + "book", book, qos=1)
        cloud.publish(down + "ack", b"small-1", qos=1)
        status, words, msgs = d.cmd("wait 1 10000")
        assert (status, words, msgs) == ("ok", ["1"], [(down + "ack", b"small-1")])
        assert d.ok("oversized") == ["1", down + "book", str(2 + len(down + "book") + 2 + 1300)]
        assert d.ok("poll 200")[0] in ("0", "1")        # still connected
        d.ok("close")                                    # the link drops, no DISCONNECT
        assert d.ok("connect 0")[0] == "1"               # the session is still there ...
        cloud.publish(down + "ack", b"small-2", qos=1)   # ... queued behind any redelivery
        status, words, msgs = d.cmd("wait 1 10000")
        assert msgs == [(down + "ack", b"small-2")], (status, words, msgs)
        assert d.ok("oversized")[0] == "1"               # the book did not come again
        d.ok("disconnect")
    finally:
        d.close()
        cloud.close()

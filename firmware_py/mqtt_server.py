"""The broker-side half of MQTT 3.1.1 (optional extension of firmware_py/mqtt_codec.py).

Encodes CONNACK and SUBACK and decodes CONNECT, SUBSCRIBE and UNSUBSCRIBE, the packets only a
broker receives. A device never needs it (its client refuses those types as protocol errors),
so the firmware image can leave it out; tests, fakes and tools import it. Importing it
registers its decoders in mqtt_codec.DECODERS, after which mqtt_codec.decode() and the Parser
accept every packet type.

Decoded forms (rules R6 and R8 of mqtt_codec):
    (CONNECT, client_id, keepalive, clean_session, user, password, will)
              user: str or None, password: bytes or None, will: None or
              (topic, payload, qos, retain)
    (SUBSCRIBE, pid, [(filter, qos), ...])
    (UNSUBSCRIBE, pid, [filter, ...])
"""
from firmware_py import mqtt_codec as mc
from firmware_py.mqtt_codec import MQTTError


def encode_connack(session_present, rc):
    """CONNACK (§3.2)."""
    mc.check(0 <= rc <= 5 and not (rc and session_present), "CONNACK")
    return bytes((0x20, 2, 1 if session_present else 0, rc))


def encode_suback(pid, codes):
    """SUBACK (§3.9); codes are 0, 1, 2 or 0x80."""
    mc.check(0 < pid < 65536 and len(codes) > 0, "SUBACK")
    for c in codes:
        mc.check(c in (0, 1, 2, 0x80), "SUBACK return code %r" % (c,))
    return mc.packet(0x90, bytes((pid >> 8, pid & 0xFF)) + bytes(codes))


def decode_connect(b, n, hl):
    """R6: protocol "MQTT" level 4 (§3.1.2.1-2), reserved flag 0 (§3.1.2.3), will QoS/retain
    only with the will flag and will QoS < 3 (§3.1.2.6-7), password only with a user name
    (§3.1.2.9); then the payload fields in order (§3.1.3)."""
    if n < 10 or bytes(b[0:7]) != mc.PROTOCOL:
        if n >= 7 and bytes(b[0:6]) == mc.PROTOCOL[:6]:
            raise MQTTError(hl + 6, "protocol level %d is not 4" % b[6])
        raise MQTTError(hl, "not an MQTT 3.1.1 CONNECT header")
    flags = b[7]
    wq = flags >> 3 & 3
    if flags & 1:
        raise MQTTError(hl + 7, "CONNECT reserved flag set")
    if (not flags & 4 and (wq or flags & 0x20)) or wq == 3:
        raise MQTTError(hl + 7, "bad will flags")
    if flags & 0x40 and not flags & 0x80:
        raise MQTTError(hl + 7, "password without user name")
    cid, i = mc.str_at(b, 10, n, hl)
    will = None
    if flags & 4:
        wt, i = mc.str_at(b, i, n, hl)
        if not mc.topic_ok(wt):
            raise MQTTError(hl + i, "bad will topic %r" % wt)
        wp, i = mc.bin_at(b, i, n, hl)
        will = (wt, wp, wq, flags & 0x20 != 0)
    user = None
    password = None
    if flags & 0x80:
        user, i = mc.str_at(b, i, n, hl)
    if flags & 0x40:
        password, i = mc.bin_at(b, i, n, hl)
    mc.end_at(i, n, hl)
    return (mc.CONNECT, cid, b[8] << 8 | b[9], flags & 2 != 0, user, password, will)


def _decode_sub(t, b, n, hl):
    """R8 for SUBSCRIBE (§3.8.3: filter, then requested QoS with reserved bits 0) and
    UNSUBSCRIBE (§3.10.3: filters only); at least one filter."""
    pid = mc.pid_at(b, 0, n, hl)
    i = 2
    out = []
    if i == n:
        raise MQTTError(hl + i, "no topic filter")
    while i < n:
        f, j = mc.str_at(b, i, n, hl)
        if not mc.filter_ok(f):
            raise MQTTError(hl + i + 2, "bad topic filter %r" % f)
        if t == mc.UNSUBSCRIBE:
            out.append(f)
            i = j
            continue
        if j >= n:
            raise MQTTError(hl + j, "requested QoS missing")
        if b[j] > 2:
            raise MQTTError(hl + j, "bad requested QoS 0x%x" % b[j])
        out.append((f, b[j]))
        i = j + 1
    return (t, pid, out)


def decode_subscribe(b, n, hl):
    return _decode_sub(mc.SUBSCRIBE, b, n, hl)


def decode_unsubscribe(b, n, hl):
    return _decode_sub(mc.UNSUBSCRIBE, b, n, hl)


mc.DECODERS[mc.CONNECT] = decode_connect
mc.DECODERS[mc.SUBSCRIBE] = decode_subscribe
mc.DECODERS[mc.UNSUBSCRIBE] = decode_unsubscribe

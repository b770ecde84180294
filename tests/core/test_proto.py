# Protocol messages on both runtimes: golden bytes of every message, MAC verification, tamper,
# replay and stale-grant rejection, key wrapping, topics, describe().
import vec
from firmware_py import cbor, pricebook, proto as P, proto_text, rating
from firmware_py import pool as PL
from firmware_py.cloud_session import CloudSession
from firmware_py.device_session import DeviceSession

V = vec.load("proto")
KEY = vec.unhex(V["key"])
NEW_KEY = vec.unhex(V["new_key"])
DEV = V["dev"]
T = 1767225600


def _msg(j):
    out = {}
    for k, v in j.items():
        if type(v) is str and v.startswith("hex:"):
            v = vec.unhex(v[4:])
        elif k == "verdicts":
            v = dict((int(s), c) for s, c in v.items())
        out[k] = v
    return out


def _keys():
    return {1: KEY, 2: NEW_KEY}


def test_every_message_encodes_to_its_golden_bytes():
    assert len(V["messages"]) >= 17
    for m in V["messages"]:
        msg = _msg(m["msg"])
        assert P.encode(msg) == vec.unhex(m["body"]), m["name"]
        key = KEY if msg["kid"] == 1 else NEW_KEY
        assert P.seal(key, msg) == vec.unhex(m["envelope"]), m["name"]


def test_every_golden_message_decodes_and_verifies():
    seen = set()
    for m in V["messages"]:
        data = vec.unhex(m["envelope"])
        msg, body, tag = P.unseal(data)
        assert msg == _msg(m["msg"]), m["name"]
        assert body == vec.unhex(m["body"]) and len(tag) == 16
        code, got = P.check(data, _keys(), DEV)
        assert code == P.OK and got == msg, m["name"]
        seen.add(msg["type"])
    assert seen == set(P.MESSAGES)


def test_invalid_messages_fail_with_offset_and_reason():
    for r in V["invalid"]:
        exc = vec.raises(P.ProtoError, P.unseal, vec.unhex(r["hex"]))
        assert exc.offset == r["offset"], (r["name"], exc.offset)
        if r["reason"] is not None:
            assert exc.reason == r["reason"], (r["name"], exc.reason)
        assert str(exc).startswith("offset %d: " % r["offset"])
        code, why = P.check(vec.unhex(r["hex"]), _keys(), DEV)
        assert code == P.MALFORMED and why == str(exc)


def test_a_non_integer_message_type_is_malformed_never_raised():
    for mtype in ([1], {1: 2}, b"\x01", "u"):
        env = P.sign(KEY, cbor.dumps([mtype, 1, DEV]))
        exc = vec.raises(P.ProtoError, P.unseal, env)
        assert exc.reason.startswith("unknown message type"), (mtype, str(exc))
        assert P.check(env, _keys(), DEV) == (P.MALFORMED, str(exc))


def test_every_bit_flip_of_a_batch_is_rejected_never_raised():
    data = vec.unhex(V["messages"][0]["envelope"])
    assert len(data) == 56
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            code = P.check(bytes(bad), _keys(), DEV)[0]
            assert code in (P.MALFORMED, P.BAD_MAC, P.UNKNOWN_KID, P.WRONG_DEVICE), (i, bit)
    # truncations too
    for n in range(len(data)):
        assert P.check(data[:n], _keys(), DEV)[0] == P.MALFORMED


def test_wrong_key_unknown_kid_and_wrong_device():
    data = vec.unhex(V["messages"][0]["envelope"])
    assert P.check(data, {1: NEW_KEY}, DEV)[0] == P.BAD_MAC
    assert P.check(data, {2: KEY}, DEV)[0] == P.UNKNOWN_KID
    assert P.check(data, _keys(), DEV + 1)[0] == P.WRONG_DEVICE
    # the tag covers the body bytes as received: a re-signed body under another key differs
    msg, body, tag = P.unseal(data)
    assert P.verify(KEY, body, tag) and not P.verify(NEW_KEY, body, tag)


def test_key_wrap_vector_and_inverse():
    w = V["wrap"]
    old, new = vec.unhex(w["old"]), vec.unhex(w["new"])
    wrapped = P.wrap_key(old, w["dev"], w["cn"], w["kid"], new)
    assert wrapped == vec.unhex(w["wrapped"])
    assert P.unwrap_key(old, w["dev"], w["cn"], w["kid"], wrapped) == new
    assert wrapped != new
    # another command number or kid gives another keystream; no shared bytes with the key
    assert P.wrap_key(old, w["dev"], w["cn"] + 1, w["kid"], new) != wrapped
    assert P.wrap_key(old, w["dev"], w["cn"], w["kid"] + 1, new) != wrapped
    assert P.unwrap_key(NEW_KEY, w["dev"], w["cn"], w["kid"], wrapped) != new
    vec.raises(P.ProtoError, P.wrap_key, old, 1, 1, 2, bytes(31))


def test_topics():
    assert P.topic(7, 1042, "up/usage") == "em/7/1042/up/usage"
    assert P.parse_topic("em/7/1042/down/grant") == (7, 1042, "down/grant")
    for bad in ("em/7/1042/up", "em/x/1042/up/usage", "em/7/1042/side/usage", "xx/7/1/up/a",
                "em/07/1/up/usage", "em/7/1042/up/usage/extra"):
        vec.raises(P.ProtoError, P.parse_topic, bad)
    for mt, spec in P.MESSAGES.items():
        assert P.suffix(mt) == spec[1]
        assert P.uplink(mt) == spec[1].startswith("up/") != (mt in (P.ACK, P.GRANT, P.BOOK, P.CMD))


def test_encode_rejects_caller_mistakes():
    good = _msg(V["messages"][0]["msg"])
    for k, v in (("seq", -1), ("seq", 1 << 64), ("flags", 2), ("rounds", [[]]),
                 ("rounds", [[-1, 2]]), ("ucny", "5450"), ("dev", None)):
        bad = dict(good)
        bad[k] = v
        vec.raises(P.ProtoError, P.encode, bad)
    vec.raises(P.ProtoError, P.encode, {"type": 99})
    vec.raises(P.ProtoError, P.encode, {"type": P.CMD, "kid": 1, "dev": 1, "cn": 1, "op": P.OP_ROTATE})
    vec.raises(P.ProtoError, P.encode, {"type": P.CMD, "kid": 1, "dev": 1, "cn": 1, "op": 9})


def test_describe_says_what_and_whether_the_mac_verifies():
    data = vec.unhex(V["messages"][0]["envelope"])
    obj = cbor.loads(data)
    text = proto_text.describe(obj)
    assert text.startswith("usage (type 1)") and "seq:       100000" in text
    assert "[2, 4, 5, 6]" in text and "5450 uCNY" in text and "not checked" in text
    assert "MAC OK" in proto_text.describe(obj, KEY)
    assert "DOES NOT VERIFY" in proto_text.describe(obj, NEW_KEY)
    assert proto_text.describe([1, 2, 3]) == "[1, 2, 3]"
    assert "bare body" in proto_text.describe(cbor.loads(vec.unhex(V["messages"][3]["body"])))
    rot = proto_text.describe(cbor.loads(vec.unhex(V["messages"][15]["envelope"])))
    assert "4 (rotate)" in rot and "32 bytes" in rot


# ---------------------------------------------------------------------------- replay and staleness
def _pair(postpaid=0):
    book = pricebook.default()
    d = DeviceSession(7, DEV, 1, KEY, book, cfg={"postpaid": postpaid})
    c = CloudSession(7, DEV, {1: KEY}, books={book["version"]: book})
    pool = PL.Pool()
    pool.add(10000000)
    d.start(T)
    return d, c, pool


def _pub(acts, suffix=None):
    return [a[2] for a in acts if a[0] == "publish" and (suffix is None or a[1] == suffix)]


def _events(acts, name):
    return [a[2] for a in acts if a[0] == "event" and a[1] == name]


def test_replayed_and_tampered_grants_are_rejected():
    d, c, pool = _pair()
    req = _pub(d.connected(T), "up/lease")
    acts = c.receive(req[0], T, lambda s: False, pool, "up/lease")
    grant = _pub(acts, "down/grant")[0]
    assert not _events(d.receive(grant, T), "rejected")
    assert d.lease.lease == 1 and d.lease.total == 545000
    before = d.state()
    assert _events(d.receive(grant, T), "stale_grant") == [1]
    assert d.state() == before
    bad = bytearray(grant)
    bad[5] ^= 1
    assert [e[0] for e in _events(d.receive(bytes(bad), T), "rejected")] == [P.UNKNOWN_KID]  # byte 5: the kid
    assert d.state() == before
    # a grant signed under another key never reaches the lease
    forged = P.seal(NEW_KEY, dict(P.unseal(grant)[0], gn=99, total=10 ** 9))
    assert [e[0] for e in _events(d.receive(forged, T + 3), "rejected")] == [P.BAD_MAC]
    assert d.lease.total == 545000


def test_replayed_commands_and_control_messages_are_rejected():
    d, c, pool = _pair()
    sus = c.command(P.OP_SUSPEND, 1)
    assert _events(d.receive(sus, T), "suspended") == [1]
    assert d.allow(T) == 6
    res = c.command(P.OP_RESUME)
    assert _events(d.receive(res, T), "resumed")
    assert _events(d.receive(sus, T + 1), "stale_cmd") == [1]  # a replayed suspend
    assert d.suspended == 0
    req = _pub(d.connected(T), "up/lease")[0]
    assert c.receive(req, T, lambda s: False, pool)[0][0] == "pool"
    again = c.receive(req, T + 5, lambda s: False, pool)
    assert again[0][0] == "reject" and "replay" in again[0][1]
    # uplink on a downlink topic, downlink at the cloud
    assert c.receive(req, T, lambda s: False, pool, "up/usage")[0][0] == "reject"
    assert c.receive(sus, T, lambda s: False, pool)[0][0] == "reject"


def test_a_replayed_batch_is_booked_once():
    d, c, pool = _pair(postpaid=1)
    book = pricebook.default()
    rnd = rating.from_flags(book, asr="standard", intent=True, tts="standard", llm="chat")
    rec, _ = d.serve(rnd, T)
    n, acts = d.seal([rec], T)
    data = _pub(acts)[0]
    booked = set()
    first = c.receive(data, T, lambda s: s in booked)
    assert first[0][0] == "book" and first[0][1]["ucny"] == 5450 and first[0][1]["lease"] == 0
    booked.add(1)
    for _ in range(3):
        assert c.receive(data, T, lambda s: s in booked) == [("duplicate", 1)]
    ack = c.ack(lambda s: s in booked)
    assert ("acked", 1) in d.receive(ack, T)
    assert c.receive(data, T, lambda s: False) == [("duplicate", 1)]  # below the ack


def test_control_messages_pass_a_sliding_anti_replay_window():
    d, c, pool = _pair(postpaid=1)
    msgs = [_pub(d.status(T))[0] for _ in range(40)]  # n = 1..40 in boot 1

    def ok(i):
        return c.receive(msgs[i], T, lambda s: False)[0][0] == "event"
    assert ok(5) and ok(2) and ok(4)  # reordered: accepted once each
    assert not ok(2) and not ok(5)  # replays
    assert ok(39) and ok(8)  # n = 40, then n = 9: 31 below, inside the window
    assert not ok(6)  # n = 7 is 33 below the highest (40): outside the window
    assert ok(38) and not ok(38)
    d.start(T)  # a reboot: boot 2 opens a new window
    assert c.receive(_pub(d.status(T))[0], T, lambda s: False)[0][0] == "event"
    assert not ok(39)  # boot 1 is over


def test_the_cloud_rerates_and_flags_what_the_device_claims():
    book = pricebook.default()
    c = CloudSession(7, DEV, {1: KEY}, books={1: book})
    std = [2, 4, 5, 6]  # 5450 uCNY
    base = {"type": P.USAGE, "kid": 1, "dev": DEV, "boot": 1, "ver": 1, "lease": 0, "t0": T,
            "flags": 0}

    def booking(seq, ucny, rounds, ver=1):
        msg = dict(base, seq=seq, ucny=ucny, rounds=rounds, ver=ver)
        acts = c.receive(P.seal(KEY, msg), T, lambda s: False)
        assert acts[0][0] == "book"
        return acts[0][1]
    b = booking(1, 10900, [[0] + std, [30] + std])
    assert (b["verdict"], b["ucny"], b["device_ucny"]) == (P.V_OK, 10900, 10900)
    assert b["rounds"] == [(T, std, 5450), (T + 30, std, 5450)]
    # a device (or a firmware bug) that under-reports: booked at the core's rating, flagged
    b = booking(2, 100, [[0] + std])
    assert (b["verdict"], b["ucny"], b["device_ucny"]) == (P.V_MISMATCH, 5450, 100)
    # a round the core rejects (an agent without intent): booked at 0 for it, kept, flagged
    b = booking(3, 5450 + 5700, [[0] + std, [5, 1, 3, 8]])
    assert b["verdict"] == P.V_INVALID and b["ucny"] == 5450 and b["rounds"][1][2] is None
    # a price book the cloud does not know: the device's claim, flagged
    b = booking(4, 777, [[0] + std], ver=9)
    assert (b["verdict"], b["ucny"]) == (P.V_UNKNOWN_BOOK, 777)
    # the verdicts travel in the ack
    ack = P.unseal(c.ack(lambda s: s <= 4, {2: P.V_MISMATCH, 3: P.V_INVALID}))[0]
    assert ack["acked"] == 4 and ack["verdicts"] == {2: 1, 3: 2}

# firmware_py/mqtt_codec.py (+ the broker-side mqtt_server) on both runtimes: golden packets
# (tests/vectors/mqtt.json, with the MQTT 3.1.1 standard's own examples), streaming in every
# chunking, and malformed input.
import vec
from firmware_py import mqtt_codec as mc
from firmware_py import mqtt_server as ms

V = vec.load("mqtt")


def val(j):
    """The Python value of a vector's JSON value ({"b": hex} is bytes, lists stay lists)."""
    if type(j) is list:
        return [val(x) for x in j]
    if type(j) is dict:
        return vec.unhex(j["b"])
    return j


def as_json_shape(pkt):
    """A decoded packet with tuples turned into lists, to compare with a vector."""
    if type(pkt) is tuple or type(pkt) is list:
        return [as_json_shape(x) for x in pkt]
    return pkt


def encode(p):
    """Encode a vector's packet (list form) with the module's encoders."""
    t = p[0]
    if t == mc.CONNECT:
        will = None if p[6] is None else tuple(p[6])
        return mc.encode_connect(p[1], p[2], p[3], p[4], p[5], will)
    if t == mc.CONNACK:
        return ms.encode_connack(p[1], p[2])
    if t == mc.PUBLISH:
        return mc.encode_publish(p[1], p[2], p[3], p[4], p[5], p[6])
    if t in (mc.PUBACK, mc.PUBREC, mc.PUBREL, mc.PUBCOMP, mc.UNSUBACK):
        return mc.encode_ack(t, p[1])
    if t == mc.SUBSCRIBE:
        return mc.encode_subscribe(p[1], [tuple(x) for x in p[2]])
    if t == mc.SUBACK:
        return ms.encode_suback(p[1], p[2])
    if t == mc.UNSUBSCRIBE:
        return mc.encode_unsubscribe(p[1], p[2])
    return {mc.PINGREQ: mc.PINGREQ_PACKET, mc.PINGRESP: mc.PINGRESP_PACKET,
            mc.DISCONNECT: mc.DISCONNECT_PACKET}[t]


def test_remaining_length_table_of_the_spec():
    for n, hx in V["length"]:
        assert mc.encode_length(n) == vec.unhex(hx), n
    vec.raises(ValueError, mc.encode_length, 268435456)
    vec.raises(ValueError, mc.encode_length, -1)


def test_remaining_length_decodes_up_to_four_bytes():
    # the limit error reports the decoded length, so the largest lengths are checked without
    # allocating them (on a SUBACK: a PUBLISH over the limit is skipped, R11)
    for n, hx in V["length"]:
        data = b"\x90" + vec.unhex(hx)
        if n > 16384:
            e = vec.raises(mc.MQTTError, mc.Parser(16).feed, data)
            assert e.offset == 1 and ("length %d " % n) in e.reason, e.reason
    body = b"\x00\x01t" + b"x" * (16384 - 3)
    pkt = mc.decode_packet(b"\x30\x80\x80\x01" + body)
    assert pkt[1] == "t" and len(pkt[2]) == 16384 - 3


def test_valid_vectors_decode_to_the_packet():
    for v in V["valid"]:
        got = mc.decode_packet(vec.unhex(v["hex"]))
        assert as_json_shape(got) == val(v["packet"]), (v["note"], got)


def test_valid_vectors_encode_exactly():
    for v in V["valid"]:
        assert encode(val(v["packet"])) == vec.unhex(v["hex"]), v["note"]


def test_decoded_types():
    p = mc.decode_packet(vec.unhex("3a090003612f62000a6869"))
    assert type(p) is tuple and type(p[1]) is str and type(p[2]) is bytes
    assert p[5] is True and p[6] is False
    c = mc.decode_packet(vec.unhex(V["valid"][0]["hex"]))
    assert type(c[5]) is bytes and type(c[6]) is tuple and type(c[6][1]) is bytes


def test_invalid_vectors_raise_mqtt_error_with_offset_and_reason():
    for v in V["invalid"]:
        data = vec.unhex(v["hex"])
        e = vec.raises(mc.MQTTError, mc.decode_packet, data, v.get("max_size", 4096))
        assert e.offset == v["offset"], (v["note"], e.offset, e.reason)
        assert v["reason"] in e.reason, (v["note"], e.reason)
        assert str(e) == "offset %d: %s" % (e.offset, e.reason)
        assert isinstance(e, ValueError)


def stream():
    """Every valid vector back to back, and the packets expected from it."""
    data = b""
    want = []
    for v in V["valid"]:
        data += vec.unhex(v["hex"])
        want.append(val(v["packet"]))
    return data, want


def parse_chunks(data, sizes, max_size=64):
    """Feed data in chunks of the given sizes (cycled); the packets in order."""
    p = mc.Parser(max_size)
    out = []
    i = 0
    k = 0
    while i < len(data):
        chunk = data[i:i + sizes[k % len(sizes)]]
        i += len(chunk)
        k += 1
        pos = 0
        while pos < len(chunk):
            pkt, pos = p.feed(chunk, pos)
            if pkt is not None:
                out.append(as_json_shape(pkt))
    return out


def test_stream_one_byte_at_a_time():
    data, want = stream()
    assert parse_chunks(data, [1]) == want


def test_stream_in_assorted_chunkings():
    data, want = stream()
    for sizes in ([2], [3], [7], [1, 5, 2, 64], [len(data)], [13, 1, 1, 30]):
        assert parse_chunks(data, sizes) == want, sizes


def test_feed_respects_pos_and_end_over_a_memoryview():
    data, want = stream()
    buf = bytearray(data + b"\xff\xff")  # garbage after `end` is never read
    mv = memoryview(buf)
    p = mc.Parser(64)
    out = []
    pos = 0
    while pos < len(data):
        pkt, pos = p.feed(mv, pos, len(data))
        if pkt is not None:
            out.append(as_json_shape(pkt))
    assert out == want and pos == len(data)


def test_partial_packet_is_kept_and_none_returned():
    p = mc.Parser(16)
    pkt, pos = p.feed(b"\x40\x02\x00")
    assert pkt is None and pos == 3
    chunk = b"\x07\xc0"
    pkt, pos = p.feed(chunk)
    assert pkt == (mc.PUBACK, 7) and pos == 1  # stops after the packet; C0 not yet read
    assert p.feed(chunk, pos) == (None, 2)      # PINGREQ's first byte, waiting for its length
    assert p.feed(b"\x00") == ((mc.PINGREQ,), 1)
    p.feed(b"\x30\x05\x00")
    p.reset()                                   # a new connection: the partial packet is gone
    assert p.feed(b"\xd0\x00") == ((mc.PINGRESP,), 2)


def test_limit_is_checked_before_the_body_arrives():
    p = mc.Parser(8)
    assert p.feed(b"\x30\x08\x00\x01a12345") == ((mc.PUBLISH, "a", b"12345", 0, 0, False, False), 10)
    e = vec.raises(mc.MQTTError, p.feed, b"\x90\x09")
    assert e.offset == 1 and "over limit" in e.reason


CHUNKINGS = ([1], [2], [3], [7], [1, 5, 2, 64], [13, 1, 1, 30], [100000])


def test_oversized_publish_is_skipped_in_every_chunking_then_the_next_packet_parses():
    book = bytes(range(256)) * 5 + b"x" * 20  # 1300 bytes, a price book pushed to the device
    big1 = mc.encode_publish("d/book", book, 1, 300, True)
    big0 = mc.encode_publish("d/book", book[:40], 0)
    small = mc.encode_publish("d/x", b"hi", 1, 5)
    data = big1 + mc.encode_ack(mc.PUBACK, 7) + big0 + small
    want = [[mc.OVERSIZED, "d/book", 2 + 6 + 2 + 1300, 1, 300], [mc.PUBACK, 7],
            [mc.OVERSIZED, "d/book", 2 + 6 + 40, 0, 0], [mc.PUBLISH, "d/x", b"hi", 1, 5, False, False]]
    for sizes in CHUNKINGS:
        assert parse_chunks(data, sizes, 32) == want, sizes
    # the QoS 1 header (topic length, topic, packet id: 10 bytes) does not fit: topic None, pid 0
    want[0] = [mc.OVERSIZED, None, 1310, 1, 0]
    for sizes in CHUNKINGS:
        assert parse_chunks(data, sizes, 9) == want, sizes
    assert parse_chunks(big1 + mc.PINGRESP_PACKET, [3], 0) == [want[0], [mc.PINGRESP]]
    assert mc.decode_packet(big1, 40) == (mc.OVERSIZED, "d/book", 1310, 1, 300)
    assert mc.decode_packet(big1) == (mc.PUBLISH, "d/book", book, 1, 300, True, False)


def test_oversized_publish_header_still_follows_the_rules():
    for bad, reason in ((b"\x00\x03a/#", "bad topic"), (b"\x00\x03a\xffb", "UTF-8"),
                        (b"\x00\x01a\x00\x00", "packet id 0")):
        data = b"\x32\x30" + bad + b"z" * (0x30 - len(bad))
        for sizes in ([1], [len(data)]):
            p = mc.Parser(16)
            try:
                for i in range(0, len(data), sizes[0]):
                    p.feed(data[i:i + sizes[0]])
            except mc.MQTTError as e:
                assert reason in e.reason, (bad, e.reason)
            else:
                assert False, bad


def test_oversized_non_publish_is_still_a_protocol_error():
    for hx, limit in (("90050001010201", 4), ("40020007", 1), ("20020000", 1),
                      ("b0020007", 0), ("d000", 0)):
        data = vec.unhex(hx)
        p = mc.Parser(limit)
        if len(data) - 2 <= limit:
            assert p.feed(data)[0][0] == data[0] >> 4  # at the limit it is fine
            continue
        assert p.feed(data[:1]) == (None, 1)
        e = vec.raises(mc.MQTTError, p.feed, data[1:])
        assert e.offset == 1 and "over limit" in e.reason, (hx, e.reason)


def test_truncations_and_byte_flips_give_only_mqtt_errors():
    for v in V["valid"]:
        data = vec.unhex(v["hex"])
        for cut in range(len(data)):
            vec.raises(mc.MQTTError, mc.decode_packet, data[:cut])
        for i in range(len(data)):
            for flip in (0x01, 0x80, 0xff):
                bad = bytearray(data)
                bad[i] ^= flip
                try:
                    mc.decode_packet(bytes(bad))
                except mc.MQTTError:
                    pass


def test_large_publish_round_trip():
    payload = bytes(range(256)) * 20
    pkt = mc.encode_publish("em/1/2/up/usage", payload, 1, 513)
    assert pkt[1:3] == mc.encode_length(len(pkt) - 3)
    got = mc.decode_packet(pkt)
    assert got == (mc.PUBLISH, "em/1/2/up/usage", payload, 1, 513, False, False)


def test_encoders_refuse_what_3_1_1_cannot_carry():
    bad = [
        (mc.encode_publish, ("a/+", b"")), (mc.encode_publish, ("a/#", b"")),
        (mc.encode_publish, ("", b"")), (mc.encode_publish, ("a", b"", 1, 0)),
        (mc.encode_publish, ("a", b"", 0, 5)), (mc.encode_publish, ("a", b"", 0, 0, True)),
        (mc.encode_publish, ("a", b"", 3, 1)), (mc.encode_publish, ("a", b"", 1, 65536)),
        (mc.encode_publish, ("a\x00b", b"")), (mc.encode_publish, ("x" * 65536, b"")),
        (mc.encode_publish, ("a", "text")),
        (mc.encode_connect, ("c", 70000)), (mc.encode_connect, ("", 60, False)),
        (mc.encode_connect, ("c", 60, True, None, "pw")),
        (mc.encode_connect, ("c", 60, True, None, None, ("w/#", b"", 0, False))),
        (mc.encode_connect, ("c", 60, True, None, None, ("w", b"", 3, False))),
        (ms.encode_connack, (True, 5)), (ms.encode_connack, (False, 6)),
        (mc.encode_ack, (mc.PUBLISH, 1)), (mc.encode_ack, (mc.PUBACK, 0)),
        (mc.encode_subscribe, (1, [])), (mc.encode_subscribe, (1, [("a/#/b", 1)])),
        (mc.encode_subscribe, (1, [("a", 3)])), (mc.encode_subscribe, (0, [("a", 1)])),
        (ms.encode_suback, (1, [3])), (ms.encode_suback, (1, [])),
        (mc.encode_unsubscribe, (1, [])), (mc.encode_unsubscribe, (1, ["a+"])),
    ]
    for fn, args in bad:
        e = vec.raises(ValueError, fn, *args)
        assert not isinstance(e, mc.MQTTError), (fn, args)


def test_filters_and_topic_names():
    for f in ("#", "+", "a/#", "+/+", "em/+/+/up/#", "$share/raters/em/+/+/up/#", "/", "a//b"):
        assert mc.filter_ok(f), f
    for f in ("", "a#", "#/a", "a/#/b", "a+", "+a/b", "a\x00"):
        assert not mc.filter_ok(f), f
    assert mc.topic_ok("em/7/1042/up/usage") and not mc.topic_ok("em/+/x")


def test_str_and_bytes_passwords_encode_alike():
    a = mc.encode_connect("c", 60, True, "u", "pw")
    b = mc.encode_connect("c", 60, True, "u", b"pw")
    assert a == b and mc.decode_packet(a)[5] == b"pw"


def test_broker_side_types_need_the_server_extension():
    saved = dict(mc.DECODERS)
    try:
        mc.DECODERS.clear()  # as on a device, where mqtt_server is not imported
        for hx in ("100c00044d5154540402003c0000", "8206000100016101", "a20500010001" + "61"):
            e = vec.raises(mc.MQTTError, mc.decode_packet, vec.unhex(hx))
            assert e.offset == 0 and "client-to-server" in e.reason
    finally:
        mc.DECODERS.update(saved)

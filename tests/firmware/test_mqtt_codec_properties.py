"""Property tests (hypothesis) for firmware_py/mqtt_codec.py + mqtt_server.py on CPython:
encode/decode round trips in any chunking, and arbitrary bytes never crash the parser."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_py import mqtt_codec as mc
from firmware_py import mqtt_server as ms

level = st.text(st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)),
                max_size=6)
topics = st.lists(level, min_size=1, max_size=5).map("/".join).filter(lambda t: t != "")
pids = st.integers(1, 65535)


@st.composite
def publishes(draw):
    qos = draw(st.sampled_from([0, 1, 2]))
    pid = draw(pids) if qos else 0
    dup = draw(st.booleans()) if qos else False
    return (mc.PUBLISH, draw(topics), draw(st.binary(max_size=300)), qos, pid, dup,
            draw(st.booleans()))


@st.composite
def connects(draw):
    will = draw(st.none() | st.tuples(topics, st.binary(max_size=20), st.sampled_from([0, 1, 2]),
                                      st.booleans()))
    user = draw(st.none() | st.text(max_size=10).filter(lambda s: "\x00" not in s))
    password = draw(st.none() | st.binary(max_size=10)) if user is not None else None
    clean = draw(st.booleans())
    cid = draw(st.text(min_size=0 if clean else 1, max_size=23).filter(lambda s: "\x00" not in s))
    return (mc.CONNECT, cid, draw(st.integers(0, 65535)), clean, user, password, will)


def encode(p):
    t = p[0]
    if t == mc.PUBLISH:
        return mc.encode_publish(*p[1:])
    return mc.encode_connect(*p[1:])


def feed_chunks(data: bytes, cuts: list[int]):
    parser = mc.Parser(1024)
    out = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(bounds, bounds[1:]):
        pos = a
        while pos < b:
            pkt, pos = parser.feed(data, pos, b)
            if pkt is not None:
                out.append(pkt)
    return out


@settings(max_examples=300)
@given(st.lists(publishes() | connects(), min_size=1, max_size=5),
       st.lists(st.integers(0, 10_000), max_size=20))
def test_round_trip_in_any_chunking(pkts, cuts) -> None:
    data = b"".join(encode(p) for p in pkts)
    assert feed_chunks(data, cuts) == [p for p in pkts]


@settings(max_examples=500)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=10))
def test_arbitrary_bytes_only_ever_raise_mqtt_error(data: bytes, cuts: list[int]) -> None:
    try:
        feed_chunks(data, cuts)
    except mc.MQTTError as e:
        assert 0 <= e.offset and e.reason


@given(st.lists(st.tuples(topics, st.sampled_from([0, 1, 2])), min_size=1, max_size=4), pids)
def test_subscribe_and_suback_round_trip(filters, pid) -> None:
    assert mc.decode_packet(mc.encode_subscribe(pid, filters)) == (mc.SUBSCRIBE, pid, filters)
    codes = [q for _, q in filters]
    assert mc.decode_packet(ms.encode_suback(pid, codes)) == (mc.SUBACK, pid, codes)

# Two-slot power-safe state store: runs on CPython (pytest) and on the MicroPython unix port.
import binascii
import os

from firmware_py import state
from firmware_py.state import State
import vec

S1 = {0: 17, 1: b"\x01\x02"}
S2 = {0: 18, 1: b"\x01\x02", 2: 2 ** 40}
S3 = {0: 19, 1: b"", 3: -5}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_pack_layout_and_reasons():
    b = state.pack(5, {0: 1})
    assert binascii.hexlify(b[:7]) == b"53050000000300" and b[7:10] == b"\xa1\x00\x01"
    assert len(b) == 14 and state.unpack(b) == (5, {0: 1}, "ok")
    assert state.unpack(b"")[2] == "empty"
    assert state.unpack(b"\x00" + b[1:])[2] == "magic"
    assert state.unpack(b + b"\x00")[2] == "length"
    assert state.unpack(b[:-1] + bytes((b[-1] ^ 1,)))[2] == "crc"
    bad = b"\x53\x01\x00\x00\x00\x01\x00\xff"  # CRC right, body not CBOR
    assert state.unpack(bad + binascii.crc32(bad).to_bytes(4, "little"))[2] == "cbor"
    for v in ([1], 7):
        try:
            state.pack(1, v)
            raise AssertionError("accepted a non-dict")
        except ValueError:
            pass


def test_fresh_save_load_alternates():
    d = vec.tmpdir('ts')
    try:
        s = State(d + "/st")
        assert s.load() is None and s.report == {"a": "empty", "b": "empty", "gen": 0}
        s.save(S1)
        s.save(S2)
        assert sorted(os.listdir(d)) == ["st.a", "st.b"]
        assert State(d + "/st").load() == S2
        s.save(S3)
        t = State(d + "/st")
        assert t.load() == S3 and t.report["gen"] == 3
        assert s.bytes_written == sum(len(state.pack(1, x)) for x in (S1, S2, S3))
    finally:
        vec.rmtree(d)


def test_cut_or_flip_anywhere_in_a_write_keeps_previous_state():
    d = vec.tmpdir('ts')
    try:
        p = d + "/st"
        s = State(p)
        s.save(S1)
        s.save(S2)  # .a holds S1 (gen 1), .b holds S2 (gen 2)
        before = read(p + ".a")
        s.save(S3)  # goes into .a
        new = read(p + ".a")
        assert new != before and read(p + ".b") == state.pack(2, S2)
        for k in range(len(new) + 1):
            write(p + ".a", new[:k])
            want = S3 if k == len(new) else S2
            assert State(p).load() == want, k
        for i in range(len(new) * 8):
            b = bytearray(new)
            b[i >> 3] ^= 1 << (i & 7)
            write(p + ".a", bytes(b))
            t = State(p)
            assert t.load() == S2 and t.report["a"] != "ok", i
        # the next save after a torn write overwrites the torn slot, not the good one
        write(p + ".a", new[:5])
        t = State(p)
        t.load()
        t.save({0: 20})
        assert read(p + ".b") == state.pack(2, S2) and State(p).load() == {0: 20}
    finally:
        vec.rmtree(d)


def test_flip_at_rest_in_newest_falls_back_and_reports():
    d = vec.tmpdir('ts')
    try:
        p = d + "/st"
        s = State(p)
        s.save(S1)
        s.save(S2)
        good = read(p + ".b")
        for i in range(0, len(good) * 8, 5):
            b = bytearray(good)
            b[i >> 3] ^= 1 << (i & 7)
            write(p + ".b", bytes(b))
            t = State(p)
            assert t.load() == S1 and t.report["b"] != "ok" and t.report["a"] == "ok"
            t.save(S3)  # repairs by writing the damaged slot
            assert State(p).load() == S3 and read(p + ".a") == state.pack(1, S1)
            write(p + ".b", good)
    finally:
        vec.rmtree(d)

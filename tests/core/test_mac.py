# firmware_py/mac.py on both runtimes: RFC 4231 vectors (tests/vectors/hmac.json) and rules M1-M3.
# hmac_sha256/equal are the runtime's C hmac on CPython (M3); the *_pure functions, which
# MicroPython runs, are checked here on CPython as well.
import vec
from firmware_py import mac

CASES = vec.load("hmac")["cases"]
HMACS = (mac.hmac_sha256, mac.hmac_sha256_pure)
EQUALS = (mac.equal, mac.equal_pure)


def test_rfc4231_hmac_sha256():
    assert [c["case"] for c in CASES] == [1, 2, 3, 4, 5, 6, 7]
    for h in HMACS:
        for c in CASES:
            got = h(vec.unhex(c["key"]), vec.unhex(c["data"]))
            assert len(got) == 32
            want = vec.unhex(c["hmac_sha256"])
            if c["truncated"]:
                assert got[:len(want)] == want, c["case"]
            else:
                assert got == want, c["case"]


def test_fast_path_equals_pure():
    # M3: whatever hmac_sha256 runs on, it is the pure function (keys around the block size).
    for n in (0, 1, 31, 32, 63, 64, 65, 100, 200):
        key = bytes((i * 7 + n) & 255 for i in range(n))
        for msg in (b"", b"m", bytes(range(256)) * 3):
            assert mac.hmac_sha256(key, msg) == mac.hmac_sha256_pure(key, msg)
            assert mac.tag(key, msg) == mac.hmac_sha256_pure(key, msg)[:16]


def test_tag_is_the_first_16_bytes():
    for c in CASES:
        key, data = vec.unhex(c["key"]), vec.unhex(c["data"])
        t = mac.tag(key, data)
        assert len(t) == 16 == mac.TAG_LEN
        assert t == mac.hmac_sha256(key, data)[:16]
        assert t == vec.unhex(c["hmac_sha256"])[:16]


def test_accepts_bytearray_and_memoryview():
    c = CASES[1]
    key, data = vec.unhex(c["key"]), vec.unhex(c["data"])
    want = vec.unhex(c["hmac_sha256"])
    for h in HMACS:
        assert h(bytearray(key), memoryview(data)) == want
        assert h(memoryview(key), bytearray(data)) == want


def test_block_sized_and_empty_keys():
    # M1: a 64-byte key is used as is; a 65-byte key is hashed first, so differs from its prefix.
    k64 = bytes(range(64))
    for h in HMACS:
        assert h(k64, b"m") != h(k64 + b"\x00", b"m")
        assert h(b"", b"") == vec.unhex("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad")


def test_equal():
    a = vec.unhex("00112233445566778899aabbccddeeff")
    for eq in EQUALS:
        assert eq(a, a) is True
        assert eq(a, bytearray(a)) is True
        assert eq(a, memoryview(a)) is True
        assert eq(b"", b"") is True
        for i in range(16):
            b = bytearray(a)
            b[i] ^= 0x01
            assert eq(a, bytes(b)) is False
        assert eq(a, a[:15]) is False
        assert eq(a, a + b"\x00") is False


def test_rejects_non_bytes():
    for h in HMACS:
        for args in (("k", b"m"), (b"k", "m"), (None, b"m"), (b"k", 5)):
            vec.raises(ValueError, h, *args)
    for eq in EQUALS:
        vec.raises(ValueError, eq, "a", "a")
        vec.raises(ValueError, eq, b"a", None)

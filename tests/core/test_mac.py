# firmware_py/mac.py on both runtimes: RFC 4231 vectors (tests/vectors/hmac.json) and rules M1-M2.
import vec
from firmware_py import mac

CASES = vec.load("hmac")["cases"]


def test_rfc4231_hmac_sha256():
    assert [c["case"] for c in CASES] == [1, 2, 3, 4, 5, 6, 7]
    for c in CASES:
        got = mac.hmac_sha256(vec.unhex(c["key"]), vec.unhex(c["data"]))
        assert len(got) == 32
        want = vec.unhex(c["hmac_sha256"])
        if c["truncated"]:
            assert got[:len(want)] == want, c["case"]
        else:
            assert got == want, c["case"]


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
    want = mac.hmac_sha256(key, data)
    assert mac.hmac_sha256(bytearray(key), memoryview(data)) == want


def test_block_sized_and_empty_keys():
    # M1: a 64-byte key is used as is; a 65-byte key is hashed first, so differs from its prefix.
    k64 = bytes(range(64))
    assert mac.hmac_sha256(k64, b"m") != mac.hmac_sha256(k64 + b"\x00", b"m")
    assert mac.hmac_sha256(b"", b"") == vec.unhex(
        "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad")


def test_equal():
    a = vec.unhex("00112233445566778899aabbccddeeff")
    assert mac.equal(a, a)
    assert mac.equal(a, bytearray(a))
    assert mac.equal(b"", b"")
    for i in range(16):
        b = bytearray(a)
        b[i] ^= 0x01
        assert not mac.equal(a, bytes(b))
    assert not mac.equal(a, a[:15])
    assert not mac.equal(a, a + b"\x00")


def test_rejects_non_bytes():
    for args in (("k", b"m"), (b"k", "m"), (None, b"m")):
        vec.raises(ValueError, mac.hmac_sha256, *args)
    vec.raises(ValueError, mac.equal, "a", "a")

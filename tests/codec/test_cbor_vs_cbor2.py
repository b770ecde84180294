"""firmware_py.cbor against cbor2 (the reference) on CPython, with hypothesis.

- Encoding is byte-identical to cbor2 with canonical=True wherever the two agree on map key
  order (a map whose keys are all >= 0 or all < 0), and byte-identical to cbor2 given maps
  pre-sorted in RFC 8949 section 4.2.1 order everywhere (cbor2's canonical mode sorts keys
  length-first, the RFC 7049 rule; see the docstring of firmware_py/cbor.py).
- Round trips: loads(dumps(v)) == v, and each library decodes the other's output.
- Never crash, never corrupt: any byte string either decodes to a value that re-encodes to
  exactly those bytes, or raises CBORError; never any other exception.
"""
from __future__ import annotations

import cbor2
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from firmware_py import cbor, cbor_diag

U64 = 2 ** 64
ints = st.one_of(
    st.integers(-U64, U64 - 1),
    st.integers(-300, 300),
    st.sampled_from([23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, U64 - 1,
                     -24, -25, -256, -257, -65537, -(2**32) - 1, -U64]),
)
scalars = st.one_of(ints, st.binary(max_size=300), st.text(max_size=40), st.booleans(), st.none())


def values(keys: st.SearchStrategy[int]) -> st.SearchStrategy[object]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=8),
            st.dictionaries(keys, inner, max_size=6),
        ),
        max_leaves=40,
    )


any_value = values(ints)
# maps whose keys are all non-negative or all negative: cbor2 canonical sorts them as RFC 8949 does
one_sign_keys = st.one_of(st.integers(0, U64 - 1), st.integers(0, 300))
one_sign_value = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.dictionaries(st.integers(0, U64 - 1), inner, max_size=6),
        st.dictionaries(st.integers(-U64, -1), inner, max_size=6),
    ),
    max_leaves=40,
)


def rfc8949_sorted(v: object) -> object:
    """v with every dict rebuilt in RFC 8949 4.2.1 key order (bytewise order of encodings)."""
    if isinstance(v, list):
        return [rfc8949_sorted(x) for x in v]
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: cbor2.dumps(k))
        return {k: rfc8949_sorted(v[k]) for k in keys}
    return v


def same(a: object, b: object) -> bool:
    """Equality that also compares types (1 != True, b'' != '')."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def deep(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((deep(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((deep(x) for x in v.values()), default=0)
    return 0


@settings(max_examples=600)
@given(one_sign_value)
def test_identical_to_cbor2_canonical(v: object) -> None:
    assert cbor.dumps(v) == cbor2.dumps(v, canonical=True)


@settings(max_examples=600)
@given(any_value)
def test_identical_to_cbor2_with_rfc8949_key_order(v: object) -> None:
    assert cbor.dumps(v) == cbor2.dumps(rfc8949_sorted(v))


def test_the_one_known_difference_from_cbor2_canonical() -> None:
    v = {24: 0, -1: 0}
    assert cbor.dumps(v).hex() == "a21818002000"            # RFC 8949: 0x18.. < 0x20
    assert cbor2.dumps(v, canonical=True).hex() == "a22000181800"  # length-first
    # ...and our decoder refuses the length-first form as out of canonical order
    try:
        cbor.loads(bytes.fromhex("a22000181800"))
    except cbor.CBORError as e:
        assert e.offset == 3 and "canonical order" in e.reason
    else:
        raise AssertionError("accepted a map out of RFC 8949 order")


@settings(max_examples=600)
@given(any_value)
def test_round_trip_both_ways(v: object) -> None:
    assume(deep(v) <= 16)
    enc = cbor.dumps(v)
    assert same(cbor.loads(enc), v)
    assert same(cbor2.loads(enc), v)
    assert same(cbor.loads(cbor2.dumps(rfc8949_sorted(v))), v)
    assert cbor_diag.diag(enc) == cbor_diag.notation(v)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=3), min_size=1, max_size=6))
def test_tuples_and_bytearrays_encode_like_lists_and_bytes(parts: list[bytes]) -> None:
    assert cbor.dumps(tuple(bytearray(p) for p in parts)) == cbor.dumps(parts)


def check_never_crash_never_corrupt(data: bytes) -> None:
    try:
        v = cbor.loads(data)
    except cbor.CBORError as e:
        assert 0 <= e.offset <= len(data), (e.offset, len(data))
        assert e.reason and str(e) == f"offset {e.offset}: {e.reason}"
        return
    assert cbor.dumps(v) == data  # accepted => canonical: re-encodes to exactly the input
    assert same(cbor2.loads(data), v)  # and the reference reads the same value


@settings(max_examples=5000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
@example(b"")
@example(b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff")
@example(b"\x81" * 5000)
def test_arbitrary_bytes_never_crash_never_corrupt(data: bytes) -> None:
    check_never_crash_never_corrupt(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes flipped, inserted, deleted or cut off."""
    buf = bytearray(cbor.dumps(draw(any_value)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            buf.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete" and buf:
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_encodings_never_crash_never_corrupt(data: bytes) -> None:
    check_never_crash_never_corrupt(data)


@settings(max_examples=600)
@given(one_sign_value)
def test_accepts_everything_deterministic_cbor2_produces(v: object) -> None:
    # completeness: strictness must not reject a valid deterministic encoding of the subset
    assume(deep(v) <= 16)
    data = cbor2.dumps(v, canonical=True)
    assert same(cbor.loads(data), v)


@settings(max_examples=500)
@given(st.one_of(st.floats(), st.sets(st.integers(), min_size=1),
                 st.dictionaries(st.text(), st.integers(), min_size=1),
                 st.integers(U64, 2 * U64), st.integers(-2 * U64, -U64 - 1)),
       st.integers(0, 3))
def test_encoder_rejects_unsupported_values_with_encode_error(bad: object, nesting: int) -> None:
    v: object = bad
    for _ in range(nesting):
        v = [0, {1: v}]
    try:
        cbor.dumps(v)
    except cbor.EncodeError as e:
        assert e.path == "$" + "[1]{1}" * nesting, e.path
    else:
        raise AssertionError(f"encoded {v!r}")

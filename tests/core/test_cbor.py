# firmware_py/cbor.py on both runtimes: golden vectors (tests/vectors/cbor.json) plus the rules
# of the module docstring that vectors cannot express (encoder errors, input types, limits).
import vec
from firmware_py import cbor, cbor_diag

V = vec.load("cbor")


def val(j):
    """The Python value of a vector's JSON value ({"b": hex} bytes, {"m": pairs} map)."""
    if type(j) is list:
        return [val(x) for x in j]
    if type(j) is dict:
        if "b" in j:
            return vec.unhex(j["b"])
        return dict((k, val(x)) for k, x in j["m"])
    return j


def test_valid_vectors_encode_exactly():
    for v in V["valid"]:
        assert cbor.dumps(val(v["value"])) == vec.unhex(v["hex"]), v["note"]


def test_valid_vectors_decode_to_the_value():
    for v in V["valid"]:
        got = cbor.loads(vec.unhex(v["hex"]))
        assert got == val(v["value"]), v["note"]
        assert cbor.dumps(got) == vec.unhex(v["hex"]), v["note"]


def test_valid_vectors_diagnostic_notation():
    for v in V["valid"]:
        assert cbor_diag.diag(vec.unhex(v["hex"])) == v["diag"], v["note"]


def test_decoded_types_are_exact():
    got = cbor.loads(vec.unhex("84406080a0"))
    assert [type(x) for x in got] == [bytes, str, list, dict]
    assert type(cbor.loads(b"\xf5")) is bool and type(cbor.loads(b"\x01")) is int


def test_invalid_vectors_raise_cbor_error_with_offset_and_reason():
    for v in V["invalid"]:
        lim = {}
        for k in ("max_depth", "max_items", "max_bytes"):
            if k in v:
                lim[k] = v[k]
        data = vec.unhex(v["hex"])
        e = vec.raises(cbor.CBORError, lambda: cbor.loads(data, **lim))
        assert e.offset == v["offset"], (v["note"], e.offset, v["offset"])
        assert v["reason"] in e.reason, (v["note"], e.reason)
        assert str(e) == "offset %d: %s" % (e.offset, e.reason)
        assert isinstance(e, ValueError)


def test_diag_of_invalid_input_is_the_same_error():
    e = vec.raises(cbor.CBORError, cbor_diag.diag, vec.unhex("8201f97e00"))
    assert e.offset == 2 and "floating-point" in e.reason


def test_loads_accepts_bytearray_and_memoryview():
    data = vec.unhex("a201820203024101")
    want = {1: [2, 3], 2: b"\x01"}
    assert cbor.loads(bytearray(data)) == want
    assert cbor.loads(memoryview(data)) == want
    assert cbor.loads(memoryview(b"xx" + data)[2:]) == want


def test_loads_rejects_non_bytes_with_plain_value_error():
    for bad in ("00", 0, None, [0]):
        e = vec.raises(ValueError, cbor.loads, bad)
        assert not isinstance(e, cbor.CBORError)


def test_limits_allow_exactly_the_limit():
    assert cbor.loads(vec.unhex("8181818100"), max_depth=4) == [[[[0]]]]
    vec.raises(cbor.CBORError, cbor.loads, vec.unhex("8181818100"), 3)
    assert cbor.loads(vec.unhex("83010203"), 16, 3) == [1, 2, 3]
    assert cbor.loads(vec.unhex("83010203"), 16, 65536, 4) == [1, 2, 3]
    assert cbor.loads(b"\x07", 0) == 7  # scalars have depth 0


def test_encoder_accepts_the_subset_types():
    assert cbor.dumps((1, 2)) == cbor.dumps([1, 2]) == vec.unhex("820102")
    assert cbor.dumps(bytearray(b"\x01")) == vec.unhex("4101")
    assert cbor.dumps(memoryview(b"\x01")) == vec.unhex("4101")
    assert cbor.dumps(2 ** 64 - 1) == vec.unhex("1bffffffffffffffff")
    assert cbor.dumps(-(2 ** 64)) == vec.unhex("3bffffffffffffffff")


def test_encoder_errors_name_the_type_and_path():
    cases = [
        (1.5, "$", "float"),
        (set([1]), "$", "set"),
        ({"a": 1}, "$", "str"),
        ({b"a": 1}, "$", "bytes"),
        ({True: 1}, "$", "bool"),
        (2 ** 64, "$", "outside"),
        (-(2 ** 64) - 1, "$", "outside"),
        ([1, [2, {3: 0.5}]], "$[1][1]{3}", "float"),
        ({1: [0, 1, object()]}, "${1}[2]", "object"),
    ]
    for value, path, word in cases:
        e = vec.raises(cbor.EncodeError, cbor.dumps, value)
        assert isinstance(e, ValueError)
        assert e.path == path and word in e.reason, (value, e.path, e.reason)
        assert str(e) == e.path + ": " + e.reason


def test_encoder_refuses_cycles_and_absurd_depth():
    a = [1]
    a.append(a)
    e = vec.raises(cbor.EncodeError, cbor.dumps, a)
    assert "deeper" in e.reason
    deep = 0
    for _ in range(65):
        deep = [deep]
    vec.raises(cbor.EncodeError, cbor.dumps, deep)


def test_map_key_order_is_rfc8949_bytewise():
    keys = [0, 23, 24, 255, 256, 65536, 2 ** 32, -1, -24, -25, -257, -(2 ** 64)]
    m = {}
    for k in reversed(keys):
        m[k] = 0
    enc = cbor.dumps(m)
    items = []
    i = 1
    while i < len(enc):
        n = 1 + {24: 1, 25: 2, 26: 4, 27: 8}.get(enc[i] & 31, 0)
        items.append(enc[i:i + n])
        i += n + 1  # skip the 1-byte value 0
    assert items == sorted(items)
    assert sorted(cbor.loads(enc)) == sorted(keys)


def test_utf8_checker_matches_rfc3629():
    good = ["", "a", "\u00fc", "\u6c34", "\U00010151", "\U0010ffff", "\ud7ff", "\ue000"]
    for s in good:
        assert cbor._utf8_ok(s.encode()), s
    for h in ("c080", "c1bf", "e08080", "eda080", "edbfbf", "f08f8080", "f4908080", "f5808080",
              "ff", "80", "c3", "e282", "f09080", "c328", "e228a1"):
        assert not cbor._utf8_ok(vec.unhex(h)), h


def test_diag_escapes_and_notation():
    assert cbor_diag.notation([1, b"\x01", {1: None}]) == "[1, h'01', {1: null}]"
    assert cbor_diag.notation({-1: 0, 24: 0}) == "{24: 0, -1: 0}"
    assert cbor_diag.notation('a"b\\c\n') == '"a\\"b\\\\c\\u000a"'

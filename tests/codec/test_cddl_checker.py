"""tools/cddl.py, the CDDL (RFC 8610) checker for our subset, on small schemas.

Each case is (schema, value, valid?). The cases include those on which PyPI's pycddl 0.6.4 was
found wrong (see tools/cddl.py), so they pin the reason we use our own checker.
"""
from __future__ import annotations

import pytest

from firmware_py import cbor
from edgemeter.tools.cddl import CDDLError, CDDLSyntaxError, Schema

CASES = [
    # arrays, occurrence, labels
    ("a = [x: uint, ? y: bstr]", [1], True),
    ("a = [x: uint, ? y: bstr]", [1, b"a"], True),
    ("a = [x: uint, ? y: bstr]", [1, 2], False),
    ("a = [x: uint, ? y: bstr]", [1, b"a", b"b"], False),
    ("a = [x: uint, ? y: bstr]", [], False),
    ("a = [x: uint, * y: int]", [1, -2, 3], True),
    ("a = [x: uint, * y: int]", [1], True),
    ("a = [x: uint, + y: int]", [1], False),
    ("a = [x: uint, + y: int]", [1, 2], True),
    ("a = [2*3 uint]", [1], False),
    ("a = [2*3 uint]", [1, 2, 3], True),
    ("a = [2*3 uint]", [1, 2, 3, 4], False),
    ("a = [*2 uint, bstr]", [1, 2, b""], True),
    ("a = [*2 uint, bstr]", [1, 2, 3, b""], False),
    ("a = [* uint, uint]", [1, 2, 3], True),  # backtracking: the star gives one back
    ("a = [x: uint]", [1, 2], False),
    ("a = [x: uint, rs: [* r]]\nr = [uint, uint]", [1, [[1, 2], [3, 4]]], True),
    ("a = [x: uint, rs: [* r]]\nr = [uint, uint]", [1, [[1, 2], [3]]], False),
    ("a = [x: uint, rs: [+ [uint, uint, * uint]], ? lease: uint]", [1, [[1, 2, 3], [4, 5]]], True),
    ("a = [x: uint, rs: [+ [uint, uint, * uint]], ? lease: uint]", [1, [[1, 2, 3], [4, 5]], 7], True),
    ("a = [x: uint, rs: [+ [uint, uint, * uint]], ? lease: uint]", [1, []], False),
    # nested groups and group rules
    ("a = [x: uint, ? (y: bstr, z: uint)]", [1, b"", 3], True),
    ("a = [x: uint, ? (y: bstr, z: uint)]", [1], True),
    ("a = [x: uint, ? (y: bstr, z: uint)]", [1, b""], False),
    ("a = [hdr, body: bstr]\nhdr = (kind: uint, seq: uint)", [1, 2, b""], True),
    ("a = [hdr, body: bstr]\nhdr = (kind: uint, seq: uint)", [1, b""], False),
    ("a = [* pair]\npair = (uint, tstr)", [1, "a", 2, "b"], True),
    ("a = [* pair]\npair = (uint, tstr)", [1, "a", 2], False),
    ("a = [1, uint // 2, tstr]", [2, "x"], True),
    ("a = [1, uint // 2, tstr]", [2, 3], False),
    # primitives, literals, ranges, controls
    ("a = [nint, nil, bool, 0..23]", [-1, None, False, 23], True),
    ("a = [nint, nil, bool, 0..23]", [-1, None, False, 24], False),
    ("a = [nint, nil, bool, 0..23]", [0, None, False, 1], False),
    ("a = [0...24]", [24], False),
    ("a = [lo..hi]\nlo = -5\nhi = max\nmax = 5", [-5], True),
    ("a = [lo..hi]\nlo = -5\nhi = max\nmax = 5", [6], False),
    ("a = [uint .le 10, int .ge -5]", [10, -5], True),
    ("a = [uint .le 10, int .ge -5]", [11, -5], False),
    ("a = [uint .le 10, int .ge -5]", [1, -6], False),
    ("a = [uint .lt 10, int .gt -5, int .ne 0, int .eq 3]", [9, -4, 1, 3], True),
    ("a = [uint .lt 10, int .gt -5, int .ne 0, int .eq 3]", [9, -4, 0, 3], False),
    ("a = [uint, bstr .size 16]", [1, b"a" * 16], True),
    ("a = [uint, bstr .size 16]", [1, b"a" * 15], False),
    ("a = [bstr .size (1..4), tstr .size (0..2)]", [b"a", "\u00fc"], True),
    ("a = [bstr .size (1..4), tstr .size (0..2)]", [b"a" * 5, ""], False),
    ("a = [bstr .size (1..4), tstr .size (0..2)]", [b"a", "abc"], False),
    ("a = [uint .size 2]", [65535], True),
    ("a = [uint .size 2]", [65536], False),
    ("a = [kind: 1, body: bstr .cbor inner]\ninner = [uint, uint]", [1, cbor.dumps([1, 2])], True),
    ("a = [kind: 1, body: bstr .cbor inner]\ninner = [uint, uint]", [1, cbor.dumps([1, "x"])], False),
    ("a = [kind: 1, body: bstr .cbor inner]\ninner = [uint, uint]", [1, b"\x82\x01"], False),
    ("a = [\"v1\", h'0102', true]", ["v1", b"\x01\x02", True], True),
    ("a = [\"v1\", h'0102', true]", ["v1", b"\x01\x02", 1], False),
    ("a = [x: uint, y: uint / nil]", [1, None], True),
    ("a = [x: uint, y: (uint / nil)]", [1, "x"], False),
    ("a = [u64, i65]\nu64 = uint .le 18446744073709551615\ni65 = int", [2**64 - 1, -2**64], True),
    ("a = [kind]\nkind = &(usage: 1, ack: 2)", [2], True),
    ("a = [kind]\nkind = &(usage: 1, ack: 2)", [3], False),
    ("a = [kind]\nkind = &kinds\nkinds = (usage: 1, ack: 2)", [1], True),
    ("a = [any, any]", [[], {}], True),
    ("a = [uint]", [True], False),  # bool is not an int on the wire
    ("a = [int]", [False], False),
    ("a = [bstr]", ["x"], False),
    # maps with integer keys
    ("a = {1: uint, ? 2: tstr, ? -1: bool}", {1: 5, -1: True}, True),
    ("a = {1: uint, ? 2: tstr, ? -1: bool}", {1: 5, 3: True}, False),
    ("a = {1: uint, ? 2: tstr, ? -1: bool}", {2: "x"}, False),
    ("a = {1: uint, ? 2: tstr, ? -1: bool}", {1: -5}, False),
    ("a = {* uint => int}", {1: 2, 3: -4}, True),
    ("a = {* uint => int}", {-1: 2}, False),
    ("a = {* uint => int}", {}, True),
    ("a = {+ uint => int}", {}, False),
    ("a = {1: uint, * uint => tstr}", {1: 2, 5: "x"}, True),
    ("a = {1: uint, * uint => tstr}", {1: 2, 5: 3}, False),
    ("a = {hdr, ? 9: bstr}\nhdr = (1: uint, 2: uint)", {1: 0, 2: 0}, True),
    ("a = {hdr, ? 9: bstr}\nhdr = (1: uint, 2: uint)", {1: 0}, False),
    ("a = {1: 1, 2: uint // 1: 2, 3: tstr}", {1: 2, 3: "x"}, True),
    ("a = {1: 1, 2: uint // 1: 2, 3: tstr}", {1: 1, 3: "x"}, False),
    ("a = [~hdr, 3: uint]\nhdr = [uint, uint]", [1, 2, 3], True),
    ("a = b / c\nb = [1, uint]\nc = [2, tstr]  ; comments are ignored", [2, "x"], True),
    ("a = b / c\nb = [1, uint]\nc = [2, tstr]", [2, 3], False),
]


@pytest.mark.parametrize("schema, value, valid", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_small_schemas(schema: str, value: object, valid: bool) -> None:
    s = Schema(schema)
    err = s.check(value)
    assert (err is None) == valid, err
    if valid:
        s.validate(value)
        s.validate_cbor(cbor.dumps(value))
    else:
        with pytest.raises(CDDLError):
            s.validate(value)


def test_errors_name_the_deepest_path() -> None:
    s = Schema("batch = [dev: uint, rounds: [* round]]\nround = [dt: uint .le 3600, feat: uint]")
    with pytest.raises(CDDLError) as e:
        s.validate([7, [[10, 1], [4000, 2]]])
    assert e.value.path == "$[1][1][0]" and ".le 3600" in e.value.reason
    with pytest.raises(CDDLError) as e:
        s.validate([7, [[10, 1], [5, "x"]]])
    assert e.value.path == "$[1][1][1]" and "expected uint" in e.value.reason
    m = Schema("m = {1: uint, 2: [* bstr]}")
    with pytest.raises(CDDLError) as e:
        m.validate({1: 1, 2: [b"", 3]})
    assert e.value.path == "${2}[1]"


def test_rule_selection_and_validate_cbor() -> None:
    s = Schema("ack = [1, seq: uint]\ngrant = [2, units: uint]")
    s.validate([2, 5], rule="grant")
    assert s.check([2, 5]) is not None  # the root is the first rule
    s.validate_cbor(bytes.fromhex("820105"))
    with pytest.raises(CDDLError) as e:
        s.validate_cbor(bytes.fromhex("8201190005"))  # non-shortest: the checker decodes strictly
    assert "non-shortest" in e.value.reason
    with pytest.raises(ValueError):
        s.check([1, 1], rule="nope")


@pytest.mark.parametrize("bad", [
    "a = [x: undefined-rule]",
    "a = [float]",
    "a = [uint .regexp \"x\"]",
    "$socket = uint",
    "a<T> = [T]",
    "a = [#6.1(uint)]",
    "a = [uint]\na = [tstr]",
    "a /= uint",
    "",
    "a = [uint",
])
def test_unsupported_or_broken_schemas_are_refused(bad: str) -> None:
    with pytest.raises(CDDLSyntaxError):
        Schema(bad)

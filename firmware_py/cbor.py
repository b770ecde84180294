"""Deterministic CBOR (RFC 8949) for the subset edgemeter puts on the wire.

The subset: unsigned and negative integers (-2**64 .. 2**64-1), byte strings, UTF-8 text
strings, arrays, maps whose keys are integers, and the simple values false/true/null.
Nothing else exists on our wire: no floats, tags, undefined, other simple values, indefinite
lengths, or byte/text map keys.

Encoding (dumps) follows RFC 8949 section 4.2.1 "core deterministic encoding":
  E1. integers, lengths and counts use the shortest head (section 4.2.1, first bullet);
  E2. map keys are sorted by the bytewise lexicographic order of their encodings, which for
      integer keys is 0, 1, .. 2**64-1, then -1, -2, .. -2**64;
  E3. definite lengths only.
NOTE: cbor2's `canonical=True` sorts map keys length-first (the older RFC 7049 section 3.9 rule).
The two orders differ only for maps mixing a negative key with a key whose head is longer
(e.g. {24: .., -1: ..}); we follow RFC 8949, as docs/protocol.cddl and docs/protocol.md say.

Decoding (loads) is strict, so that an item has exactly one encoding and a MAC or hash over
received bytes means the same as one over re-encoded values (the decoder is deterministic):
  D1. the input is exactly one item: trailing bytes are an error;
  D2. heads must be shortest (non-shortest integer/length encodings are rejected);
  D3. no indefinite lengths, reserved additional information (28-30) or stray "break";
  D4. no tags, no floats, no simple values other than false/true/null;
  D5. map keys must be integers, strictly increasing in the E2 order: a duplicate key and a
      key out of canonical order are both errors (no map dumps would not have produced);
  D6. text must be well-formed UTF-8 (RFC 3629: no overlongs, surrogates or code points
      above U+10FFFF), checked in Python where the runtime's decoder is lax (MicroPython);
  D7. limits: containers nest at most max_depth deep (a scalar is depth 0, [1] depth 1); an
      array or map declares at most max_items entries (map entries are key/value pairs);
      input longer than max_bytes (if given) is refused before decoding. A declared length
      longer than the remaining input is refused before anything is allocated, so memory is
      bounded by the input length.
Arrays decode to list, maps to dict, byte strings to bytes.

Exceptions:
    ValueError
     +-- WireError     a peer's bytes are invalid: .offset, .reason, str() "offset N: reason"
     |    +-- CBORError  not one item of the subset; never KeyError/IndexError/struct.error
     |    (proto.ProtoError derives from it; mqtt_codec.MQTTError copies it: no cbor import)
     +-- EncodeError   our caller passed a value outside the subset (float, set, str-keyed
                       dict, int out of range, too deep): .path (e.g. "$[2][5]"), .reason
                       when firmware_py.cbor_diag is loaded (else "$" and a general reason).
loads() given something other than bytes/bytearray/memoryview raises a plain ValueError."""
import struct

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

_ENC_MAX_DEPTH = const(64)  # guards against cyclic values; deeper than any message we send
U64 = 1 << 64  # integers of the subset are -U64 .. U64 - 1
_pack = struct.pack
_unpack_from = struct.unpack_from


class WireError(ValueError):
    """A peer's bytes are invalid: .offset (-1: no byte), .reason (see Exceptions above)."""

    def __init__(self, offset, reason):
        super().__init__("offset %d: %s" % (offset, reason))
        self.offset = offset
        self.reason = reason

    def __str__(self):
        return "offset %d: %s" % (self.offset, self.reason)


class CBORError(WireError):
    """The input is not one valid CBOR item of our subset (see D1-D7)."""


class EncodeError(ValueError):
    """dumps() was given a value outside the subset; .path locates it, .reason says why."""

    def __init__(self, path, reason):
        super().__init__("%s: %s" % (path, reason))
        self.path = path
        self.reason = reason

    def __str__(self):
        return "%s: %s" % (self.path, self.reason)


# ---------------------------------------------------------------------------------- encoder
# Builtins bound to module names for the encoder's hot path: on MicroPython a builtin is found
# by searching the builtins table after a miss in the module's globals, several times the cost
# of a module name (see rating.py).
_type, _int_t, _list_t, _tuple_t, _bytes_t, _bytearray_t, _str_t, _dict_t, _len = (
    type, int, list, tuple, bytes, bytearray, str, dict, len)


def _head(buf, mt, v):
    # E1: shortest head for major type bits `mt` (already shifted) and argument v >= 0.
    if v < 24:
        buf.append(mt | v)
    elif v < 0x100:
        buf.append(mt | 24)
        buf.append(v)
    elif v < 0x10000:
        buf += _pack(">BH", mt | 25, v)
    elif v < 0x100000000:
        buf += _pack(">BI", mt | 26, v)
    elif v < U64:
        buf += _pack(">BQ", mt | 27, v)
    else:
        raise ValueError


def key_order(k):
    """E2 for integer keys: the bytewise order of their encodings is this integer order."""
    return k if k >= 0 else U64 - 1 - k


def _enc(o, buf, depth):
    # Raises a bare ValueError/TypeError on anything outside the subset; dumps() then walks
    # the value again (EXPLAIN, when cbor_diag is loaded) to say where and why, so the hot path
    # carries no path.
    t = _type(o)
    if t is _int_t:
        if o >= 0:
            if o < 24:
                buf.append(o)
            else:
                _head(buf, 0x00, o)
        else:
            _head(buf, 0x20, -1 - o)
    elif t is _list_t or t is _tuple_t:
        if depth <= 0:
            raise ValueError
        _head(buf, 0x80, _len(o))
        depth -= 1
        for x in o:
            if _type(x) is _int_t and 0 <= x < 24:
                buf.append(x)
            else:
                _enc(x, buf, depth)
    elif t is _bytes_t or t is _bytearray_t:
        _head(buf, 0x40, _len(o))
        buf += o
    elif t is _str_t:
        b = o.encode()
        _head(buf, 0x60, _len(b))
        buf += b
    elif t is _dict_t:
        if depth <= 0:
            raise ValueError
        _head(buf, 0xA0, _len(o))
        depth -= 1
        for k in o:
            if _type(k) is not _int_t:
                raise ValueError
        for k in sorted(o, key=key_order):
            _enc(k, buf, depth)
            _enc(o[k], buf, depth)
    elif o is None:
        buf.append(0xF6)
    elif o is False:
        buf.append(0xF4)
    elif o is True:
        buf.append(0xF5)
    elif t is memoryview:
        _enc(bytes(o), buf, depth)
    elif isinstance(o, int) and not isinstance(o, bool):
        _enc(int(o), buf, depth)  # int subclasses (IntEnum-like) encode as their value
    else:
        raise ValueError


# Filled by firmware_py.cbor_diag when it is imported: [explain(obj, limit) -> (path, reason)].
# The hook keeps this module free of its debugging extension, which a device image leaves out.
EXPLAIN = []  # type: list


def dumps(obj):
    """The deterministic encoding (E1-E3) of obj; EncodeError names what is unsupported."""
    buf = bytearray()
    try:
        _enc(obj, buf, _ENC_MAX_DEPTH)
    except (ValueError, TypeError, RuntimeError, OverflowError):
        r = None
        if EXPLAIN:     # where and why: the debugging extension, when loaded
            try:
                r = EXPLAIN[0](obj, _ENC_MAX_DEPTH)
            except RuntimeError:  # a small C stack (a 10 KiB board) ends the recursion first
                r = ("$", "nested deeper than %d or than the stack allows" % _ENC_MAX_DEPTH)
        raise EncodeError(*(r or ("$", "value outside the CBOR subset")))
    return _bytes_t(buf)


# ---------------------------------------------------------------------------------- decoder

def _utf8_ok(b):
    """True when b is well-formed UTF-8 per RFC 3629 section 4 (D6)."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif 0xE0 <= c <= 0xEF:
            k = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            k = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return False
        if i + k >= n or not lo <= b[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= b[j] <= 0xBF:
                return False
        i += k + 1
    return True


try:
    _LAX_UTF8 = len(b"\xed\xa0\x80".decode()) > 0  # an encoded surrogate: strict decoders refuse
except UnicodeError:
    _LAX_UTF8 = False

_EOF = "unexpected end of input"
# additional information 24..27: (struct format, width, smallest value that needs it) (D2)
_WIDE = ((">B", 1, 24), (">H", 2, 0x100), (">I", 4, 0x10000), (">Q", 8, 0x100000000))


def _array(d, i, n, v, depth, maxn, start):
    # The v items of the array whose head starts at d[start] and ends at d[i] (D7 checks here).
    if v > maxn:
        raise CBORError(start, "%d entries exceed max_items %d" % (v, maxn))
    if v > n - i:
        raise CBORError(start, "%d entries cannot fit in the remaining %d bytes" % (v, n - i))
    if depth <= 0:
        raise CBORError(start, "nesting deeper than max_depth")
    return _entries(d, i, n, v, depth - 1, maxn, [])


def _entries(d, i, n, v, depth, maxn, out):
    # Append the next v items (each at most depth deep) to out; return (out, offset after them).
    app = out.append
    for _ in range(v):
        # fast paths: the small unsigned ints and short arrays that usage rounds are made of
        b = d[i] if i < n else 0xFF
        if b < 24:
            app(b)
            i += 1
        elif b == 24 and i + 1 < n and d[i + 1] >= 24:
            app(d[i + 1])
            i += 2
        elif b == 25 and i + 2 < n and d[i + 1]:
            app(d[i + 1] << 8 | d[i + 2])
            i += 3
        elif 0x80 <= b < 0x98:
            k = b - 0x80
            j = i + 1
            if depth <= 0 or k > maxn or k > n - j:
                x, i = _array(d, j, n, k, depth, maxn, i)   # raises
                app(x)
                continue
            # A short array that passed _array's checks (a round, an entry of one): its leading
            # one- to three-byte uints (item ids, counts, seconds since t0) are read right
            # here, without a call; from its first other entry on, _entries as _array would.
            x = []
            while k:
                c = d[j] if j < n else 0xFF
                if c < 24:
                    x.append(c)
                    j += 1
                elif c == 24 and j + 1 < n and d[j + 1] >= 24:
                    x.append(d[j + 1])
                    j += 2
                elif c == 25 and j + 2 < n and d[j + 1]:
                    x.append(d[j + 1] << 8 | d[j + 2])
                    j += 3
                else:
                    break
                k -= 1
            if k:
                x, j = _entries(d, j, n, k, depth - 1, maxn, x)
            app(x)
            i = j
        else:
            x, i = _item(d, i, n, depth, maxn)
            app(x)
    return out, i


def _simple(ai, start):
    # Major type 7 (D4): false, true, null; anything else is an error at start.
    if ai == 20:
        return False
    if ai == 21:
        return True
    if ai == 22:
        return None
    if 25 <= ai <= 27:
        raise CBORError(start, "floating-point values not allowed")
    if ai == 31:
        raise CBORError(start, "unexpected break (indefinite lengths not allowed)")
    raise CBORError(start, "simple value not allowed (only false/true/null)")


def _item(d, i, n, depth, maxn):
    # Decode the item starting at d[i]; return (value, offset after it).
    if i >= n:
        raise CBORError(i, _EOF)
    start = i
    ib = d[i]
    mt = ib >> 5
    ai = ib & 31
    i += 1
    if mt == 7:
        return _simple(ai, start), i
    if mt == 6:
        raise CBORError(start, "tags not allowed")
    if ai < 24:
        v = ai
    elif ai < 28:
        fmt, w, lo = _WIDE[ai - 24]
        if i + w > n:
            raise CBORError(n, _EOF)
        v = _unpack_from(fmt, d, i)[0]
        i += w
        if v < lo:
            raise CBORError(start, "non-shortest encoding of argument %d" % v)
    elif ai == 31:
        raise CBORError(start, "indefinite length not allowed")
    else:
        raise CBORError(start, "reserved additional information %d" % ai)

    if mt == 0:
        return v, i
    if mt == 1:
        return -1 - v, i
    if mt == 2 or mt == 3:
        end = i + v
        if end > n:
            raise CBORError(start, "string of %d bytes runs past the end of input" % v)
        s = d[i:end]
        if mt == 2:
            return s, end
        try:
            t = s.decode()
        except UnicodeError:
            raise CBORError(start, "invalid UTF-8 in text string")
        if _LAX_UTF8 and len(t) != v and not _utf8_ok(s):
            raise CBORError(start, "invalid UTF-8 in text string")
        return t, end
    # arrays and maps
    if mt == 4:
        return _array(d, i, n, v, depth, maxn, start)
    return _map(d, i, n, v, depth, maxn, start)


def _map(d, i, n, v, depth, maxn, start):
    # A map of v entries whose head ended at d[i] (D5, D7); return (dict, offset after it).
    if v > maxn:
        raise CBORError(start, "%d entries exceed max_items %d" % (v, maxn))
    if v + v > n - i:
        raise CBORError(start, "%d entries cannot fit in the remaining %d bytes" % (v, n - i))
    if depth <= 0:
        raise CBORError(start, "nesting deeper than max_depth")
    depth -= 1
    m = {}
    prev = None
    for _ in range(v):
        ks = i
        if i >= n:
            raise CBORError(i, _EOF)
        if d[i] >= 0x40:
            raise CBORError(i, "map key must be an integer")
        k, i = _item(d, i, n, depth, maxn)
        kb = d[ks:i]
        if prev is not None and kb <= prev:
            if kb == prev:
                raise CBORError(ks, "duplicate map key %d" % k)
            raise CBORError(ks, "map key %d out of canonical order" % k)
        prev = kb
        m[k], i = _item(d, i, n, depth, maxn)
    return m, i


def loads(data, max_depth=16, max_items=65536, max_bytes=None):
    """The value of the single CBOR item in data, decoded strictly (D1-D7); else CBORError."""
    t = type(data)
    if t is not bytes:
        if t is bytearray or t is memoryview:
            data = bytes(data)
        else:
            raise ValueError("cbor.loads needs bytes, not %s" % t.__name__)
    n = len(data)
    if max_bytes is not None and n > max_bytes:
        raise CBORError(max_bytes, "input of %d bytes exceeds max_bytes %d" % (n, max_bytes))
    try:
        obj, i = _item(data, 0, n, max_depth, max_items)
    except RuntimeError:  # RecursionError on CPython; MicroPython raises RuntimeError itself
        raise CBORError(0, "nesting too deep for this runtime's stack")
    if i != n:
        raise CBORError(i, "trailing bytes after the item (%d)" % (n - i))
    return obj

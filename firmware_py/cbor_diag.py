"""RFC 8949 section 8 diagnostic notation for values of firmware_py.cbor's subset.

An optional extension of firmware_py/cbor.py that a device image leaves out: notation() and
diag() here, and, once this module is imported, cbor.dumps() says where and why a value is
outside the subset (explain(), registered in cbor.EXPLAIN; without it EncodeError says less).
It imports cbor, never the reverse. Output rules:
  N1. integers in decimal; byte strings as h'..' in lowercase hex; text in double quotes with
      JSON escapes for the quote, the backslash and U+0000-U+001F, U+007F (as \\u00XX);
  N2. arrays "[a, b]", maps "{k: v}" with keys in the deterministic order (cbor.py rule E2),
      so a value has one notation as it has one encoding; false, true, null as such.
"""
from binascii import hexlify

from firmware_py import cbor
from firmware_py.cbor import U64, key_order


def _text_diag(s):
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif o < 0x20 or o == 0x7F:
            out.append("\\u%04x" % o)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _diag(o, out):
    t = type(o)
    if t is int:
        out.append(str(o))
    elif t is bytes:
        out.append("h'" + hexlify(o).decode() + "'")
    elif t is str:
        out.append(_text_diag(o))
    elif t is list:
        out.append("[")
        for i in range(len(o)):
            if i:
                out.append(", ")
            _diag(o[i], out)
        out.append("]")
    elif t is dict:
        out.append("{")
        first = True
        for k in sorted(o, key=key_order):
            if not first:
                out.append(", ")
            first = False
            out.append(str(k) + ": ")
            _diag(o[k], out)
        out.append("}")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    else:
        out.append("null")



def notation(obj):
    """Diagnostic notation of obj, a value as cbor.loads returns them (N1-N2)."""
    out = []  # type: list
    _diag(obj, out)
    return "".join(out)


def explain(obj, limit):
    """Mirror of cbor._enc: (path, reason) of the first value in obj outside the subset (or
    nested deeper than limit), or None."""
    return _explain(obj, "$", limit, limit)


def _explain(o, path, depth, limit):
    t = type(o)
    if o is None or o is True or o is False or t is bytes or t is bytearray or t is memoryview:
        return None
    if isinstance(o, int):
        if -U64 <= o < U64:
            return None
        return path, "int %d outside -2**64..2**64-1" % o
    if t is str:
        try:
            o.encode()
        except UnicodeError:
            return path, "text is not encodable as UTF-8 (lone surrogate?)"
        return None
    if t is list or t is tuple or t is dict:
        if depth <= 0:
            return path, "nested deeper than %d" % limit
        if t is dict:
            for k in o:
                if type(k) is not int:
                    return path, "map key %r of type %s: only int keys" % (k, type(k).__name__)
            for k in o:
                r = _explain(k, path + "{key %d}" % k, depth - 1, limit) or \
                    _explain(o[k], path + "{%d}" % k, depth - 1, limit)
                if r:
                    return r
        else:
            for i in range(len(o)):
                r = _explain(o[i], path + "[%d]" % i, depth - 1, limit)
                if r:
                    return r
        return None
    return path, "unsupported type %s" % t.__name__


def diag(data, max_depth=16, max_items=65536):
    """Diagnostic notation of the one item in data, e.g. "[1, h'01', {1: true}]"; CBORError
    (with offset and reason) when data is not a valid item of the subset."""
    return notation(cbor.loads(data, max_depth, max_items))


if explain not in cbor.EXPLAIN:
    cbor.EXPLAIN.append(explain)

"""Readable text of protocol messages for people debugging devices (`edgemeter decode`): an
optional extension of firmware_py/proto.py that a device image leaves out (it imports proto,
never the reverse). Output: one line naming the message and its topic, one line per field
with flags, ops, policies and verdicts spelled out, one line per usage round, then the tag,
whether it verifies under the given key, and the sizes.
"""
from binascii import hexlify

from firmware_py import cbor, cbor_diag, mac
from firmware_py import proto as P


def describe(obj, key=None):
    """Readable text of a decoded envelope (as cbor.loads returns it) or of a bare body;
    anything else in CBOR diagnostic notation. With key, says whether the tag verifies.
    A malformed message raises proto.ProtoError (offset and reason)."""
    if type(obj) is list and len(obj) == 2 and type(obj[0]) is bytes and type(obj[1]) is bytes:
        b, t = obj
        if len(t) != mac.TAG_LEN:
            try:
                P.decode_body(b)
            except ValueError:  # two byte strings, not ours: any CBOR item of the subset
                return cbor_diag.notation(obj)
            raise P.ProtoError(len(cbor.dumps(obj)) - len(t) - 1,
                               "tag is %d bytes, expected 16" % len(t))
        msg = P.decode_body(b, 1 + len(cbor.dumps(len(b))))
        if key is None:
            verdict = "not checked (give --key HEX)"
        elif P.verify(key, b, t):
            verdict = "OK"
        else:
            verdict = "DOES NOT VERIFY"
        tail = ["tag: h'%s' (%d bytes), MAC %s" % (_hex(t), len(t), verdict),
                "size: body %d bytes, envelope %d bytes" % (len(b), len(cbor.dumps(obj)))]
    else:
        try:
            msg = P.decode_body(cbor.dumps(obj))
        except ValueError:  # not one of our messages: any CBOR item of the subset
            return cbor_diag.notation(obj)
        tail = ["(a bare body: no envelope, no tag)"]
    spec = P.MESSAGES[msg["type"]]
    out = ["%s (type %d), topic em/<ws>/%d/%s" % (spec[0], msg["type"], msg["dev"], spec[1])]
    for k in spec[2]:
        if k not in msg:
            continue
        v = msg[k]
        out.append("  %-10s %s" % (k + ":", _field_text(msg, k, v)))
        if k == "rounds":
            for i, r in enumerate(v):
                out.append("    #%-3d t0+%-5d %s" % (i, r[0], cbor_diag.notation(r[1:])))
    return "\n".join(out + tail)


def _hex(b):
    return hexlify(b).decode()


def _field_text(msg, k, v):
    mt = msg["type"]
    if k == "rounds":
        return "%d" % len(v)
    if k == "version":
        try:
            return '"%s"' % bytes(v).decode()
        except UnicodeError:
            return "h'%s' (not UTF-8)" % _hex(v)
    if k in ("book", "key"):
        return "%d bytes h'%s'" % (len(v), _hex(v[:16]) + ("..." if len(v) > 16 else ""))
    if k == "verdicts":
        return ", ".join("seq %d %s" % (s, P.VERDICTS[c] if c < len(P.VERDICTS) else c)
                         for s, c in sorted(v.items())) or "none"
    if k == "op":
        return "%d (%s)" % (v, P.OPS[v] if v < len(P.OPS) else "?")
    if k == "policy":
        return "%d (%s)" % (v, ("stop", "continue", "degrade")[v])
    if k == "flags":
        names = P.flag_names(mt)
        on = [n for i, n in enumerate(names) if v >> i & 1]
        return "%d%s" % (v, " (" + ", ".join(on) + ")" if on else "")
    if k == "lease" and v == 0 and mt == P.USAGE:
        return "0 (postpaid / no lease)"
    if k == "ucny":
        return "%d uCNY" % v
    return "%d" % v

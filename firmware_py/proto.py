"""The device-cloud wire protocol: message arrays, the signed envelope, topics, key wrapping.

Every message is the deterministic CBOR of an array [type, kid, dev, ...fields] (the table
MESSAGES below is the whole layout; docs/protocol.cddl is the same as a schema), carried in
the signed envelope of docs/protocol.md, Envelope:

    envelope = [body: bstr, tag: bstr .size 16]     tag = mac.tag(key[kid], body)

  W1. The tag is checked over the body bytes exactly as received, in constant time, with the
      key the body's kid names (keys rotate; see W5). Nothing in a body is acted on before.
  W2. Decoding is strict: the CBOR layer's rules (canonical, no floats/tags, limits), then
      the message's arity, field types and ranges here. Malformed input raises ProtoError
      (or cbor.CBORError) with the byte offset and the reason, never KeyError/IndexError.
  W3. Uplink freshness: usage batches by (dev, seq), booked once forever (docs/protocol.md, Sequencing);
      control messages (lease, status) by (boot, n), n counting from 1 in each boot.
      Downlink freshness: grants by gn, commands by cn, price books by version, each strictly
      increasing per device; acks are cumulative, so an old one is harmless.
  W4. A usage round is [dt, *rating.round_to_wire(rnd)] with dt = its time minus the batch's
      t0 (seconds, >= 0); a batch holds rounds of one price-book version and one lease.
  W5. Key rotation: the new 32-byte key travels in a ROTATE command XORed with the keystream
      HMAC-SHA-256(old key, "em-kw" || cbor([dev, cn, new kid])): a passive observer of the
      broker without the old key learns nothing of it; the command's tag protects it.
Topics: em/<ws>/<dev>/up/{usage,lease,status,firmware} and em/<ws>/<dev>/down/{ack,grant,cmd,book}.

Exceptions: ValueError -> ProtoError (.offset, .reason) for malformed messages; caller
mistakes (a field missing or out of range when encoding) raise ProtoError too, offset -1.
"""
from firmware_py import cbor, mac

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

USAGE = const(1)
ACK = const(2)
LEASE_REQUEST = const(3)
LEASE_RENEW = const(4)
LEASE_RETURN = const(5)
GRANT = const(6)
BOOK = const(7)
CMD = const(8)
STATUS = const(9)
FIRMWARE = const(10)
MAX_VERSION = const(32)   # bytes of a firmware version string

# usage flags
RETX = const(1)
# grant flags
FINAL = const(1)
CLOSED = const(2)
# status flags
S_SUSPENDED = const(1)
S_LAPSED = const(2)
S_DEGRADED = const(4)
S_ROLLBACK = const(8)
S_FINAL = const(16)
S_POSTPAID = const(32)
# command ops
OP_REPORT = const(1)
OP_SUSPEND = const(2)
OP_RESUME = const(3)
OP_ROTATE = const(4)
OPS = ("", "report", "suspend", "resume", "rotate")
# per-batch verdicts in acks
V_OK = const(0)
V_MISMATCH = const(1)
V_INVALID = const(2)
V_UNKNOWN_BOOK = const(3)
VERDICTS = ("ok", "mismatch", "invalid round", "unknown price book")

KEY_LEN = const(32)
MAX_MSG = const(8192)
MAX_ROUNDS = const(1024)
_U64 = (1 << 64) - 1

# The registry: one entry per message type, the whole of what the code knows of it (docs/protocol.md,
# How to extend). type: (name, topic suffix (its direction: up/ or down/), fields after the type,
# how many trailing fields are optional, names of the flags bits (bit 0 first), the method of the
# receiving session that handles it: CloudSession for uplink, DeviceSession for downlink).
MESSAGES = {
    USAGE: ("usage", "up/usage",
            ("kid", "dev", "boot", "seq", "ver", "lease", "t0", "flags", "ucny", "rounds"), 0,
            ("retransmission",), "_usage"),
    ACK: ("ack", "down/ack", ("kid", "dev", "acked", "verdicts"), 1, (), "_ack"),
    LEASE_REQUEST: ("lease-request", "up/lease", ("kid", "dev", "boot", "n", "want"), 0, (), "_lease_msg"),
    LEASE_RENEW: ("lease-renew", "up/lease",
                  ("kid", "dev", "boot", "n", "lease", "used", "want"), 0, (), "_lease_msg"),
    LEASE_RETURN: ("lease-return", "up/lease", ("kid", "dev", "boot", "n", "lease", "used"), 0, (),
                   "_lease_msg"),
    GRANT: ("grant", "down/grant", ("kid", "dev", "gn", "lease", "total", "validity", "flags",
                                    "policy", "allowance", "renew_at", "t"), 0, ("final", "closed"), "_grant"),
    BOOK: ("book", "down/book", ("kid", "dev", "ver", "book"), 0, (), "_book"),
    CMD: ("cmd", "down/cmd", ("kid", "dev", "cn", "op", "arg", "key"), 2, (), "_cmd"),
    STATUS: ("status", "up/status", ("kid", "dev", "boot", "n", "t", "seq", "acked", "lease",
                                     "used", "remaining", "ver", "flags"), 0,
             ("suspended", "lapsed", "degraded", "clock rollback", "final", "postpaid"), "_status"),
    FIRMWARE: ("firmware", "up/firmware", ("kid", "dev", "boot", "n", "version"), 0, (), "_firmware"),
}
# field kinds other than uint: i int, b bytes, r rounds, v verdict map
_KIND = {"remaining": "i", "book": "b", "key": "b", "rounds": "r", "verdicts": "v", "version": "b"}
_CHECKED = tuple(_KIND) + ("flags",)   # fields _check must see (a uint may be wrong for them)


class ProtoError(cbor.WireError):
    """A message that is not one of ours (or a caller's field out of range: offset -1)."""


def topic(ws, dev, suffix):
    """The MQTT topic of a message kind, e.g. topic(7, 1042, "up/usage")."""
    return "em/%d/%d/%s" % (ws, dev, suffix)


def parse_topic(t):
    """(ws, dev, suffix) of em/<ws>/<dev>/<up|down>/<kind>; ProtoError otherwise."""
    p = t.split("/")
    if (len(p) != 5 or p[0] != "em" or p[3] not in ("up", "down") or not p[1].isdigit()
            or not p[2].isdigit() or p[1][:1] == "0" or p[2][:1] == "0"):
        raise ProtoError(-1, "not an edgemeter topic: %r" % (t,))
    return int(p[1]), int(p[2]), p[3] + "/" + p[4]


def suffix(mtype):
    return MESSAGES[mtype][1]


def uplink(mtype):
    """True for a message a device sends (its topic suffix is up/...)."""
    return MESSAGES[mtype][1][:3] == "up/"


def flag_names(mtype):
    """The names of a message's flags bits, bit 0 first (empty: no flags field)."""
    return MESSAGES[mtype][4]


def handler(mtype):
    """The name of the receiving session's method that handles the message."""
    return MESSAGES[mtype][5]


def name(mtype):
    m = MESSAGES.get(mtype)
    return m[0] if m else "type %r" % (mtype,)


# ------------------------------------------------------------------------------ encoding
# module names for the builtins _check and body() test against on every field (see rating.py)
_type, _int_t, _bytes_t, _bytearray_t, _dict_t, _list_t, _len = (
    type, int, bytes, bytearray, dict, list, len)


def _check(mtype, k, v, off):
    kind = _KIND.get(k, "u")
    t = _type(v)
    if kind == "u":
        ok = t is _int_t and 0 <= v <= _U64
    elif kind == "i":
        ok = t is _int_t and -_U64 - 1 <= v <= _U64
    elif kind == "b":
        ok = (t is _bytes_t or t is _bytearray_t) and (k != "key" or len(v) == KEY_LEN) and \
            (k != "version" or _len(v) <= MAX_VERSION)
    elif kind == "v":
        ok = t is _dict_t and all(type(s) is int and s >= 0 and type(c) is int and 0 <= c < 256
                               for s, c in v.items())
    else:
        ok = t is _list_t and _len(v) <= MAX_ROUNDS
        for r in v if ok else ():
            if _type(r) is not _list_t or not r or _type(r[0]) is not _int_t or not 0 <= r[0] <= _U64:
                ok = False
                break
    if not ok:
        shown = "%d bytes" % len(v) if t is _bytes_t or t is _bytearray_t else repr(v)
        raise ProtoError(off, "%s.%s: %s is not a valid %s" % (name(mtype), k, shown, {
            "u": "uint", "i": "int", "b": "byte string" if k != "key" else "32-byte key",
            "v": "map of seq to verdict", "r": "array of [dt, *round] arrays"}[kind]))
    if k == "flags" and v >> len(MESSAGES[mtype][4]):
        raise ProtoError(off, "%s.flags: unknown bits in %d" % (name(mtype), v))


def body(msg):
    """The array of a message dict {"type": T, field: value, ...} (caller mistakes raise)."""
    mtype = msg.get("type")
    spec = MESSAGES.get(mtype)
    if spec is None:
        raise ProtoError(-1, "unknown message type %r" % (mtype,))
    fields, opt = spec[2], spec[3]
    arr = [mtype]
    last = _len(fields) - opt
    i = 0
    for k in fields:
        v = msg.get(k)
        if v is None:
            if i >= last:
                break
            raise ProtoError(-1, "%s: field %s missing" % (spec[0], k))
        _check(mtype, k, v, -1)
        arr.append(v)
        i += 1
    _semantics(mtype, arr, -1)
    return arr


def encode(msg):
    """The deterministic CBOR body of a message dict."""
    return cbor.dumps(body(msg))


def sign(key, body_bytes):
    """The envelope [body, tag] of an encoded body (docs/protocol.md, Envelope)."""
    return cbor.dumps([body_bytes, mac.tag(key, body_bytes)])


def seal(key, msg):
    """encode + sign: the bytes to publish."""
    return sign(key, encode(msg))


# ------------------------------------------------------------------------------ decoding
def _field_offset(base, arr, i):
    # offset of arr[i] in the canonical encoding of arr that starts at base (error path only)
    off = base + len(cbor.dumps(len(arr)))  # an array head is as long as its count's
    for v in arr[:i]:
        off += len(cbor.dumps(v))
    return off


def _semantics(mtype, arr, base):
    if mtype == CMD:
        op = arr[4]
        n = len(arr)
        if op == OP_ROTATE:
            ok = n == 7
        elif op == OP_SUSPEND:
            ok = n in (5, 6)
        else:
            ok = n == 5 and op in (OP_REPORT, OP_RESUME)
        if not ok:
            raise ProtoError(base if base < 0 else _field_offset(base, arr, 4),
                             "cmd: op %r with %d arguments" % (op, n - 5))
    elif mtype == GRANT and arr[8] > 2:
        raise ProtoError(base if base < 0 else _field_offset(base, arr, 8),
                         "grant.policy: unknown offline policy %d" % arr[8])


def decode_body(data, base=0):
    """The message dict of one body (bytes); ProtoError/CBORError with offsets from `base`."""
    try:
        arr = cbor.loads(data, max_depth=4, max_items=MAX_ROUNDS, max_bytes=MAX_MSG)
    except cbor.CBORError as exc:
        raise ProtoError(base + exc.offset, exc.reason)
    if type(arr) is not list or not arr:
        raise ProtoError(base, "a message body is a non-empty array")
    mtype = arr[0]
    spec = MESSAGES.get(mtype) if type(mtype) is int else None  # a list/map: TypeError
    if spec is None:
        raise ProtoError(base + 1, "unknown message type %r" % (mtype,))
    fields, opt = spec[2], spec[3]
    if not len(fields) - opt + 1 <= len(arr) <= len(fields) + 1:
        raise ProtoError(base, "%s: %d fields, expected %d" % (spec[0], len(arr) - 1, len(fields)))
    msg = {"type": mtype}
    i = 0
    for k in fields:
        i += 1
        if i == len(arr):
            break
        v = arr[i]
        msg[k] = v
        if type(v) is int and 0 <= v <= _U64 and k not in _CHECKED:
            continue    # a plain uint field (most of them): valid as decoded
        try:
            _check(mtype, k, v, 0)
        except ProtoError as exc:
            raise ProtoError(_field_offset(base, arr, i), exc.reason)
    _semantics(mtype, arr, base)
    return msg


def unseal(data):
    """(msg, body bytes, tag) of an envelope; the tag is NOT checked here (see verify)."""
    n = len(data)
    if type(data) is bytes and 19 < n <= MAX_MSG and data[0] == 0x82 and data[n - 17] == 0x50:
        # The canonical envelope, recognised without the general decoder: [, a byte-string
        # head of the shortest form, exactly the body it announces, then h'50' and 16 bytes.
        h = data[1]
        if 0x40 <= h < 0x58:
            s, blen = 2, h - 0x40
        elif h == 0x58 and data[2] >= 24:
            s, blen = 3, data[2]
        elif h == 0x59 and data[2]:
            s, blen = 4, data[2] << 8 | data[3]
        else:
            s = blen = 0
        if s and s + blen == n - 17:
            b = data[s:n - 17]
            return decode_body(b, s), b, data[n - 16:]
    try:
        env = cbor.loads(data, max_depth=1, max_items=2, max_bytes=MAX_MSG)
    except cbor.CBORError as exc:
        raise ProtoError(exc.offset, exc.reason)
    if (type(env) is not list or len(env) != 2 or type(env[0]) is not bytes
            or type(env[1]) is not bytes):
        raise ProtoError(0, "an envelope is [body: bstr, tag: bstr]")
    b, t = env
    if len(t) != mac.TAG_LEN:
        raise ProtoError(len(data) - len(t) - 1, "tag is %d bytes, expected 16" % len(t))
    return decode_body(b, 2 if len(b) < 24 else 3 if len(b) < 256 else 4), b, t   # after [ and b's head


def verify(key, body_bytes, tag):
    """True when tag authenticates body_bytes under key (W1, constant-time)."""
    return mac.equal(mac.tag(key, body_bytes), tag)


# check() outcomes
OK = const(0)
MALFORMED = const(1)
UNKNOWN_KID = const(2)
BAD_MAC = const(3)
WRONG_DEVICE = const(4)
CHECKS = ("ok", "malformed", "unknown key id", "bad MAC", "wrong device")      # words for people
CHECK_REASONS = ("ok", "malformed", "unknown_kid", "bad_mac", "wrong_device")  # reason codes


def check(data, keys, dev):
    """(outcome, msg or reason): unseal, look the kid up in keys {kid: key}, verify, and check
    that the message names device dev. Business outcomes are returned, never raised."""
    try:
        msg, b, t = unseal(data)
    except ValueError as exc:
        return MALFORMED, str(exc)
    key = keys.get(msg["kid"])
    if key is None:
        return UNKNOWN_KID, "kid %d" % msg["kid"]
    if not verify(key, b, t):
        return BAD_MAC, "kid %d" % msg["kid"]
    if msg["dev"] != dev:
        return WRONG_DEVICE, "dev %d" % msg["dev"]
    return OK, msg


# ------------------------------------------------------------------------------ key wrap
def _keystream(old_key, dev, cn, new_kid):
    return mac.hmac_sha256(old_key, b"em-kw" + cbor.dumps([dev, cn, new_kid]))


def wrap_key(old_key, dev, cn, new_kid, new_key):
    """new_key XOR the W5 keystream (unwrap is the same operation)."""
    if len(new_key) != KEY_LEN:
        raise ProtoError(-1, "keys are %d bytes" % KEY_LEN)
    ks = _keystream(old_key, dev, cn, new_kid)
    return bytes(a ^ b for a, b in zip(new_key, ks))


unwrap_key = wrap_key

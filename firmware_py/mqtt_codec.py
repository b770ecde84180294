"""MQTT 3.1.1 packets, sans-io: what a client sends and receives, and a streaming parser.

Cited as in OASIS "MQTT Version 3.1.1" (29 October 2014), section numbers as §N. No I/O here:
bytes in, tuples out; firmware_py/mqtt.py is the socket shell that uses it. The broker-side
half (encoding CONNACK/SUBACK, decoding CONNECT/SUBSCRIBE/UNSUBSCRIBE) is the optional
extension firmware_py/mqtt_server.py, which a device leaves out: without it those three types
are refused by decode() as packets a broker never sends.

Errors:
    ValueError
     +-- (plain)     an encoder was asked for something 3.1.1 cannot carry (caller mistake)
     +-- MQTTError   the peer sent bytes that are not MQTT 3.1.1 (wire error): .offset (byte
                     position in the packet, 0 = the fixed header's first byte), .reason (str);
                     str() is "offset N: reason". Never IndexError/UnicodeError/struct.error.

A decoded packet is a tuple whose first item is its type:
    (CONNACK, session_present, rc)
    (PUBLISH, topic, payload, qos, pid, dup, retain)          pid is 0 for QoS 0
    (PUBACK | PUBREC | PUBREL | PUBCOMP | UNSUBACK, pid)
    (SUBACK, pid, [code, ...])                                 code 0, 1, 2 or 0x80 (refused)
    (PINGREQ,)  (PINGRESP,)  (DISCONNECT,)
    (OVERSIZED, topic, length, qos, pid)                     a PUBLISH skipped for its size (R11)
    and with mqtt_server: CONNECT, SUBSCRIBE, UNSUBSCRIBE (see there).
Topics and filters are str, payloads bytes, flags bool.

Decoder rules (each rejected with MQTTError):
 R1 remaining length: at most 4 bytes (§2.2.3), shortest form, at most max_size (PUBLISH: R11).
 R2 packet type 0 and 15 are reserved; fixed-header flags are 0b0010 for PUBREL, SUBSCRIBE and
    UNSUBSCRIBE and 0 for every other type but PUBLISH (§2.2.2).
 R3 PUBLISH: QoS 3 is malformed, DUP must be 0 with QoS 0 (§3.3.1.1-2); the topic name is not
    empty and has no wildcard (§3.3.2.1, §4.7.3).
 R4 packet identifiers are non-zero (§2.3.1).
 R5 strings: their length fits the packet, UTF-8 (as checked by the runtime's decoder), no
    U+0000 (§1.5.3).
 R6 CONNECT (mqtt_server): protocol "MQTT" level 4, reserved flag 0, consistent will and
    password flags (§3.1.2).
 R7 CONNACK: flag bits 7-1 zero (§3.2.2.1), return code 0-5, session present 0 when refused
    (§3.2.2.2-3).
 R8 SUBSCRIBE/UNSUBSCRIBE (mqtt_server): at least one well-formed filter, requested QoS <= 2.
 R9 SUBACK return codes are 0, 1, 2 or 0x80 (§3.9.3).
 R10 a packet's body is used exactly: a field running past it or bytes left over are errors.
 R11 a PUBLISH longer than max_size is no error: the parser keeps its first max_size body bytes,
    skips the rest (any chunking) and gives (OVERSIZED, topic, remaining length, qos, pid), the
    header checked by R3-R5 if it fits, else topic None and pid 0. The caller acks and drops it.
Encoders apply the same rules to their arguments and raise ValueError.
"""
import struct

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

OVERSIZED = const(0)  # the reserved type 0: a PUBLISH skipped for its size (R11)
CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
PUBREC = const(5)
PUBREL = const(6)
PUBCOMP = const(7)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)

# CONNACK return codes (§3.2.2.3): 0 accepted, 1 bad protocol level, 2 client id rejected,
# 3 server unavailable, 4 bad user name or password, 5 not authorized. SUBACK refusal: 0x80.
_MAX = const(268435455)  # §2.2.3: the largest remaining length (four bytes)
PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
PROTOCOL = b"\x00\x04MQTT\x04"  # protocol name and level 4 (§3.1.2.1-2)

DECODERS = {}  # type: dict  # decoders of the broker-side types, filled in by mqtt_server.py


class MQTTError(ValueError):
    """The peer sent bytes that are not MQTT 3.1.1 (rules R1-R11). The shape of cbor.WireError,
    kept separate so that a client without the CBOR codec needs no cbor import (heap)."""

    def __init__(self, offset, reason):
        super().__init__("offset %d: %s" % (offset, reason))
        self.offset = offset
        self.reason = reason

    def __str__(self):
        return "offset %d: %s" % (self.offset, self.reason)


# ---- encoding ---------------------------------------------------------------------------------

def encode_length(n):
    """The remaining-length varint of n (§2.2.3); ValueError outside 0..268435455."""
    if not 0 <= n <= _MAX:
        raise ValueError("length out of range")
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def packet(first, body):
    """A whole packet: first header byte, remaining length, body."""
    return bytes((first,)) + encode_length(len(body)) + bytes(body)


def field(v):
    """A 2-byte-length-prefixed field of str (UTF-8, no U+0000) or bytes (§1.5.3)."""
    if isinstance(v, str):
        if "\x00" in v:
            raise ValueError("U+0000 in %r" % v)
        v = v.encode()
    if len(v) > 65535:
        raise ValueError("field over 65535 bytes")
    return struct.pack(">H", len(v)) + v


def topic_ok(s):
    """True when s can be a PUBLISH topic name: non-empty, no wildcard, no U+0000 (§4.7.3)."""
    return len(s) > 0 and "+" not in s and "#" not in s and "\x00" not in s


def filter_ok(s):
    """True when s is a well-formed topic filter (§4.7.1): '#' only as the whole last level,
    '+' only as a whole level, non-empty, no U+0000."""
    if not s or "\x00" in s:
        return False
    levels = s.split("/")
    for i, lv in enumerate(levels):
        if ("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+"):
            return False
    return True


def check(ok, what):
    """Raise ValueError('bad ' + what) unless ok: the encoders' argument check."""
    if not ok:
        raise ValueError("bad " + what)


def encode_connect(client_id, keepalive=60, clean_session=True, user=None, password=None,
                   will=None):
    """CONNECT (§3.1). will is None or (topic, payload, qos, retain); password is str or bytes
    and needs a user (§3.1.2.9); an empty client id needs clean_session (§3.1.3.1)."""
    check(0 <= keepalive <= 65535, "keepalive")
    check(isinstance(client_id, str) and (client_id or clean_session), "client id")
    flags = 2 if clean_session else 0
    tail = field(client_id)
    if will is not None:
        wt, wp, wq, wr = will
        check(wq in (0, 1, 2) and isinstance(wt, str) and topic_ok(wt), "will")
        flags |= 4 | wq << 3 | (0x20 if wr else 0)
        tail += field(wt) + field(bytes(wp))
    if user is not None:
        check(isinstance(user, str), "user name")
        flags |= 0x80
        tail += field(user)
    if password is not None:
        check(user is not None, "password without user name")
        flags |= 0x40
        tail += field(password.encode() if isinstance(password, str) else bytes(password))
    return packet(0x10, PROTOCOL + bytes((flags, keepalive >> 8, keepalive & 0xFF)) + tail)


def encode_publish(topic, payload, qos=0, pid=0, dup=False, retain=False):
    """PUBLISH (§3.3); pid is required for QoS 1/2 and must be 0 for QoS 0, as must dup."""
    check(qos in (0, 1, 2) and isinstance(topic, str) and topic_ok(topic), "topic or QoS")
    check(isinstance(payload, (bytes, bytearray, memoryview)), "payload (bytes)")
    check(0 < pid < 65536 if qos else not (pid or dup), "packet id or DUP")
    t = field(topic)
    out = bytearray((0x30 | (8 if dup else 0) | qos << 1 | (1 if retain else 0),))
    out += encode_length(len(t) + len(payload) + (2 if qos else 0))
    out += t
    if qos:
        out += struct.pack(">H", pid)
    out += payload
    return bytes(out)


def encode_ack(ptype, pid):
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK (§3.4-3.7, §3.11)."""
    check(ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK) and 0 < pid < 65536, "ack")
    return bytes((ptype << 4 | (2 if ptype == PUBREL else 0), 2, pid >> 8, pid & 0xFF))


def encode_puback(pid):
    """PUBACK (§3.4)."""
    return encode_ack(PUBACK, pid)


def encode_subscribe(pid, filters):
    """SUBSCRIBE (§3.8); filters is a non-empty list of (filter, requested QoS)."""
    check(0 < pid < 65536 and len(filters) > 0, "SUBSCRIBE")
    body = bytearray(struct.pack(">H", pid))
    for f, qos in filters:
        check(qos in (0, 1, 2) and isinstance(f, str) and filter_ok(f), "filter %r" % (f,))
        body += field(f)
        body.append(qos)
    return packet(0x82, body)


def encode_unsubscribe(pid, filters):
    """UNSUBSCRIBE (§3.10); filters is a non-empty list of str."""
    check(0 < pid < 65536 and len(filters) > 0, "UNSUBSCRIBE")
    body = bytearray(struct.pack(">H", pid))
    for f in filters:
        check(isinstance(f, str) and filter_ok(f), "filter %r" % (f,))
        body += field(f)
    return packet(0xA2, body)


# ---- decoding ---------------------------------------------------------------------------------

def check_first(b):
    """R2 and R3's QoS/DUP rules on the fixed header's first byte; MQTTError at offset 0."""
    t = b >> 4
    f = b & 0x0F
    if t == 0 or t == 15:
        raise MQTTError(0, "reserved packet type %d" % t)
    if t == PUBLISH:
        if f & 6 == 6:
            raise MQTTError(0, "PUBLISH QoS 3")
        if f & 14 == 8:
            raise MQTTError(0, "DUP at QoS 0")
    elif f != (2 if t in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0):
        raise MQTTError(0, "bad flags 0x%x for type %d" % (f, t))


def u16(b, i, n, hl):
    """The big-endian 16-bit integer at b[i] of a body of n bytes (hl: header length)."""
    if i + 2 > n:
        raise MQTTError(hl + i, "truncated")
    return b[i] << 8 | b[i + 1]


def pid_at(b, i, n, hl):
    """A packet identifier, non-zero (R4)."""
    p = u16(b, i, n, hl)
    if p == 0:
        raise MQTTError(hl + i, "packet id 0")
    return p


def bin_at(b, i, n, hl):
    """(bytes, next index) of the length-prefixed field at b[i]."""
    ln = u16(b, i, n, hl)
    i += 2
    if i + ln > n:
        raise MQTTError(hl + i, "truncated field of %d bytes" % ln)
    return bytes(b[i:i + ln]), i + ln


def str_at(b, i, n, hl):
    """(str, next index) of the UTF-8 string at b[i] (R5)."""
    raw, j = bin_at(b, i, n, hl)
    if b"\x00" in raw:
        raise MQTTError(hl + i + 2, "U+0000 in string")
    try:
        return raw.decode(), j
    except UnicodeError:
        raise MQTTError(hl + i + 2, "not UTF-8")


def end_at(i, n, hl):
    """R10: the body ends exactly at i."""
    if i != n:
        raise MQTTError(hl + i, "%d bytes left over" % (n - i))


def pub_head(first, b, n, hl):
    """(topic, pid, index after them) of a PUBLISH body b[0:n] (R3-R5)."""
    topic, i = str_at(b, 0, n, hl)
    if not topic_ok(topic):
        raise MQTTError(hl + 2, "bad topic name %r" % topic)
    return (topic, pid_at(b, i, n, hl), i + 2) if first & 6 else (topic, 0, i)


def oversized(first, b, m, n, hl):
    """R11's tuple of a PUBLISH of n body bytes of which b[0:m] were kept (m < n)."""
    fit = m >= 2 and 2 + (b[0] << 8 | b[1]) + (2 if first & 6 else 0) <= m
    topic, pid, _ = pub_head(first, b, m, hl) if fit else (None, 0, 0)
    return (OVERSIZED, topic, n, first >> 1 & 3, pid)


def decode(first, b, n, hl):
    """The packet tuple of one packet: first header byte, body b[0:n], header length hl (for
    offsets). Rules R2-R10 (R1 is the parser's)."""
    check_first(first)
    t = first >> 4
    if t == PUBLISH:
        topic, pid, i = pub_head(first, b, n, hl)
        return (PUBLISH, topic, bytes(b[i:n]), first >> 1 & 3, pid, first & 8 != 0, first & 1 != 0)
    if t in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        pid = pid_at(b, 0, n, hl)
        end_at(2, n, hl)
        return (t, pid)
    if t >= PINGREQ:
        end_at(0, n, hl)
        return (t,)
    if t == CONNACK:
        u16(b, 0, n, hl)
        end_at(2, n, hl)
        if b[0] & 0xFE or b[1] > 5 or (b[0] and b[1]):
            raise MQTTError(hl + (1 if b[1] > 5 else 0), "bad CONNACK %02x%02x" % (b[0], b[1]))
        return (CONNACK, b[0] == 1, b[1])
    if t == SUBACK:
        pid = pid_at(b, 0, n, hl)
        if n < 3:
            raise MQTTError(hl + 2, "no return code")
        codes = list(b[2:n])
        for k, c in enumerate(codes):
            if c > 2 and c != 0x80:
                raise MQTTError(hl + 2 + k, "bad return code 0x%x" % c)
        return (SUBACK, pid, codes)
    fn = DECODERS.get(t)
    if fn is None:
        raise MQTTError(0, "packet type %d is client-to-server" % t)
    return fn(b, n, hl)


class Parser:
    """Streaming decoder: bytes in any chunking (one at a time included), one packet out at a
    time. The body buffer (max_size bytes) is allocated once; a packet whose remaining length
    exceeds it is refused (R1) before its body is read, but a PUBLISH is skipped (R11). After
    an MQTTError the stream is lost: reset() starts a new connection's stream."""

    def __init__(self, max_size=4096):
        if not 0 <= max_size <= _MAX:
            raise ValueError("bad max_size")
        self.max_size = max_size
        self._buf = bytearray(max_size)
        self._mv = memoryview(self._buf)
        self.reset()

    def reset(self):
        """Forget any partial packet."""
        self._first = -1  # fixed header's first byte, -1 while waiting for it
        self._len = -1    # remaining length, -1 while its varint is read
        self._hl = 1      # fixed header length so far
        self._got = 0

    def feed(self, data, pos=0, end=-1):
        """Consume data[pos:end] until one packet completes. Returns (packet or None, new pos):
        the packet tuple with the position after its last byte, or None with pos == end when
        the data ran out first (the partial packet is kept for the next call)."""
        if end < 0:
            end = len(data)
        while pos < end:
            c = data[pos]
            if self._first < 0:
                check_first(c)
                self._first = c  # reset() left _got at 0
                pos += 1
                continue
            if self._len < 0:
                pos += 1
                self._got |= (c & 0x7F) << (7 * self._hl - 7)
                self._hl += 1
                if c & 0x80:
                    if self._hl == 5:
                        raise MQTTError(4, "length over 4 bytes")
                    continue
                if c == 0 and self._hl > 2:
                    raise MQTTError(self._hl - 1, "length not shortest")
                if self._got > self.max_size and self._first >> 4 != PUBLISH:
                    raise MQTTError(1, "length %d over limit %d" % (self._got, self.max_size))
                self._len = self._got
                self._got = 0
            else:
                k = min(end - pos, self._len - self._got)
                s = min(k, self.max_size - self._got)  # R11: past max_size, skip (s <= 0)
                if s > 0:
                    self._buf[self._got:self._got + s] = data[pos:pos + s]
                pos += k
                self._got += k
            if self._got == self._len:
                first, n, hl, m = self._first, self._len, self._hl, self.max_size
                self.reset()
                return (oversized(first, self._mv, m, n, hl) if n > m
                        else decode(first, self._mv, n, hl)), pos
        return None, pos


def decode_packet(data, max_size=_MAX):
    """The packet tuple of data holding exactly one whole packet; MQTTError otherwise."""
    p = Parser(len(data))  # a whole packet's body is shorter than the packet
    p.max_size = max_size  # R1's limit; a longer declared length is a truncation here
    pkt, pos = p.feed(data)
    if pkt is None:
        raise MQTTError(pos, "truncated packet")
    if pos != len(data):
        raise MQTTError(pos, "bytes after the packet")
    return pkt

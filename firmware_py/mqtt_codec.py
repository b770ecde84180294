"""MQTT 3.1.1 packets, sans-io: encoders, a decoder for every packet type, a streaming parser.

Cited as in OASIS "MQTT Version 3.1.1" (29 October 2014), section numbers as §N. No I/O here:
bytes in, tuples out; firmware_py/mqtt.py is the socket shell that uses it.

Errors:
    ValueError
     +-- (plain)     an encoder was asked for something 3.1.1 cannot carry (caller mistake)
     +-- MQTTError   the peer sent bytes that are not MQTT 3.1.1 (wire error): .offset (byte
                     position in the packet, 0 = the fixed header's first byte), .reason (str);
                     str() is "offset N: reason". Never IndexError/UnicodeError/struct.error.

A decoded packet is a tuple whose first item is its type:
    (CONNECT, client_id, keepalive, clean_session, user, password, will)
              user: str or None, password: bytes or None, will: None or
              (topic, payload, qos, retain)
    (CONNACK, session_present, rc)
    (PUBLISH, topic, payload, qos, pid, dup, retain)          pid is 0 for QoS 0
    (PUBACK | PUBREC | PUBREL | PUBCOMP | UNSUBACK, pid)
    (SUBSCRIBE, pid, [(filter, qos), ...])
    (SUBACK, pid, [code, ...])                                 code 0, 1, 2 or 0x80 (refused)
    (UNSUBSCRIBE, pid, [filter, ...])
    (PINGREQ,)  (PINGRESP,)  (DISCONNECT,)
Topics and filters are str, payloads and passwords bytes, flags bool.

Decoder rules (each rejected with MQTTError):
 R1 remaining length: at most 4 bytes (§2.2.3), shortest form, at most the parser's max_size.
 R2 packet type 0 and 15 are reserved; fixed-header flags are 0b0010 for PUBREL, SUBSCRIBE and
    UNSUBSCRIBE and 0 for every other type but PUBLISH (§2.2.2).
 R3 PUBLISH: QoS 3 is malformed, DUP must be 0 with QoS 0 (§3.3.1.1-2); the topic name is not
    empty and has no wildcard (§3.3.2.1, §4.7.3).
 R4 packet identifiers are non-zero (§2.3.1).
 R5 strings: their length fits the packet, UTF-8 (as checked by the runtime's decoder), no
    U+0000 (§1.5.3).
 R6 CONNECT: protocol name "MQTT" at level 4 (§3.1.2.1-2), reserved flag 0 (§3.1.2.3), will
    QoS/retain only with the will flag and will QoS < 3 (§3.1.2.6-7), password only with a user
    name (§3.1.2.9).
 R7 CONNACK: flag bits 7-1 zero (§3.2.2.1), return code 0-5, session present 0 when refused
    (§3.2.2.2-3).
 R8 SUBSCRIBE/UNSUBSCRIBE carry at least one well-formed filter (§3.8.3, §3.10.3, §4.7.1);
    requested QoS <= 2 with reserved bits 0 (§3.8.3.1).
 R9 SUBACK return codes are 0, 1, 2 or 0x80 (§3.9.3).
 R10 a packet's body is used exactly: a field running past it or bytes left over are errors.
Encoders apply the same rules to their arguments and raise ValueError.
"""
import struct

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

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

# CONNACK return codes (§3.2.2.3)
RC_ACCEPTED = const(0)
RC_BAD_PROTOCOL = const(1)
RC_ID_REJECTED = const(2)
RC_UNAVAILABLE = const(3)
RC_BAD_AUTH = const(4)
RC_NOT_AUTHORIZED = const(5)
SUBACK_FAILURE = const(0x80)

MAX_REMAINING = const(268435455)  # §2.2.3: four length bytes
PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

_PROTO = b"\x00\x04MQTT\x04"
_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK)
_EMPTY = (PINGREQ, PINGRESP, DISCONNECT)


class MQTTError(ValueError):
    """The peer sent bytes that are not MQTT 3.1.1 (rules R1-R10)."""

    def __init__(self, offset, reason):
        super().__init__("offset %d: %s" % (offset, reason))
        self.offset = offset
        self.reason = reason

    def __str__(self):
        return "offset %d: %s" % (self.offset, self.reason)


# ---- encoding ---------------------------------------------------------------------------------

def encode_length(n):
    """The remaining-length varint of n (§2.2.3); ValueError outside 0..268435455."""
    if n < 0 or n > MAX_REMAINING:
        raise ValueError("remaining length %d out of range" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _packet(first, body):
    return bytes([first]) + encode_length(len(body)) + bytes(body)


def _bin(v, what):
    b = v.encode() if isinstance(v, str) else bytes(v)
    if len(b) > 65535:
        raise ValueError("%s longer than 65535 bytes" % what)
    return struct.pack(">H", len(b)) + b


def _text(s, what):
    if not isinstance(s, str) or "\x00" in s:
        raise ValueError("%s must be a str without U+0000" % what)
    return _bin(s, what)


def topic_ok(s):
    """True when s can be a PUBLISH topic name: non-empty, no wildcard, no U+0000 (§4.7.3)."""
    return len(s) > 0 and "+" not in s and "#" not in s and "\x00" not in s


def filter_ok(s):
    """True when s is a well-formed topic filter (§4.7.1): '#' only as the whole last level,
    '+' only as a whole level, non-empty, no U+0000."""
    if not s or "\x00" in s:
        return False
    levels = s.split("/")
    last = len(levels) - 1
    for i, lv in enumerate(levels):
        if "#" in lv and (lv != "#" or i != last):
            return False
        if "+" in lv and lv != "+":
            return False
    return True


def _check_pid(pid):
    if not 0 < pid < 65536:
        raise ValueError("packet identifier %r not in 1..65535" % (pid,))


def _check_qos(qos):
    if qos not in (0, 1, 2):
        raise ValueError("QoS %r not in 0..2" % (qos,))


def encode_connect(client_id, keepalive=60, clean_session=True, user=None, password=None,
                   will=None):
    """CONNECT (§3.1). will is None or (topic, payload, qos, retain); password is str or bytes
    and needs a user (§3.1.2.9); an empty client id needs clean_session (§3.1.3.1)."""
    if not 0 <= keepalive <= 65535:
        raise ValueError("keepalive %r not in 0..65535" % (keepalive,))
    if not client_id and not clean_session:
        raise ValueError("an empty client id needs clean_session")
    flags = 0x02 if clean_session else 0
    tail = _text(client_id, "client id")
    if will is not None:
        wtopic, wpayload, wqos, wretain = will
        _check_qos(wqos)
        if not topic_ok(wtopic):
            raise ValueError("will topic %r is not a topic name" % (wtopic,))
        flags |= 0x04 | wqos << 3 | (0x20 if wretain else 0)
        tail += _text(wtopic, "will topic") + _bin(wpayload, "will payload")
    if user is not None:
        flags |= 0x80
        tail += _text(user, "user name")
    if password is not None:
        if user is None:
            raise ValueError("a password needs a user name")
        flags |= 0x40
        tail += _bin(password, "password")
    return _packet(0x10, _PROTO + bytes([flags]) + struct.pack(">H", keepalive) + tail)


def encode_connack(session_present, rc):
    """CONNACK (§3.2)."""
    if not 0 <= rc <= 5 or (rc and session_present):
        raise ValueError("bad CONNACK (session_present=%r, rc=%r)" % (session_present, rc))
    return bytes((0x20, 2, 1 if session_present else 0, rc))


def encode_publish(topic, payload, qos=0, pid=0, dup=False, retain=False):
    """PUBLISH (§3.3); pid is required for QoS 1/2 and must be 0 for QoS 0."""
    _check_qos(qos)
    if not isinstance(topic, str) or not topic_ok(topic):
        raise ValueError("topic %r is not a topic name" % (topic,))
    if qos:
        _check_pid(pid)
    elif pid or dup:
        raise ValueError("QoS 0 has no packet identifier and no DUP")
    t = _bin(topic, "topic")
    n = len(t) + len(payload) + (2 if qos else 0)
    out = bytearray((0x30 | (8 if dup else 0) | qos << 1 | (1 if retain else 0),))
    out += encode_length(n)
    out += t
    if qos:
        out += struct.pack(">H", pid)
    out += payload
    return bytes(out)


def encode_ack(ptype, pid):
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK (§3.4-3.7, §3.11)."""
    if ptype not in _ACKS:
        raise ValueError("packet type %r is not an acknowledgement" % (ptype,))
    _check_pid(pid)
    return bytes((ptype << 4 | (2 if ptype == PUBREL else 0), 2, pid >> 8, pid & 0xFF))


def encode_puback(pid):
    """PUBACK (§3.4)."""
    return encode_ack(PUBACK, pid)


def encode_subscribe(pid, filters):
    """SUBSCRIBE (§3.8); filters is a non-empty list of (filter, requested QoS)."""
    _check_pid(pid)
    if not filters:
        raise ValueError("SUBSCRIBE needs at least one filter")
    body = bytearray(struct.pack(">H", pid))
    for f, qos in filters:
        _check_qos(qos)
        if not isinstance(f, str) or not filter_ok(f):
            raise ValueError("bad topic filter %r" % (f,))
        body += _bin(f, "filter")
        body.append(qos)
    return _packet(0x82, body)


def encode_suback(pid, codes):
    """SUBACK (§3.9); codes are 0, 1, 2 or 0x80."""
    _check_pid(pid)
    if not codes:
        raise ValueError("SUBACK needs at least one return code")
    for c in codes:
        if c not in (0, 1, 2, SUBACK_FAILURE):
            raise ValueError("bad SUBACK return code %r" % (c,))
    return _packet(0x90, struct.pack(">H", pid) + bytes(codes))


def encode_unsubscribe(pid, filters):
    """UNSUBSCRIBE (§3.10); filters is a non-empty list of str."""
    _check_pid(pid)
    if not filters:
        raise ValueError("UNSUBSCRIBE needs at least one filter")
    body = bytearray(struct.pack(">H", pid))
    for f in filters:
        if not isinstance(f, str) or not filter_ok(f):
            raise ValueError("bad topic filter %r" % (f,))
        body += _bin(f, "filter")
    return _packet(0xA2, body)


# ---- decoding ---------------------------------------------------------------------------------

def check_first(b):
    """Rules R2 and R3's QoS/DUP checks on the fixed header's first byte; MQTTError at offset 0."""
    t = b >> 4
    f = b & 0x0F
    if t == 0 or t == 15:
        raise MQTTError(0, "reserved packet type %d" % t)
    if t == PUBLISH:
        q = f >> 1 & 3
        if q == 3:
            raise MQTTError(0, "PUBLISH with QoS 3")
        if q == 0 and f & 8:
            raise MQTTError(0, "PUBLISH with DUP at QoS 0")
    elif f != (2 if t in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0):
        raise MQTTError(0, "bad fixed-header flags 0x%x for packet type %d" % (f, t))


def _u16(b, i, n, hl, what):
    if i + 2 > n:
        raise MQTTError(hl + i, "%s runs past the packet" % what)
    return b[i] << 8 | b[i + 1]


def _pid(b, i, n, hl):
    pid = _u16(b, i, n, hl, "packet identifier")
    if pid == 0:
        raise MQTTError(hl + i, "packet identifier 0")
    return pid


def _field(b, i, n, hl, what):
    """(bytes, next index) of a 2-byte-length-prefixed field."""
    ln = _u16(b, i, n, hl, what)
    i += 2
    if i + ln > n:
        raise MQTTError(hl + i, "%s of %d bytes runs past the packet" % (what, ln))
    return bytes(b[i:i + ln]), i + ln


def _string(b, i, n, hl, what):
    raw, j = _field(b, i, n, hl, what)
    if b"\x00" in raw:
        raise MQTTError(hl + i + 2, "%s contains U+0000" % what)
    try:
        return raw.decode(), j
    except UnicodeError:
        raise MQTTError(hl + i + 2, "%s is not UTF-8" % what)


def _end(i, n, hl):
    if i != n:
        raise MQTTError(hl + i, "%d bytes left over at the end of the packet" % (n - i))


def decode(first, b, n, hl):
    """The packet tuple of one packet: first header byte, body b[0:n], header length hl (for
    offsets). Rules R2-R10 (R1 is the parser's)."""
    check_first(first)
    t = first >> 4
    if t == PUBLISH:
        qos = first >> 1 & 3
        topic, i = _string(b, 0, n, hl, "topic")
        if not topic_ok(topic):
            raise MQTTError(hl + 2, "topic %r is not a topic name" % topic)
        pid = 0
        if qos:
            pid = _pid(b, i, n, hl)
            i += 2
        return (PUBLISH, topic, bytes(b[i:n]), qos, pid, first & 8 != 0, first & 1 != 0)
    if t in _ACKS:
        pid = _pid(b, 0, n, hl)
        _end(2, n, hl)
        return (t, pid)
    if t in _EMPTY:
        _end(0, n, hl)
        return (t,)
    if t == CONNACK:
        _u16(b, 0, n, hl, "CONNACK")
        _end(2, n, hl)
        if b[0] & 0xFE:
            raise MQTTError(hl, "CONNACK reserved flags set")
        if b[1] > 5:
            raise MQTTError(hl + 1, "CONNACK return code %d" % b[1])
        if b[1] and b[0]:
            raise MQTTError(hl, "session present with a refused connection")
        return (CONNACK, b[0] == 1, b[1])
    if t == SUBACK:
        pid = _pid(b, 0, n, hl)
        if n < 3:
            raise MQTTError(hl + 2, "SUBACK without return codes")
        codes = list(b[2:n])
        for k, c in enumerate(codes):
            if c not in (0, 1, 2, SUBACK_FAILURE):
                raise MQTTError(hl + 2 + k, "SUBACK return code 0x%x" % c)
        return (SUBACK, pid, codes)
    if t == SUBSCRIBE or t == UNSUBSCRIBE:
        return _decode_sub(t, b, n, hl)
    return _decode_connect(b, n, hl)


def _decode_sub(t, b, n, hl):
    pid = _pid(b, 0, n, hl)
    i = 2
    out = []
    if i == n:
        raise MQTTError(hl + i, "no topic filter")
    while i < n:
        f, j = _string(b, i, n, hl, "topic filter")
        if not filter_ok(f):
            raise MQTTError(hl + i + 2, "bad topic filter %r" % f)
        if t == UNSUBSCRIBE:
            out.append(f)
            i = j
            continue
        if j >= n:
            raise MQTTError(hl + j, "requested QoS missing")
        if b[j] > 2:
            raise MQTTError(hl + j, "requested QoS byte 0x%x" % b[j])
        out.append((f, b[j]))
        i = j + 1
    return (t, pid, out)


def _decode_connect(b, n, hl):
    if n < 10 or bytes(b[0:7]) != _PROTO:
        if n >= 7 and bytes(b[0:6]) == _PROTO[:6]:
            raise MQTTError(hl + 6, "protocol level %d is not 4 (3.1.1)" % b[6])
        raise MQTTError(hl, "not an MQTT 3.1.1 CONNECT header")
    flags = b[7]
    if flags & 1:
        raise MQTTError(hl + 7, "CONNECT reserved flag set")
    wqos = flags >> 3 & 3
    if not flags & 4 and (wqos or flags & 0x20) or wqos == 3:
        raise MQTTError(hl + 7, "bad will flags")
    if flags & 0x40 and not flags & 0x80:
        raise MQTTError(hl + 7, "password without user name")
    keepalive = b[8] << 8 | b[9]
    cid, i = _string(b, 10, n, hl, "client id")
    will = None
    if flags & 4:
        wt, i = _string(b, i, n, hl, "will topic")
        if not topic_ok(wt):
            raise MQTTError(hl + i, "will topic %r is not a topic name" % wt)
        wp, i = _field(b, i, n, hl, "will payload")
        will = (wt, wp, wqos, flags & 0x20 != 0)
    user = None
    password = None
    if flags & 0x80:
        user, i = _string(b, i, n, hl, "user name")
    if flags & 0x40:
        password, i = _field(b, i, n, hl, "password")
    _end(i, n, hl)
    return (CONNECT, cid, keepalive, flags & 2 != 0, user, password, will)


class Parser:
    """Streaming decoder: bytes in any chunking (one at a time included), one packet out at a
    time. The body buffer (max_size bytes) is allocated once; a packet whose remaining length
    exceeds it is refused (R1) before its body is read. After an MQTTError the stream is lost:
    call reset() only for a new connection."""

    def __init__(self, max_size=4096):
        if not 0 <= max_size <= MAX_REMAINING:
            raise ValueError("max_size %r out of range" % (max_size,))
        self.max_size = max_size
        self._buf = bytearray(max_size)
        self._mv = memoryview(self._buf)
        self.reset()

    def reset(self):
        """Forget any partial packet (a new connection starts a new stream)."""
        self._first = -1  # fixed header's first byte, -1 while waiting for it
        self._len = -1    # remaining length, -1 while its varint is read
        self._acc = 0
        self._hl = 1      # fixed header length so far
        self._got = 0

    def feed(self, data, pos=0, end=-1):
        """Consume data[pos:end] until one packet completes. Returns (packet or None, new pos):
        the packet tuple with the position after its last byte, or None with pos == end when
        the data ran out first (the partial packet is kept for the next call)."""
        if end < 0:
            end = len(data)
        while pos < end:
            if self._first < 0:
                check_first(data[pos])
                self._first = data[pos]
                pos += 1
                continue
            if self._len < 0:
                c = data[pos]
                pos += 1
                self._acc |= (c & 0x7F) << (7 * (self._hl - 1))
                self._hl += 1
                if c & 0x80:
                    if self._hl == 5:
                        raise MQTTError(4, "remaining length longer than 4 bytes")
                    continue
                if c == 0 and self._hl > 2:
                    raise MQTTError(self._hl - 1, "remaining length not in its shortest form")
                if self._acc > self.max_size:
                    raise MQTTError(1, "packet body of %d bytes over the limit of %d"
                                    % (self._acc, self.max_size))
                self._len = self._acc
            else:
                k = min(end - pos, self._len - self._got)
                self._buf[self._got:self._got + k] = data[pos:pos + k]
                pos += k
                self._got += k
            if self._got == self._len:
                first, n, hl = self._first, self._len, self._hl
                self.reset()
                return decode(first, self._mv, n, hl), pos
        return None, pos


def decode_packet(data, max_size=MAX_REMAINING):
    """The packet tuple of data holding exactly one whole packet; MQTTError otherwise."""
    p = Parser(len(data))  # a whole packet's body is shorter than the packet
    p.max_size = max_size  # R1's limit; a longer declared length is a truncation here
    pkt, pos = p.feed(data)
    if pkt is None:
        raise MQTTError(pos, "truncated packet")
    if pos != len(data):
        raise MQTTError(pos, "bytes after the packet")
    return pkt

"""Journal record framing and recovery scanning: pure functions over bytes (no I/O).

Record (integers little-endian; 10 bytes of framing around the payload):

    +------+-------+-------+-----+----------------+-------+
    | A5   | len   | seq   | hck | payload        | crc   |
    | 1 B  | 2 B   | 2 B   | 1 B | len B          | 4 B   |
    +------+-------+-------+-----+----------------+-------+
    len  payload length (at most 65535)
    seq  recno & 0xFFFF
    hck  crc32(A5 len seq) & 0xFF  header check: catches every single-bit error in the fixed
                                   6-byte header (a varint length would let one flipped bit
                                   change where hck is read), so a flipped length can neither
                                   pose as a torn tail nor swallow the records after it
    crc  crc32(A5 .. payload)      CRC-32 (binascii, IEEE): every error burst up to 32 bits

Rules:
 F1. A segment starting at recno base holds records base <= recno < base + 65535 in strictly
     increasing order; recno = base + ((seq - base) & 0xFFFF), so numbering survives damage.
 F2. scan() reads a segment from offset 0.  At offset p a record is valid when its magic,
     header check, CRC and order (recno above the previous valid one) all hold.  Otherwise the
     bytes from p up to the first valid record after p (or EOF) are damage with a reason
     (REASONS), except that an incomplete record at EOF with nothing valid after it is a torn
     tail.  A damaged record is never yielded: no record is invented or silently used.  A
     false resync needs a magic byte, a matching header check and CRC-32: odds 2**-40 per byte.
"""
import binascii
import struct

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

_MAGIC = const(0xA5)
_MAGIC_B = b"\xa5"
MAX_PAYLOAD = const(65535)
MIN_RECORD = const(10)
REC = const(0)
BAD = const(1)
TORN = const(2)
_SHORT = const(3)
REASONS = ("ok", "magic", "header", "length", "crc", "order")
_crc32 = binascii.crc32
_unpack_from = struct.unpack_from
_pack = struct.pack
_len = len   # module names, not builtins, on the per-round path (see rating.py)


def encode(recno: int, payload) -> bytes:
    """One framed record for recno and payload (bytes)."""
    n = _len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError("payload longer than %d bytes" % MAX_PAYLOAD)
    h = _pack("<BHH", _MAGIC, n, recno & 0xFFFF)
    body = h + _pack("<B", _crc32(h) & 0xFF) + payload
    return body + _pack("<I", _crc32(body))


def _check(buf, mv, p: int, n: int):
    """(status, payload start, record end, seq) of the record at p; status is 0 when valid."""
    if buf[p] != _MAGIC:
        return 1, 0, 0, 0
    h = p + 6
    if h > n:
        return _SHORT, 0, 0, 0
    if _crc32(mv[p:p + 5]) & 0xFF != buf[p + 5]:
        return 2, 0, 0, 0
    end = h + (buf[p + 1] | (buf[p + 2] << 8)) + 4
    if end > n:
        return _SHORT, 0, 0, 0
    if _crc32(mv[p:end - 4]) != _unpack_from("<I", buf, end - 4)[0]:
        return 4, 0, 0, 0
    return 0, h, end, buf[p + 3] | (buf[p + 4] << 8)


def _resync(buf, mv, i: int, n: int, base: int, prev: int) -> int:
    """Offset of the first valid record (recno > prev) at or after i, or n."""
    while True:
        i = buf.find(_MAGIC_B, i, n)
        if i < 0:
            return n
        st, _, _, seq = _check(buf, mv, i, n)
        if st == 0 and base + ((seq - base) & 0xFFFF) > prev:
            return i
        i += 1


def scan(buf, base: int, n: int = -1):
    """Events of segment bytes buf[:n] (all of buf when n < 0; journal rule J2), in order:
    (REC, offset, end, recno, payload start) -- payload is buf[start:end - 4];
    (BAD, offset, end, recno before it, reason index into REASONS);
    (TORN, offset, end, recno before it, 0) -- only ever the last event."""
    if n < 0:
        n = len(buf)
    mv = memoryview(buf)
    p = 0
    prev = base - 1
    while p < n:
        st, h, end, seq = _check(buf, mv, p, n)
        if st == 0:
            r = base + ((seq - base) & 0xFFFF)
            if r > prev:
                yield REC, p, end, r, h
                prev = r
                p = end
                continue
            st = 5
        q = _resync(buf, mv, p + 1, n, base, prev)
        if st == _SHORT and q == n:
            yield TORN, p, n, prev, 0
            return
        yield BAD, p, q, prev, st
        p = q

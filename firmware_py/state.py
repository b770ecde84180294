"""Power-safe small state: a dict in two alternating slot files, newest valid one wins.

Slot file <prefix>.a or <prefix>.b (integers little-endian; 11 bytes around the CBOR):

    +------+---------+---------+-----------------------------+---------+
    | 53   | gen     | len     | body: cbor.dumps(dict)      | crc     |
    | 1 B  | 4 B     | 2 B     | len B                       | 4 B     |
    +------+---------+---------+-----------------------------+---------+
    crc = crc32(53 .. body); the file is exactly 11 + len bytes long

Rules:
 S1. A slot is valid when its magic, length, CRC and CBOR (a map) all hold.
 S2. load() returns the dict of the valid slot with the higher gen (None when neither is
     valid: a fresh store) and leaves per-slot findings in .report.
 S3. save(d) writes gen + 1 into the slot that does NOT hold the state load() returned and
     syncs it.  A cut or a bit flip anywhere in that write leaves the slot invalid, so the
     previous state is what load() returns; once the write is complete the new one is.
 S4. If the newest slot itself is damaged later (a bit flip at rest), load() falls back to the
     older state and .report says so ("a"/"b" is "crc", "magic", ...).  A caller keeping a
     monotonic counter here must then skip ahead by its persist-ahead margin.
Exceptions: save() raises ValueError for a value the codec refuses or a body over 65535 bytes;
OSError from the file system passes through (the previous state stays readable).
"""
import binascii
import struct

from firmware_py import cbor

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

_MAGIC = const(0x53)
_HEAD = const(7)


def pack(gen: int, obj) -> bytes:
    """Slot bytes holding obj (a dict) as generation gen."""
    if not isinstance(obj, dict):
        raise ValueError("state must be a dict")
    body = cbor.dumps(obj)
    if len(body) > 0xFFFF:
        raise ValueError("state longer than 65535 bytes")
    d = bytes((_MAGIC,)) + struct.pack("<IH", gen & 0xFFFFFFFF, len(body)) + body
    return d + struct.pack("<I", binascii.crc32(d))


def unpack(data) -> tuple:
    """(gen, dict, "ok") for valid slot bytes, else (0, None, reason) (rule S1)."""
    n = len(data)
    if n == 0:
        return 0, None, "empty"
    if n < _HEAD + 4 or data[0] != _MAGIC:
        return 0, None, "magic"
    gen, ln = struct.unpack_from("<IH", data, 1)
    if n != _HEAD + ln + 4:
        return 0, None, "length"
    if binascii.crc32(memoryview(data)[:n - 4]) != struct.unpack_from("<I", data, n - 4)[0]:
        return 0, None, "crc"
    try:
        obj = cbor.loads(data[_HEAD:n - 4])
    except ValueError:
        return 0, None, "cbor"
    if not isinstance(obj, dict):
        return 0, None, "cbor"
    return gen, obj, "ok"


def _flush(f) -> None:
    f.flush()


class State:
    """Two-slot store at path_prefix (rules S1-S4).  sync(f) makes a written file durable;
    sync_dir(dirpath) (optional) makes a newly created file's name durable."""

    def __init__(self, path_prefix: str, sync=None, sync_dir=None) -> None:
        self.prefix = path_prefix
        self._sync = sync or _flush
        self._sync_dir = sync_dir
        self._gen = 0
        self._slot = -1  # 0 = .a, 1 = .b holds the current state; -1 none
        self._loaded = False
        self.report: dict = {}
        self.bytes_written = 0
        self.last_bytes = 0

    def _path(self, slot: int) -> str:
        return self.prefix + (".a", ".b")[slot]

    def load(self):
        """The newest valid dict, or None when the store is fresh (rule S2)."""
        best = None
        self._gen = 0
        self._slot = -1
        rep: dict = {}
        for slot in (0, 1):
            try:
                with open(self._path(slot), "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            gen, obj, why = unpack(data)
            rep["ab"[slot]] = why
            if obj is not None and (best is None or gen > self._gen):
                best, self._gen, self._slot = obj, gen, slot
        rep["gen"] = self._gen
        self.report = rep
        self._loaded = True
        return best

    def save(self, obj) -> None:
        """Persist obj (a dict of ints/bytes/...) atomically (rule S3)."""
        if not self._loaded:
            self.load()
        data = pack(self._gen + 1, obj)
        slot = 1 if self._slot == 0 else 0
        path = self._path(slot)
        with open(path, "wb") as f:
            f.write(data)
            self._sync(f)
        if self._sync_dir is not None and self.report.get("ab"[slot]) == "empty":
            self._sync_dir(path.rsplit("/", 1)[0] if "/" in path else ".")
        self.report["ab"[slot]] = "ok"
        self._gen += 1
        self._slot = slot
        self.last_bytes = len(data)
        self.bytes_written += len(data)

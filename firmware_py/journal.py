"""Power-safe journal: append-only framed records (firmware_py.jframe) in bounded segments.

Rules (the record format and the scanning rules F1-F2 are in jframe):
 J1. A segment file j<base:08x>.log holds records from recno base on (jframe F1).  The newest
     segment takes appends; a new one starts when a record would take it past segment_bytes.
 J2. open() scans every segment (jframe F2): valid records are kept; nothing else is ever yielded.
 J3. A torn tail of the newest segment is cut off (truncate; on MicroPython, which has no
     truncate, copy the good prefix and rename it over), so the next append starts clean;
     the torn record was never acknowledged by append() and its recno is reused.  A torn tail
     left in an older segment (only after a cut that failed for want of space) stays, reported.
 J4. Damage is quarantined once: its bytes (first 1 KiB) go to q<base:08x>-<off:x>.bad with
     the offset, length and reason; open() reports it every time it is seen.  Damage reaching
     the end of the newest segment starts a new segment whose base skips ahead by
     ceil(bytes / 10) (the most records it can hold), so no recno is ever reused.
 J5. Full: an append that would take the segments past max_bytes returns FULL; ENOSPC, EFBIG
     or EDQUOT from the file system returns NOSPACE after cutting the torn bytes.  Nothing
     already journaled is dropped to make room.
 J6. ack_through(r) persists r (state.State, two slots) and then deletes every segment whose
     records all have recno <= r, except the newest: compaction writes only the ~18-byte ack.
     A cut in between is finished by the next open().  records() yields only recno > acked.
 J7. Reads are bounded: open() and records() read a segment into the journal's one read
     buffer of segment_bytes (allocated with the Journal, again after release()), and J3's
     copy of a torn segment's good prefix goes through it, so a device heap never needs a
     fresh segment-sized block after boot; only a segment larger than that (a record longer
     than segment_bytes) is read into a buffer of its own.

Exceptions: caller mistakes raise ValueError; OSErrors other than the no-space family pass
through; outcomes are returned values (append -> recno > 0, or FULL / NOSPACE).
"""
import os

from firmware_py.jframe import MIN_RECORD, REASONS, REC, TORN, encode, scan
from firmware_py.state import State

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

_QMAX = const(1024)
FULL = const(-1)  # append refused: the journal holds max_bytes
NOSPACE = const(-2)  # append refused: the file system is full
REFUSALS = {FULL: "journal_full", NOSPACE: "disk_full"}
_NOSPACE_ERRNOS = (28, 27, 122)  # ENOSPC, EFBIG, EDQUOT (Linux / MicroPython numbering)


def _flush(f) -> None:
    f.flush()


def _read(path: str, limit: int = -1) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit) if limit >= 0 else f.read()


def _append_handle(path):
    return open(path, "ab")


def _nospace(exc) -> bool:
    return bool(exc.args) and exc.args[0] in _NOSPACE_ERRNOS


def cut(path: str, size: int, sync=_flush, buf=None) -> None:
    """Shorten the file at path to size bytes (truncate, else copy the prefix and rename,
    through buf when it holds size bytes: J7, no segment-sized block after boot)."""
    if size == 0:
        with open(path, "wb") as f:
            sync(f)
        return
    with open(path, "r+b") as f:
        tr = getattr(f, "truncate", None)
        if tr is not None:
            tr(size)
            sync(f)
            return
    if buf is not None and len(buf) >= size:
        data = memoryview(buf)[:size]
        with open(path, "rb") as f:
            if (f.readinto(data) or 0) != size:
                raise OSError(5, "short read of %s" % path)   # EIO: the file shrank under us
    else:
        data = memoryview(_read(path, size))
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as g:
            g.write(data)
            sync(g)
        try:
            os.rename(tmp, path)
        except OSError:  # a file system whose rename does not replace (FAT): the complete
            os.remove(path)  # copy is kept, and open() renames an orphaned .tmp into place
            os.rename(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


class Journal:
    """A journal directory (rules J1-J6).  Call open() before anything else."""

    def __init__(self, dirpath: str, max_bytes: int = 65536, segment_bytes: int = 4096,
                 sync=None, sync_dir=None, quarantine_files: int = 16) -> None:
        if segment_bytes < 64 or max_bytes < segment_bytes:
            raise ValueError("need 64 <= segment_bytes <= max_bytes")
        self.dir = dirpath
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._sync = sync or _flush
        self._sync_dir = sync_dir
        self._qmax = quarantine_files
        self._state = State(dirpath + "/ack", sync, sync_dir)
        self._segs: list = []  # [base, good size] per segment, oldest first
        self._rbuf: bytearray | None = bytearray(segment_bytes)  # the read buffer (J7)
        self._f = None  # append handle of the newest segment
        self._torn = -1  # size to cut the newest segment back to, when >= 0
        self._roll = False
        self._open = False
        self.next = 1
        self.acked = 0
        self.used_bytes = 0
        self.bytes_written = 0

    def _load(self, path: str, size: int = -1):
        """(buffer, n): the first size bytes (all: -1) of a segment file in buffer[:n] (J7)."""
        if size < 0:
            size = os.stat(path)[6]
        buf = self._rbuf
        if buf is None and size <= self.segment_bytes:  # after release()
            buf = self._rbuf = bytearray(self.segment_bytes)
        with open(path, "rb") as f:
            if buf is None or size > len(buf):
                data = f.read(size)
                return data, len(data)
            return buf, f.readinto(memoryview(buf)[:size]) or 0

    def _path(self, base: int) -> str:
        return "%s/j%08x.log" % (self.dir, base)

    def open(self) -> dict:
        """Recover the directory (J2-J4, J6) and return the recovery report."""
        self._close()
        self._torn = -1
        self._roll = False
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        bases, qfiles = self._listing()
        st = self._state.load()
        a = st.get(0, 0) if st else 0
        self.acked = a if isinstance(a, int) else 0
        rep: dict = {"segments": 0, "records": 0, "unacked": 0, "torn": [], "damaged": [],
                     "quarantined": 0, "compacted": 0, "acked": self.acked, "next": 0,
                     "state": self._state.report}
        try:  # both ack slots exist from the start, so an ack never needs new space (J6)
            while "empty" in (self._state.report["a"], self._state.report["b"]):
                self._state.save({0: self.acked})
                self.bytes_written += self._state.last_bytes
        except OSError as exc:
            if not _nospace(exc):
                raise
        self._segs = [[b, 0] for b in bases]
        rep["compacted"] = self._compact()
        nxt = self._scan(rep, qfiles)
        self.next = max(nxt, self.acked + 1)
        self.used_bytes = 0
        for seg in self._segs:
            self.used_bytes += seg[1]
        self._open = True
        if self._torn >= 0:
            self._repair()
        if self._roll:
            try:
                self._new_segment()
            except OSError as exc:
                if not _nospace(exc):
                    raise
        rep["segments"] = len(self._segs)
        rep["next"] = self.next
        return rep

    def _listing(self):
        """(segment bases sorted, number of quarantine files) of the directory, finishing or
        discarding an interrupted cut() first."""
        bases = []
        qfiles = 0
        names = os.listdir(self.dir)
        for nm in names:
            if nm.endswith(".tmp"):  # an interrupted cut(): stale unless the original is gone
                if nm[:-4] in names:
                    os.remove(self.dir + "/" + nm)
                    continue
                os.rename(self.dir + "/" + nm, self.dir + "/" + nm[:-4])
                nm = nm[:-4]
            if len(nm) == 13 and nm[0] == "j" and nm.endswith(".log"):
                bases.append(int(nm[1:9], 16))
            elif nm[0] == "q" and nm.endswith(".bad"):
                qfiles += 1
        bases.sort()
        return bases, qfiles

    def _scan(self, rep: dict, qfiles: int) -> int:
        """Scan every segment into rep (J3, J4): count records, note torn tails (the newest
        one's is cut back later) and quarantine damaged ones; the next sequence number."""
        nxt = 1
        for i in range(len(self._segs)):
            seg = self._segs[i]
            base = seg[0]
            newest = i == len(self._segs) - 1
            buf, n = self._load(self._path(base))
            seg[1] = n
            nxt = base
            for kind, off, end, r, x in scan(buf, base, n):
                if kind == REC:
                    rep["records"] += 1
                    if r > self.acked:
                        rep["unacked"] += 1
                    nxt = r + 1
                elif kind == TORN:
                    rep["torn"].append((base, off, end - off))
                    if newest:
                        self._torn = off
                else:
                    rep["damaged"].append((base, off, end - off, REASONS[x], r))
                    qpath = "%s/q%08x-%x.bad" % (self.dir, base, off)
                    try:
                        os.stat(qpath)
                    except OSError:
                        raw = bytes(buf[off:min(end, off + _QMAX)])
                        if qfiles < self._qmax and self._quarantine(
                                qpath, base, off, raw, end - off, REASONS[x]):
                            qfiles += 1
                            rep["quarantined"] += 1
                    if newest and end == n:
                        nxt += (end - off + MIN_RECORD - 1) // MIN_RECORD
                        self._roll = True
            buf = b""
        return nxt

    def _quarantine(self, qpath: str, base: int, off: int, raw, nbytes: int, why: str) -> bool:
        head = ("seg=%08x off=%d len=%d reason=%s\n" % (base, off, nbytes, why)).encode()
        try:
            with open(qpath, "wb") as f:
                f.write(head)
                f.write(raw)
                self._sync(f)
        except OSError as exc:
            if not _nospace(exc):
                raise
            try:
                os.remove(qpath)
            except OSError:
                pass
            return False
        self.bytes_written += len(head) + len(raw)
        return True

    def _compact(self) -> int:
        n = 0
        while len(self._segs) > 1 and self._segs[1][0] - 1 <= self.acked:
            os.remove(self._path(self._segs[0][0]))
            self.used_bytes -= self._segs.pop(0)[1]
            n += 1
        return n

    def _repair(self) -> None:
        """Cut the newest segment back to its good size; on want of space, roll over instead."""
        seg = self._segs[-1]
        path = self._path(seg[0])
        size = self._torn
        try:
            cut(path, size, self._sync, self._rbuf)
        except OSError as exc:
            if not _nospace(exc):
                raise
            size = os.stat(path)[6]
            self._roll = True
        self.used_bytes += size - seg[1]
        seg[1] = size
        self._torn = -1

    def _new_segment(self) -> None:
        self._close()
        f = _append_handle(self._path(self.next))
        self._roll = False
        self._segs.append([self.next, 0])
        self._f = f
        if self._sync_dir is not None:
            self._sync_dir(self.dir)
        self._compact()

    def append(self, payload) -> int:
        """Journal payload (bytes); return its recno (> 0), or FULL / NOSPACE (rule J5)."""
        if not self._open:
            raise ValueError("journal not open")
        rec = encode(self.next, payload)
        n = len(rec)
        if n > self.segment_bytes:
            raise ValueError("record longer than segment_bytes")
        if self._torn >= 0:
            self._repair()
        segs = self._segs
        seg = segs[-1] if segs else [self.next, 0]
        roll = (not segs or self._roll or seg[1] + n > self.segment_bytes
                or self.next - seg[0] >= 0xFFFF)
        free = self.max_bytes - self.used_bytes
        if roll and self.acked >= self.next - 1:
            free += seg[1]  # the newest segment is all acked: the roll compacts it
        if n > free:
            return FULL
        good = -1
        try:
            if roll:
                self._new_segment()
                seg = segs[-1]
            f = self._f
            if f is None:
                f = self._f = _append_handle(self._path(seg[0]))
            good = seg[1]
            w = f.write(rec)
            while w < n:  # a short write: go on until the file system refuses
                k = f.write(rec[w:])
                if not k:
                    raise OSError(28)  # a regular file that takes nothing is full
                w += k
            self._sync(f)
        except OSError as exc:
            if good >= 0:
                self._close()
                self._torn = good
                self._repair()
            if _nospace(exc):
                return NOSPACE
            raise
        seg[1] += n
        self.used_bytes += n
        self.bytes_written += n
        r = self.next
        self.next = r + 1
        return r

    def records(self, from_recno: int = 0):
        """Iterator of (recno, payload) for unacked records with recno >= from_recno, in order."""
        lo = max(from_recno, self.acked + 1)
        segs = [(s[0], s[1]) for s in self._segs]
        for i in range(len(segs)):
            base, size = segs[i]
            if i + 1 < len(segs) and segs[i + 1][0] <= lo:
                continue
            buf, n = self._load(self._path(base), size)
            mv = memoryview(buf)   # one copy per record, not a slice and then its copy
            for kind, _, end, r, h in scan(buf, base, n):
                if kind == REC and r >= lo:
                    yield r, bytes(mv[h:end - 4])

    def ack_through(self, recno: int) -> bool:
        """Acknowledge every record <= recno and compact (rule J6).  False when the ack could
        not be persisted for want of space (nothing is deleted then)."""
        if recno >= self.next:
            raise ValueError("ack beyond the last record")
        if recno <= self.acked:
            return True
        try:
            self._state.save({0: recno})
        except OSError as exc:
            if _nospace(exc):
                return False
            raise
        self.bytes_written += self._state.last_bytes
        self.acked = recno
        self._compact()
        return True

    def _close(self) -> None:
        f = self._f
        self._f = None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def release(self) -> None:
        """Close the newest segment's file handle; the next append reopens it (nothing else
        changes), and drop the read buffer (J7). For hosts that keep many journals open at once,
        and for a simulated power cut."""
        self._close()
        self._rbuf = None

    def tail_size(self) -> int:
        """Valid bytes of the newest segment (where the next record starts)."""
        return self._segs[-1][1] if self._segs else 0

    def close(self) -> None:
        self._close()
        self._open = False

    def stats(self) -> dict:
        return {"bytes_written": self.bytes_written, "segments": len(self._segs),
                "used_bytes": self.used_bytes, "next": self.next, "acked": self.acked}

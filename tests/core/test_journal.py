# Journal framing, recovery and the file-backed Journal: runs on CPython (pytest) and on the
# MicroPython unix port (tests/mp/run.py).  Files live under build/tmp/<unique>, removed after.
import binascii
import os

from firmware_py import jframe
from firmware_py.jframe import BAD, REC, TORN, encode, scan
from firmware_py.journal import FULL, Journal, cut
from firmware_py.state import State
import vec

SIZES = (10, 0, 1, 12, 70, 9, 11)


def payload(i):
    n = SIZES[i % len(SIZES)]
    return bytes(bytearray((i * 7 + j) & 0xFF for j in range(n)))


def build(base, count):
    """(segment bytes, [(offset, end, recno, payload)])."""
    buf = b""
    recs = []
    for i in range(count):
        rec = encode(base + i, payload(i))
        recs.append((len(buf), len(buf) + len(rec), base + i, payload(i)))
        buf += rec
    return buf, recs


def got(events, buf):
    return [(e[3], buf[e[4]:e[2] - 4]) for e in events if e[0] == REC]


def clear(d):
    for n in os.listdir(d):
        os.remove(d + "/" + n)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_golden_frames():
    assert binascii.hexlify(encode(1, b"")) == b"a500000100ba5b1165d2"
    assert binascii.hexlify(encode(0x10203, b"\x82\x01\x18\x2a")) == b"a504000302438201182ae824568d"
    assert len(encode(7, b"x" * 300)) == 310


def test_scan_intact_and_seq_wrap():
    for base in (1, 65530, 0x1FFF0):
        buf, recs = build(base, 20)
        ev = list(scan(buf, base))
        assert [e[0] for e in ev] == [REC] * 20
        assert got(ev, buf) == [(r[2], r[3]) for r in recs]


def test_scan_cut_at_every_offset():
    buf, recs = build(5, 14)
    ends = [r[1] for r in recs]
    for k in range(len(buf) + 1):
        ev = list(scan(buf[:k], 5))
        assert got(ev, buf) == [(r[2], r[3]) for r in recs if r[1] <= k], k
        kinds = [e[0] for e in ev if e[0] != REC]
        if k == 0 or k in ends:
            assert kinds == [], k
        else:
            start = max([0] + [e for e in ends if e < k])
            assert kinds == [TORN] and ev[-1][1:3] == (start, k), (k, ev[-1])


def test_scan_flip_every_bit():
    buf, recs = build(100, 12)
    step = 1
    for i in range(0, len(buf) * 8, step):
        b = bytearray(buf)
        b[i >> 3] ^= 1 << (i & 7)
        b = bytes(b)
        hit = [r for r in recs if r[0] <= i >> 3 < r[1]][0]
        ev = list(scan(b, 100))
        assert got(ev, b) == [(r[2], r[3]) for r in recs if r is not hit], i
        bad = [e for e in ev if e[0] != REC]
        off = (i >> 3) - hit[0]
        why = 1 if off == 0 else 2 if off < 6 else 4
        assert bad == [(BAD, hit[0], hit[1], hit[2] - 1, why)], (i, bad)


def test_scan_resyncs_over_garbage_and_rejects_replay():
    buf, recs = build(1, 6)
    junk = b"\xa5\x00\x00\x00\x00\x00\xa5\xa5garbage\x00"
    b = buf[:recs[2][1]] + junk + buf[recs[2][1]:]
    ev = list(scan(b, 1))
    assert got(ev, b) == [(r[2], r[3]) for r in recs]
    assert [e[1:] for e in ev if e[0] == BAD] == [(recs[2][1], recs[2][1] + len(junk), 3, 2)]
    # a replayed (older) record is damage "order", never a second copy
    b = buf + buf[recs[1][0]:recs[1][1]]
    ev = list(scan(b, 1))
    assert got(ev, b) == [(r[2], r[3]) for r in recs]
    assert [e[4] for e in ev if e[0] == BAD] == [5] and jframe.REASONS[5] == "order"
    # zeros at the end (a file system that grew the file but lost the data) are damage
    ev = list(scan(buf + bytes(7), 1))
    assert [e[0] for e in ev][-1] == BAD and ev[-1][1:3] == (len(buf), len(buf) + 7)


def test_encode_refuses_oversize():
    try:
        encode(1, bytes(65536))
    except ValueError:
        return
    raise AssertionError("no ValueError")


def test_cut_shortens_files():
    d = vec.tmpdir('tj')
    try:
        p = d + "/f"
        write(p, b"0123456789")
        cut(p, 4)
        assert read(p) == b"0123"
        cut(p, 0)
        assert read(p) == b"" and sorted(os.listdir(d)) == ["f"]
    finally:
        vec.rmtree(d)


def fill(j, count, start=0):
    out = []
    for i in range(start, start + count):
        r = j.append(payload(i))
        assert r > 0, r
        out.append((r, payload(i)))
    return out


def test_append_records_reopen():
    d = vec.tmpdir('tj')
    try:
        j = Journal(d + "/j", max_bytes=2048, segment_bytes=128)
        rep = j.open()
        assert rep["next"] == 1 and rep["records"] == 0
        w0 = j.bytes_written  # the two ack slots, written once at creation
        assert w0 == 28 and sorted(os.listdir(d + "/j")) == ["ack.a", "ack.b"]
        want = fill(j, 40)
        assert [x[0] for x in want] == list(range(1, 41))
        assert list(j.records()) == want
        assert list(j.records(35)) == want[34:]
        st = j.stats()
        assert st["segments"] > 2 and st["used_bytes"] == st["bytes_written"] - w0
        j.close()
        j = Journal(d + "/j", max_bytes=2048, segment_bytes=128)
        rep = j.open()
        assert rep["records"] == 40 and rep["torn"] == [] and rep["damaged"] == []
        assert list(j.records()) == want and j.append(b"z") == 41
        j.close()
    finally:
        vec.rmtree(d)


def snapshot(d):
    return dict((n, read(d + "/" + n)) for n in os.listdir(d))


def restore(d, files):
    clear(d)
    for n in files:
        write(d + "/" + n, files[n])


def test_cut_newest_segment_at_every_offset():
    d = vec.tmpdir('tj')
    try:
        jd = d + "/j"
        j = Journal(jd, max_bytes=4096, segment_bytes=160)
        j.open()
        want = fill(j, 30)
        j.close()
        files = snapshot(jd)
        newest = sorted(n for n in files if n[0] == "j")[-1]
        base = int(newest[1:9], 16)
        data = files[newest]
        ends = [e[2] for e in scan(data, base)]
        for k in range(len(data) + 1):
            files[newest] = data[:k]
            restore(jd, files)
            j = Journal(jd, max_bytes=4096, segment_bytes=160)
            rep = j.open()
            keep = [w for w in want if w[0] < base] + [
                w for w, e in zip(want[base - 1:], ends) if e <= k]
            assert list(j.records()) == keep, k
            assert (rep["torn"] == []) == (k == 0 or k in ends), (k, rep)
            assert rep["damaged"] == [] and os.stat(jd + "/" + newest)[6] == (
                max([0] + [e for e in ends if e <= k]))
            r = j.append(b"next")
            assert r == len(keep) + 1, (k, r)
            j.close()
            rep = Journal(jd, max_bytes=4096, segment_bytes=160).open()
            assert rep["torn"] == [] and rep["records"] == len(keep) + 1
        files[newest] = data
    finally:
        vec.rmtree(d)


def test_bit_flips_are_quarantined_once():
    d = vec.tmpdir('tj')
    try:
        jd = d + "/j"
        j = Journal(jd, max_bytes=4096, segment_bytes=160)
        j.open()
        want = fill(j, 30)
        j.close()
        files = snapshot(jd)
        segs = sorted(n for n in files if n[0] == "j")
        old, newest = segs[0], segs[-1]
        # a flip inside record 3 (older segment): lost record is quarantined, numbering kept
        _, recs = build(1, 30)
        b = bytearray(files[old])
        b[recs[2][0] + 8] ^= 0x10
        files2 = dict(files)
        files2[old] = bytes(b)
        restore(jd, files2)
        j = Journal(jd, max_bytes=4096, segment_bytes=160)
        rep = j.open()
        assert rep["damaged"] == [(1, recs[2][0], recs[2][1] - recs[2][0], "crc", 2)]
        assert rep["quarantined"] == 1
        q = "q%08x-%x.bad" % (1, recs[2][0])
        assert read(jd + "/" + q).split(b"\n", 1)[1] == bytes(b[recs[2][0]:recs[2][1]])
        assert list(j.records()) == want[:2] + want[3:]
        j.close()
        rep = Journal(jd, max_bytes=4096, segment_bytes=160).open()
        assert rep["quarantined"] == 0 and len(rep["damaged"]) == 1
        # a flip in the newest segment's last record: numbering skips ahead past it
        nb = int(newest[1:9], 16)
        b = bytearray(files[newest])
        b[len(b) - 3] ^= 1
        files2 = dict(files)
        files2[newest] = bytes(b)
        restore(jd, files2)
        j = Journal(jd, max_bytes=4096, segment_bytes=160)
        rep = j.open()
        assert rep["damaged"][0][3] == "crc" and rep["damaged"][0][4] == 29
        assert list(j.records()) == want[:29]
        skip = (rep["damaged"][0][2] + 9) // 10  # most records the damaged bytes could hold
        assert rep["damaged"][0][0] == nb and skip >= 1
        r = j.append(b"after")
        assert r == 30 + skip, r
        j.close()
        j = Journal(jd, max_bytes=4096, segment_bytes=160)
        rep = j.open()
        assert rep["quarantined"] == 0 and rep["next"] == 31 + skip
        assert list(j.records()) == want[:29] + [(30 + skip, b"after")]
        j.close()
    finally:
        vec.rmtree(d)


def test_full_refuses_then_compaction_frees():
    d = vec.tmpdir('tj')
    try:
        j = Journal(d + "/j", max_bytes=400, segment_bytes=100)
        j.open()
        got_ = []
        while True:
            r = j.append(payload(len(got_)))
            if r < 0:
                break
            got_.append(r)
        assert r == FULL and j.used_bytes <= 400
        assert len(list(j.records())) == len(got_)  # nothing dropped
        assert j.ack_through(got_[-1] - 3) is True
        assert j.append(b"again") == got_[-1] + 1
        assert [x[0] for x in j.records()] == got_[-3:] + [got_[-1] + 1]
        j.close()
    finally:
        vec.rmtree(d)


def test_ack_persists_and_interrupted_compaction_finishes():
    d = vec.tmpdir('tj')
    try:
        jd = d + "/j"
        j = Journal(jd, max_bytes=4096, segment_bytes=100)
        j.open()
        want = fill(j, 25)
        nseg = j.stats()["segments"]
        try:
            j.ack_through(26)
            raise AssertionError("ack beyond the end accepted")
        except ValueError:
            pass
        j.close()
        # the ack was saved but the cut came before the segments were deleted
        State(jd + "/ack").save({0: 20})
        j = Journal(jd, max_bytes=4096, segment_bytes=100)
        rep = j.open()
        assert rep["acked"] == 20 and rep["compacted"] > 0
        assert j.stats()["segments"] == nseg - rep["compacted"]
        assert list(j.records()) == want[20:]
        assert j.ack_through(25) and list(j.records()) == []
        assert j.stats()["segments"] == 1 and j.append(b"n") == 26
        j.close()
        j = Journal(jd, max_bytes=4096, segment_bytes=100)
        assert j.open()["next"] == 27 and list(j.records()) == [(26, b"n")]
        j.close()
    finally:
        vec.rmtree(d)


def test_caller_mistakes_raise():
    d = vec.tmpdir('tj')
    try:
        j = Journal(d + "/j", max_bytes=400, segment_bytes=100)
        for fn in (lambda: j.append(b"x"), lambda: j.open() and j.append(bytes(91)),
                   lambda: Journal(d, max_bytes=50, segment_bytes=100)):
            try:
                fn()
                raise AssertionError("accepted")
            except ValueError:
                pass
        j.close()
    finally:
        vec.rmtree(d)


def test_interrupted_cut_copies_are_resolved():
    d = vec.tmpdir('tj')
    try:
        j = Journal(d + "/j", max_bytes=400, segment_bytes=100)
        j.open()
        fill(j, 3)
        j.close()
        write(d + "/j/j00000001.log.tmp", b"half a copy")
        j = Journal(d + "/j", max_bytes=400, segment_bytes=100)
        assert j.open()["records"] == 3
        assert "j00000001.log.tmp" not in os.listdir(d + "/j")
        j.close()
        # cut on a file system whose rename does not replace: the original was removed and
        # the cut came before the complete copy was renamed into place
        data = read(d + "/j/j00000001.log")
        os.remove(d + "/j/j00000001.log")
        write(d + "/j/j00000001.log.tmp", data)
        j = Journal(d + "/j", max_bytes=400, segment_bytes=100)
        assert j.open()["records"] == 3 and [r for r, _ in j.records()] == [1, 2, 3]
        assert "j00000001.log.tmp" not in os.listdir(d + "/j")
        j.close()
    finally:
        vec.rmtree(d)

# Board support for the emulated Cortex-M3 board (MicroPython, frozen by tools/mpbuild.py).
# A RAM block device outside the MicroPython heap holding a littlefs2 filesystem: what a real
# board does with its flash (a machine.Flash / esp32.Partition block device), here on the
# second SSRAM bank of the MPS2-AN385 so that the 32 KiB heap holds only littlefs's buffers.
import uctypes
import vfs
import os


class RamBlocks:
    """Block device (MicroPython's extended interface) over size bytes of RAM at addr."""

    def __init__(self, addr, size, block=512):
        self.mv = memoryview(uctypes.bytearray_at(addr, size))
        self.block = block
        self.count = size // block

    def readblocks(self, n, buf, off=0):
        p = n * self.block + off
        buf[:] = self.mv[p:p + len(buf)]

    def writeblocks(self, n, buf, off=None):
        p = n * self.block + (off or 0)
        self.mv[p:p + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return self.block
        if op == 6:
            return 0  # erase: RAM needs none
        return None


def mount(addr, size, fresh):
    """Mount littlefs on RAM at addr (formatting it first when fresh) at / and chdir there."""
    bd = RamBlocks(addr, size)
    if fresh:
        vfs.VfsLfs2.mkfs(bd)
    try:
        vfs.umount("/")
    except OSError:
        pass
    vfs.mount(vfs.VfsLfs2(bd), "/")
    os.chdir("/")


class RamFile:
    """A file of RamFS: f = [bytearray (its capacity), size]."""

    def __init__(self, f, pos):
        self.f, self.pos = f, pos

    def write(self, b):
        n = len(b)
        end = self.pos + n
        buf = self.f[0]
        if buf is not None:  # None: RamFS(keep=False), sizes kept and bytes dropped
            if end > len(buf):  # grow by doubling: rare allocations, amortised
                nb = bytearray(max(end, 2 * len(buf)))
                nb[:self.f[1]] = buf[:self.f[1]]
                buf = self.f[0] = nb
            buf[self.pos:end] = b
        self.pos = end
        if end > self.f[1]:
            self.f[1] = end
        return n

    def read(self, n=-1):
        size = self.f[1]
        end = size if n < 0 else min(size, self.pos + n)
        out = bytes(end - self.pos) if self.f[0] is None else bytes(self.f[0][self.pos:end])
        self.pos = end
        return out

    def flush(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class RamFS:
    """A filesystem in the heap (MicroPython's VFS protocol): what a metered round costs
    without any flash write. A file's buffer starts at cap bytes and doubles when full, so
    most writes allocate nothing; with keep=False a file keeps only its size (reads give
    zero bytes), for measuring where nothing is read back. vfs.mount(RamFS(), "/ram")."""

    def __init__(self, cap=128, keep=True):
        self.cap = cap if keep else 0
        self.files = {}
        self.dirs = {""}

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def _p(self, path):
        return path.strip("/")

    def ilistdir(self, path):
        p = self._p(path)
        pre = p + "/" if p else ""
        for name in list(self.files) + list(self.dirs):
            if name and name.startswith(pre) and "/" not in name[len(pre):]:
                yield (name[len(pre):], 0x4000 if name in self.dirs else 0x8000, 0)

    def stat(self, path):
        p = self._p(path)
        if p in self.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if p not in self.files:
            raise OSError(2)
        return (0x8000, 0, 0, 0, 0, 0, self.files[p][1], 0, 0, 0)

    def mkdir(self, path):
        p = self._p(path)
        if p in self.dirs or p in self.files:
            raise OSError(17)
        self.dirs.add(p)

    def remove(self, path):
        if self.files.pop(self._p(path), None) is None:
            raise OSError(2)

    def rename(self, old, new):
        self.files[self._p(new)] = self.files.pop(self._p(old))

    def open(self, path, mode):
        p = self._p(path)
        f = self.files.get(p)
        if f is None and ("w" in mode or "a" in mode):
            f = self.files[p] = [bytearray(self.cap) if self.cap else None, 0]
        elif f is not None and "w" in mode:
            f[1] = 0
        if f is None:
            raise OSError(2)
        return RamFile(f, f[1] if "a" in mode else 0)

    def chdir(self, path):
        pass

    def getcwd(self):
        return ""

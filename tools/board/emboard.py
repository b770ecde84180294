# Board support for the emulated Cortex-M3 board (MicroPython, frozen by tools/fw_m3.py).
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

"""Copy a file while hashing it: each chunk is read once, hashed and written from the same buffer.

Used to bring blobs in from the shared tier, where every byte must be hashed anyway: an I/O thread reads
the next chunk and writes the previous one while this thread hashes, so a single blob keeps the disk and
one core busy. On a CoW filesystem holding both files the copy is a reflink and the destination is
hashed instead.

>>> import tempfile, hashlib; from pathlib import Path
>>> d = Path(tempfile.mkdtemp()); (d / "a").write_bytes(b"hello")
5
>>> copy_verified(d / "a", d / "b", 5) == hashlib.sha256(b"hello").hexdigest()
True
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import fcntl
import hashlib
import os
from pathlib import Path

from ..._fs import open_regular
from ..._io import start_writeback

#: one pread/pwrite; three such buffers per blob being copied
READ_CHUNK = 16 * 2**20
#: fsync copies before they are published (as downloads are); bench/cache.py measures both settings
FSYNC = True
#: with FSYNC, start writeback of every this many bytes as soon as they are written (sync_file_range),
#: so the final fsync finds little left to write; 0 disables it
WRITEBACK_EVERY = 64 * 2**20
#: ioctl FICLONE: share the extents of a file on the same CoW filesystem (btrfs, XFS) instead of copying
_FICLONE = 0x40049409


def copy_verified(src: Path, dst: Path, size: int, also=None) -> str:
    """Copy ``src`` to a new file ``dst`` and return the sha256 of the bytes written (``also``, a
    hashlib object, is fed the same bytes: the git blob id check). ``size`` is what ``src`` must hold
    from start to end (a file that changes size meanwhile is an OSError). With ``FSYNC`` writeback
    starts every ``WRITEBACK_EVERY`` bytes and the file is fdatasynced at the end. ``src`` must be a plain
    file (a FIFO, a device or a symlink in its place is an OSError, never waited on or read)."""
    fd_in = open_regular(src)
    try:
        fd_out = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        os.close(fd_in)
        raise
    try:
        if os.fstat(fd_in).st_size != size:
            raise OSError(errno.EIO, f"{src} changed size while being read")
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd_in, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if size and _reflink(fd_in, fd_out):
            h = _hash_fd(fd_out, size, dst, also)
        else:
            h = _pipelined_copy(fd_in, fd_out, size, src, also)
        if os.fstat(fd_in).st_size != size:
            raise OSError(errno.EIO, f"{src} changed size while being read")
        if FSYNC:
            os.fdatasync(fd_out)
    finally:
        os.close(fd_in)
        os.close(fd_out)
    return h.hexdigest()


def _reflink(fd_in: int, fd_out: int) -> bool:
    """Clone ``fd_in`` into ``fd_out`` when both are on one CoW filesystem; False when it cannot."""
    try:
        if os.fstat(fd_in).st_dev != os.fstat(fd_out).st_dev:
            return False
        fcntl.ioctl(fd_out, _FICLONE, fd_in)
        return True
    except OSError:
        return False


def _read_full(fd: int, view: memoryview, off: int, name: object) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], off + got)
        if n <= 0:
            raise OSError(errno.EIO, f"{name} ended at byte {off + got}, expected more")
        got += n


def _write_full(fd: int, view: memoryview, off: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], off + done)
    if FSYNC and WRITEBACK_EVERY:
        end = off + len(view)
        if end // WRITEBACK_EVERY != off // WRITEBACK_EVERY:
            start = (end // WRITEBACK_EVERY - 1) * WRITEBACK_EVERY
            start_writeback(fd, start, WRITEBACK_EVERY)


def _hash_fd(fd: int, size: int, name: object, also=None):
    h = hashlib.sha256()
    view = memoryview(bytearray(min(READ_CHUNK, max(size, 1))))
    for off in range(0, size, len(view)):
        part = view[: min(len(view), size - off)]
        _read_full(fd, part, off, name)
        h.update(part)
        if also is not None:
            also.update(part)
    return h


def _pipelined_copy(fd_in: int, fd_out: int, size: int, src: object, also=None):
    h = hashlib.sha256()
    if size == 0:
        return h
    try:
        os.posix_fallocate(fd_out, 0, size)
    except (OSError, AttributeError):
        pass  # a filesystem without fallocate: plain writes
    chunk = min(READ_CHUNK, size)
    bufs = [memoryview(bytearray(chunk)) for _ in range(3)]
    count = -(-size // chunk)

    def read(k: int) -> memoryview:
        view = bufs[k % 3][: min(chunk, size - k * chunk)]
        _read_full(fd_in, view, k * chunk, src)
        return view

    # One I/O thread, first in first out: the write of chunk k is queued before the read of chunk
    # k + 3 into the same buffer, so three buffers are enough.
    with cf.ThreadPoolExecutor(1) as io:
        pending = io.submit(read, 0)
        writes: list[cf.Future] = []
        try:
            for k in range(count):
                view = pending.result()
                if k + 1 < count:
                    pending = io.submit(read, k + 1)
                h.update(view)  # releases the GIL: the I/O thread reads and writes meanwhile
                if also is not None:
                    also.update(view)
                writes.append(io.submit(_write_full, fd_out, view, k * chunk))
                if writes[0].done():
                    writes.pop(0).result()
        except BaseException:
            for w in writes:
                w.cancel()
            pending.cancel()
            raise
        for w in writes:
            w.result()
    return h

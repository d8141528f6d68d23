"""The blob store: publish verified content under its sha256; the hashing helpers that check it.

Correctness never depends on a lock: content is written to a unique temporary file, fsynced, made
read-only and renamed into ``blobs/sha256/ab/<digest>``. Two writers of the same digest are benign:
the second finds the blob in place and keeps it once it has checked its bytes (a damaged one is
replaced by the verified copy).

>>> import tempfile; from pathlib import Path
>>> s = BlobStore(Layout(Path(tempfile.mkdtemp())))
>>> d = s.put_bytes(b"hello")
>>> s.path(d).read_bytes()
b'hello'
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import stat
import threading
import uuid
from pathlib import Path

from .._fs import fsync_dir, fsync_file
from ..errors import IntegrityError
from .layout import Layout

log = logging.getLogger(__name__)

HASH_BLOCK = 8 * 2**20


_local = threading.local()


def _hash_buffer() -> bytearray:
    """A per-thread reusable read buffer (no fresh allocation and page faults for every file)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(HASH_BLOCK)
    return buf


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sha256_file(path: Path | str, *, h=None) -> hashlib._Hash:
    """Hash the file at ``path`` (into ``h`` when given) with big preads into a reused per-thread buffer
    (hashlib releases the GIL on large buffers, so threads hashing different files run in parallel)."""
    h = h or hashlib.sha256()
    view = memoryview(_hash_buffer())[:HASH_BLOCK]
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, end, os.POSIX_FADV_SEQUENTIAL)
        pos = 0
        while pos < end:
            n = os.preadv(fd, [view[: min(HASH_BLOCK, end - pos)]], pos)
            if n <= 0:
                raise IntegrityError(f"{path}: file ended at byte {pos}, expected {end}; delete it and pull again")
            h.update(view[:n])
            pos += n
    finally:
        os.close(fd)
    return h


def sha256_blob(path: Path | str) -> str:
    """The sha256 of one of the cache's own blobs, hashed through a read-only mapping: no copy out of
    the page cache (docs/benchmarks.md, "Verify", compares it with preads).

    Only for blobs: they are read-only and never truncated (warmstart unlinks or renames them, which a
    mapping survives). A file someone else may truncate meanwhile must use :func:`sha256_file`: a
    truncated mapping raises SIGBUS.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return hashlib.sha256().hexdigest()
        h = hashlib.sha256()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if hasattr(mmap, "MADV_SEQUENTIAL"):
                m.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(m)
            try:
                for off in range(0, size, HASH_BLOCK):
                    h.update(view[off:off + HASH_BLOCK])
            finally:
                view.release()
        return h.hexdigest()


_GIT_OID = re.compile(r"[0-9a-f]{40}")


def git_hasher(git_oid: object, size: int):
    """A sha1 already fed git's blob header, when ``git_oid`` is a git blob id (40 lowercase hex); else
    None. git names a blob ``sha1(b"blob <size>\\0" + content)``: the Hub lists that id for files it
    gives no sha256 for.

    >>> h = git_hasher("b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0", 5); h.update(b"hello"); h.hexdigest()
    'b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0'
    """
    if not isinstance(git_oid, str) or not _GIT_OID.fullmatch(git_oid):
        return None
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % size)
    return h


def git_oid_file(path: Path | str, git_oid: str) -> bool:
    """Whether the file at ``path`` has the git blob id ``git_oid`` (False for a malformed id)."""
    h = git_hasher(git_oid, os.stat(path).st_size)
    return h is not None and sha256_file(path, h=h).hexdigest() == git_oid


class BlobStore:
    """Immutable content-addressed files under ``layout.blobs``."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def path(self, digest: str) -> Path:
        return self.layout.blob(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self.layout.blob(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def publish(self, tmp: Path, digest: str, *, fsync: bool = True) -> Path:
        """Move a fully written and verified ``tmp`` file into place as blob ``digest``.

        A file already at the blob's path is kept only if it holds ``digest`` (same size, then same
        sha256: publishing happens once per download, so hashing it here is cheap next to the
        download); a truncated or corrupt one is replaced by the verified ``tmp`` in one rename (a
        rename needs only the directory writable, not the read-only blob)."""
        dest = self.layout.blob(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if fsync:
            fsync_file(tmp)
        os.chmod(tmp, 0o444)
        if _holds(dest, digest, os.stat(tmp).st_size):
            os.unlink(tmp)  # someone else published the same content first
            return dest
        if os.path.lexists(dest):
            log.warning("blob %s in the cache was corrupt or truncated; replaced it with the verified copy",
                        digest[:12])
        os.replace(tmp, dest)
        if fsync:
            fsync_dir(dest.parent)
        return dest

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.has(digest, len(data)):
            return digest
        tmp = self.layout.tmp / f"put-{uuid.uuid4().hex}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        self.publish(tmp, digest)
        return digest

    def remove(self, digest: str) -> int:
        """Delete a blob; returns the bytes freed (0 when it was not there)."""
        p = self.layout.blob(digest)
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            return 0
        return size


def _holds(path: Path, digest: str, size: int) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes whose sha256 is ``digest`` (hashed with
    preads, not a mapping: a damaged file may be truncated meanwhile)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    try:
        return sha256_file(path).hexdigest() == digest
    except (OSError, IntegrityError):
        return False


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new or truncated ``dst``: in the kernel (a reflink on CoW filesystems) when it can."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        try:
            off = 0
            while off < size:
                n = os.copy_file_range(fi.fileno(), fo.fileno(), size - off)
                if n == 0:
                    break
                off += n
            if off == size:
                return
        except (OSError, AttributeError):
            pass
        fi.seek(0)
        fo.seek(0)
        fo.truncate()
        while chunk := fi.read(HASH_BLOCK):
            fo.write(chunk)

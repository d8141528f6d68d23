"""Cache tiers around the disk cache: a RAM tier (tmpfs) above it and a shared tier (a directory many
nodes mount) below it.

::

    $WARMSTART_MEMORY_DIR/ (e.g. /dev/shm/warmstart)     $WARMSTART_SHARED_DIR/ (CephFS, NFS, JuiceFS…)
    ├── blobs/sha256/ab/<digest>   copies of disk blobs   ├── blobs/sha256/ab/<digest>   verified content
    ├── views/<name>/<file> -> …/blobs/sha256/…           ├── keys/<transfer key>        "<digest>" (files
    └── tmp/                                             │                   with a git blob id, no sha256)
                                                         └── (temporary names: .<digest>.<uuid>.tmp)

The RAM tier is a cache over the disk cache: every blob it holds is also on disk, so *demoting* a blob
(its LRU, by last use) only drops the RAM copy. It survives process restarts (and pod restarts when it
is a node path). The shared tier needs no locks: a writer copies to a unique temporary name and
renames; a reader verifies the sha256 of everything it reads, so a torn or corrupt file is ignored
(and removed), never served.

Anyone who can write the shared directory is untrusted for content: a file is taken from it only when
the origin's listing says what the file must be. A file with a sha256 is looked up by it; a file with
only a git blob id (the Hub's non-LFS files) is looked up through ``keys/`` and its copy must hash to
that git blob id too before it is published; a file with neither comes from the origin.

>>> ok = shared_fetch(cache, Path("/mnt/models"), digest, size)          # doctest: +SKIP
>>> shared_publish(Path("/mnt/models"), cache.store.path(digest), digest)  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .._fs import atomic_write, reflink
from .._io import start_writeback
from ..errors import CacheFullError
from . import leases
from .layout import Layout, check_digest, scan_blobs
from .paths import check_relpath, inside
from .store import _copy, cpu_count, fsync_file, git_hasher
from .views import link_atomic

if TYPE_CHECKING:
    from .manager import Cache

log = logging.getLogger(__name__)

#: one pread/pwrite; three such buffers per blob being copied
READ_CHUNK = 16 * 2**20
#: blobs copied at once from the shared tier (None: one per CPU); each copy also has an I/O thread
BLOB_WORKERS: int | None = None
#: fsync blobs copied from the shared tier before publishing them (as downloads are); the bench measures both
FSYNC = True
#: with FSYNC, start writeback of every this many bytes as soon as they are written (sync_file_range),
#: so the final fsync finds little left to write; 0 disables it
WRITEBACK_EVERY = 64 * 2**20


# ---------------------------------------------------------------------------------------- RAM tier
class MemoryTier:
    """Blobs copied into a tmpfs directory with their own byte budget and LRU.

    >>> tier = MemoryTier(Path("/dev/shm/warmstart"), max_size=8 * 10**9)        # doctest: +SKIP
    >>> view = tier.promote(cache, "hf://org/name", "<commit>", files)           # doctest: +SKIP
    """

    def __init__(self, root: Path, max_size: int | None = None) -> None:
        self.root = Path(root)
        self.layout = Layout(self.root)
        self.max_size = max_size

    def path(self, digest: str) -> Path:
        return self.layout.blob(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self.path(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def digests(self) -> dict[str, tuple[int, float]]:
        """``{digest: (size, last_used)}`` of every blob in the tier."""
        return {d: (st.st_size, st.st_mtime) for d, st in scan_blobs(self.layout.blobs)}

    def used(self) -> int:
        return sum(s for s, _ in self.digests().values())

    def drop(self, digest: str) -> int:
        """Demote one blob (its disk copy stays); returns the bytes freed."""
        p = self.path(digest)
        try:
            n = p.stat().st_size
            p.unlink()
            return n
        except FileNotFoundError:
            return 0

    def make_room(self, cache: Cache, need: int, protect: set[str]) -> None:
        """Demote least-recently-used, unleased blobs until ``need`` more bytes fit in the budget."""
        if self.max_size is None or need <= 0:
            return
        if need > self.max_size:
            raise CacheFullError(f"this model needs {need / 1e9:.2f} GB of RAM tier but WARMSTART_MEMORY_MAX_SIZE "
                                 f"is {self.max_size / 1e9:.2f} GB; raise it or load from disk")
        have = self.digests()
        used = sum(s for s, _ in have.values())
        if used + need <= self.max_size:
            return
        held = leases.leased_digests(cache.layout)
        for d, (size, _) in sorted(have.items(), key=lambda kv: kv[1][1]):
            if used + need <= self.max_size:
                break
            if d in protect or d in held:
                continue
            used -= self.drop(d)
            log.info("RAM tier: demoted %s (%d bytes) to disk", d[:12], size)
        if used + need > self.max_size:
            raise CacheFullError(f"RAM tier {self.root} is full of models in use; free some, or raise "
                                 "WARMSTART_MEMORY_MAX_SIZE")

    def promote(self, cache: Cache, source: str, revision: str, files: Iterable) -> Path:
        """Copy a snapshot's blobs into RAM (demoting others as needed); returns a view directory of its
        files whose links point into RAM. ``files``: objects with ``path``, ``digest``, ``size``."""
        files = list(files)
        wanted = {f.digest: f.size for f in files}
        need = sum(s for d, s in wanted.items() if not self.has(d, s))
        self.make_room(cache, need, set(wanted))
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for d, size in wanted.items():
            dest = self.path(d)
            if not self.has(d, size):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.layout.tmp / f"{d}.{uuid.uuid4().hex[:8]}"
                _copy(cache.store.path(d), tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            os.utime(dest, (now, now))  # last use: the tier's LRU key
        name = hashlib.sha256(f"{source}@{revision}".encode()).hexdigest()[:24]
        view = self.root / "views" / name
        for f in files:
            where = inside(self.root, view / check_relpath(f.path), what="RAM tier view file")
            link_atomic(os.path.relpath(self.path(f.digest), where.parent), where)
        return view

    def gc(self, cache: Cache) -> int:
        """Drop RAM copies of blobs the disk cache no longer names; returns bytes freed."""
        referenced = cache.index.referenced_digests()
        return sum(self.drop(d) for d in self.digests() if d not in referenced)


# -------------------------------------------------------------------------------------- shared tier
def _shared_blob(shared_dir: Path, digest: str) -> Path:
    return Path(shared_dir) / "blobs" / "sha256" / digest[:2] / check_digest(digest)


def _key_path(shared_dir: Path, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:200]
    return Path(shared_dir) / "keys" / safe


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


def _copy_verified(src: Path, dst: Path, size: int, also=None) -> str:
    """Copy ``src`` to a new file ``dst`` and return the sha256 of the bytes written (``also``, a
    hashlib object, is fed the same bytes: the git blob id check).

    Each chunk is read once (big preads, sequential read-ahead), hashed, and written from the same
    buffer; an I/O thread reads the next chunk and writes the previous one while this thread hashes,
    so a single blob keeps the disk and one core busy. On a CoW filesystem holding both files the
    copy is a reflink and the destination is hashed instead. With ``FSYNC`` writeback starts every
    ``WRITEBACK_EVERY`` bytes and the file is fdatasynced at the end."""
    fd_in = os.open(src, os.O_RDONLY)
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
        if size and reflink(fd_in, fd_out):
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


def shared_fetch(cache: Cache, shared_dir: Path, digest: str, size: int | None, git_oid: str | None = None) -> bool:
    """Copy blob ``digest`` from the shared tier into the cache, verifying it; False if it is not there
    (or is corrupt: then it is removed from the shared tier and the caller goes to the origin).

    ``git_oid``: the git blob id the origin lists for the file wanted (found through ``keys/``, which
    any writer of the shared directory may have written): the copy must also hash to it, else it is
    discarded, never published, and the caller goes to the origin."""
    src = _shared_blob(shared_dir, digest)
    try:
        st = os.stat(src)
    except OSError:
        return False
    if size is not None and st.st_size != size:
        log.warning("shared tier: %s has %d bytes, expected %d; ignoring it", src, st.st_size, size)
        return False
    cache.layout.tmp.mkdir(parents=True, exist_ok=True)
    tmp = cache.layout.tmp / f"shared-{digest[:16]}-{uuid.uuid4().hex[:8]}"
    git = git_hasher(git_oid, st.st_size) if git_oid is not None else None
    if git_oid is not None and git is None:
        return False  # not a git blob id: nothing to check the copy against
    try:
        got = _copy_verified(src, tmp, st.st_size, git)
    except OSError as exc:
        log.warning("shared tier: reading %s failed (%s); fetching from the origin", src, exc)
        _rm(tmp)
        return False
    if got != digest:
        log.warning("shared tier: %s is corrupt (sha256 %s); removed it, fetching from the origin", src, got[:12])
        _rm(tmp)
        _rm(inside(shared_dir, src, what="shared blob"))
        return False
    if git is not None and git.hexdigest() != git_oid:
        log.warning("shared tier: %s is not the file the origin lists (git blob id %s, expected %s); ignoring "
                    "it, fetching from the origin", src, git.hexdigest()[:12], git_oid[:12])
        _rm(tmp)
        return False
    cache.store.publish(tmp, digest, fsync=FSYNC)
    cache.index.add_blob(digest, st.st_size)
    return True


def shared_publish(shared_dir: Path, blob_path: Path, digest: str) -> bool:
    """Publish a verified blob to the shared tier (unique temporary name, then rename; no locks).
    A read-only, full or missing shared directory is logged and skipped; returns True if published."""
    dest = _shared_blob(shared_dir, digest)
    try:
        if dest.stat().st_size == os.stat(blob_path).st_size:
            return True
    except OSError:
        pass
    tmp = dest.with_name(f".{digest}.{uuid.uuid4().hex}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _copy(Path(blob_path), tmp)
        fsync_file(tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        return True
    except OSError as exc:
        _rm(tmp)
        log.warning("shared tier %s: cannot publish %s (%s); continuing without it", shared_dir, digest[:12],
                    exc.strerror or exc)
        return False


def shared_publish_key(shared_dir: Path, key: str, digest: str) -> None:
    """Record which digest a file without an origin sha256 turned out to have (rename, no locks). Only a
    hint: a reader checks the copy against the git blob id its own listing gives."""
    dest = _key_path(shared_dir, key)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, digest)
    except OSError as exc:
        log.debug("shared tier: cannot record key %s (%s)", key, exc)


def _shared_key(shared_dir: Path, key: str) -> str | None:
    try:
        text = _key_path(shared_dir, key).read_text().strip()
        return check_digest(text)
    except (OSError, ValueError):
        return None


def shared_fetch_many(cache: Cache, shared_dir: Path, files: Iterable) -> int:
    """Before a download: satisfy from the shared tier every listed file (``RemoteFile``-like: ``sha256``,
    ``git_oid``, ``key``, ``size``) that is missing from the cache; blobs are copied in parallel. A file
    with a sha256 is checked against it; one with only a git blob id against that (its digest comes from
    ``keys/``); one with neither is left to the origin. Returns bytes copied."""
    todo: dict[str, tuple[int | None, str | None, str | None]] = {}
    for f in files:
        git_oid = None
        if f.sha256:
            digest = f.sha256
        elif git_hasher(f.git_oid, 0) is not None:
            git_oid = f.git_oid
            digest = cache.digest_for_key(f.key) or _shared_key(shared_dir, f.key)
        else:
            continue  # nothing the origin said to check a shared copy against
        if not digest or cache.store.has(digest, f.size):
            continue
        if digest in todo and todo[digest][2] != git_oid:
            continue  # two files claim one blob: at most one can match; the other goes to the origin
        if os.path.exists(_shared_blob(shared_dir, digest)):
            todo[digest] = (f.size, None if f.sha256 else f.key, git_oid)
    if not todo:
        return 0
    cache.ensure_room(sum(s or 0 for s, _, _ in todo.values()), protect=set(todo))
    copied = 0
    with cf.ThreadPoolExecutor(min(BLOB_WORKERS or cpu_count(), len(todo))) as pool:
        futures = {pool.submit(shared_fetch, cache, shared_dir, d, s, g): (d, s, k)
                   for d, (s, k, g) in todo.items()}
        for fut in cf.as_completed(futures):
            d, s, k = futures[fut]
            if fut.result():
                copied += s or 0
                if k:
                    cache.index.set_key(k, d, cache.store.path(d).stat().st_size)
    log.info("shared tier: %d bytes of %d blob(s) came from %s", copied, len(todo), shared_dir)
    return copied


def _rm(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["MemoryTier", "shared_fetch", "shared_fetch_many", "shared_publish", "shared_publish_key"]

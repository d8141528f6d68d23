"""The RAM tier: copies of disk blobs in a tmpfs directory, with their own byte budget and LRU.

It is a cache over the disk cache: every blob it holds is also on disk, so *demoting* a blob (its LRU,
by last use) only drops the RAM copy. It survives process restarts (and pod restarts when it is a node
path).

A RAM copy is served only while it is provably the bytes it was verified to be: when a copy is made
(from the verified disk blob) or re-hashed, its fingerprint (device, inode, size, mtime and ctime in ns)
is recorded in the *disk* home (``<home>/ram-fingerprints/<digest>``); a promotion serves a copy whose
fingerprint still matches and re-hashes any other (a write or a replacement changes the ctime, which no
one can set back), dropping it when it no longer hashes to its digest. Hashing every copy on every
promotion would cost a full read of the model (seconds per GB) on the path whose point is a fast start;
one ``fstat`` per file costs nothing. A RAM root that others may write is refused unless it is sticky and
owned by this user, and every path the tier writes is checked to lie inside its root (docs/cache.md).

>>> tier = MemoryTier(Path("/dev/shm/warmstart"), 8 * 10**9, disk=Layout(Path("/c")))
>>> tier.path("ab" + "0" * 62).parent.as_posix()
'/dev/shm/warmstart/blobs/sha256/ab'
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from ..._fs import atomic_write, open_regular
from ...errors import CacheFullError, ConfigError
from .. import leases
from ..layout import Layout, scan_blobs
from ..paths import inside
from ..store import copy_file
from ..views import memory_view

log = logging.getLogger(__name__)


class MemoryTier:
    """Blobs under ``root`` copied from the disk cache whose layout is ``disk`` (leases live there)."""

    def __init__(self, root: Path, max_size: int | None = None, *, disk: Layout) -> None:
        self.root = Path(root)
        self.layout = Layout(self.root)
        self.max_size = max_size
        self.disk = disk

    def path(self, digest: str) -> Path:
        return self.layout.blob(digest)

    def _fingerprint_path(self, digest: str) -> Path:
        return self.disk.home / "ram-fingerprints" / digest

    @staticmethod
    def _fingerprint(st: os.stat_result) -> str:
        return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"

    def _record(self, digest: str) -> None:
        """Record the fingerprint of the RAM copy of ``digest`` as it is now (after it was verified)."""
        try:
            st = os.lstat(self.path(digest))
            where = self._fingerprint_path(digest)
            where.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(where, self._fingerprint(st))
        except OSError as exc:  # a read-only home: the copy is re-hashed next time
            log.debug("RAM tier: cannot record the fingerprint of %s (%s)", digest[:12], exc)

    def _forget(self, digest: str) -> None:
        try:
            os.unlink(self._fingerprint_path(digest))
        except OSError:
            pass

    def hash_copy(self, digest: str) -> str | None:
        """The sha256 of the RAM copy of ``digest``, or None when it is not a plain file (a FIFO, a link…)."""
        try:
            fd = open_regular(self.path(digest))
        except OSError:
            return None
        h = hashlib.sha256()
        try:
            while chunk := os.read(fd, 8 << 20):
                h.update(chunk)
        finally:
            os.close(fd)
        return h.hexdigest()

    def sound(self, digest: str, size: int | None = None) -> bool:
        """True when the RAM copy of ``digest`` may be served: a plain file of ``size`` bytes whose recorded
        fingerprint matches, or, failing that, that hashes to ``digest`` (then recorded again)."""
        try:
            st = os.lstat(self.path(digest))
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
            return False
        try:
            if self._fingerprint_path(digest).read_text() == self._fingerprint(st):
                return True
        except OSError:
            pass
        if self.hash_copy(digest) != digest:
            log.warning("RAM tier: %s does not hash to its digest (changed after it was copied); "
                        "copying it again from the disk cache", self.path(digest))
            return False
        self._record(digest)
        return True

    def check_root(self) -> None:
        """ConfigError when others may write the RAM root (or a directory of the tier in it) and it is not
        sticky and owned by this user: they could swap the files served to this process."""
        for d in (self.root, self.layout.home / "blobs", self.layout.blobs, self.layout.tmp, self.root / "views"):
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigError(f"RAM tier {self.root}: cannot inspect {d} ({exc.strerror}); check "
                                  "WARMSTART_MEMORY_DIR") from None
            if stat.S_ISLNK(st.st_mode) and d != self.root:
                raise ConfigError(f"RAM tier {self.root}: {d} is a symbolic link; remove it, or choose another "
                                  "WARMSTART_MEMORY_DIR")
            if d == self.root:
                st = os.stat(d)
            mine = st.st_uid == os.getuid()
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (st.st_mode & stat.S_ISVTX and mine):
                raise ConfigError(f"RAM tier directory {d} is writable by other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):o}) and not sticky and yours; run `chmod go-w {d}` "
                                  "or choose another WARMSTART_MEMORY_DIR")

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` below the RAM root, each component checked to lie inside it first."""
        self.root.mkdir(parents=True, exist_ok=True)
        here = self.root
        for part in directory.relative_to(self.root).parts:
            here = here / part
            inside(self.root, here, what="RAM tier directory")
            here.mkdir(exist_ok=True)
        inside(self.root, directory / "x", what="RAM tier directory")

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
        self._forget(digest)
        try:
            n = p.lstat().st_size
            os.unlink(inside(self.root, p, what="RAM tier blob"))
            return n
        except FileNotFoundError:
            return 0

    def drop_unreferenced(self, referenced: set[str]) -> int:
        """Drop the RAM copies of blobs the disk cache no longer names; returns bytes freed."""
        return sum(self.drop(d) for d in self.digests() if d not in referenced)

    def make_room(self, need: int, protect: set[str]) -> None:
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
        held = leases.leased_digests(self.disk)
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

    def promote(self, source: str, revision: str, files: Iterable) -> Path:
        """Copy a snapshot's blobs into RAM (demoting others as needed); returns a view directory of its
        files whose links point into RAM. ``files``: objects with ``path``, ``digest``, ``size``."""
        files = list(files)
        self.check_root()
        wanted = {f.digest: f.size for f in files}
        sound = {d for d, s in wanted.items() if self.sound(d, s)}
        need = sum(s for d, s in wanted.items() if d not in sound)
        self.make_room(need, set(wanted))
        self._make_dirs(self.layout.tmp)
        now = time.time()
        for d, size in wanted.items():
            dest = self.path(d)
            if d not in sound:
                self._forget(d)
                self._make_dirs(dest.parent)
                tmp = inside(self.root, self.layout.tmp / f"{d}.{uuid.uuid4().hex[:8]}", what="RAM tier file")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                os.close(fd)
                copy_file(self.disk.blob(d), tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, inside(self.root, dest, what="RAM tier blob"))
            fd = open_regular(dest)
            try:
                os.utime(fd, (now, now))  # last use: the tier's LRU key
                if d not in sound and os.fstat(fd).st_size != size:
                    raise OSError(errno.EIO, f"RAM tier copy {dest} changed while it was made")
            finally:
                os.close(fd)
            self._record(d)
        return memory_view(self.root, source, revision, files, self.path)

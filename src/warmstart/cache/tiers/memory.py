"""The RAM tier: copies of disk blobs in a tmpfs directory, with their own byte budget and LRU.

It is a cache over the disk cache: every blob it holds is also on disk, so *demoting* a blob (its LRU,
by last use) only drops the RAM copy. It survives process restarts (and pod restarts when it is a node
path).

>>> tier = MemoryTier(Path("/dev/shm/warmstart"), 8 * 10**9, disk=Layout(Path("/c")))
>>> tier.path("ab" + "0" * 62).parent.as_posix()
'/dev/shm/warmstart/blobs/sha256/ab'
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from ...errors import CacheFullError
from .. import leases
from ..layout import Layout, scan_blobs
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
        wanted = {f.digest: f.size for f in files}
        need = sum(s for d, s in wanted.items() if not self.has(d, s))
        self.make_room(need, set(wanted))
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for d, size in wanted.items():
            dest = self.path(d)
            if not self.has(d, size):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.layout.tmp / f"{d}.{uuid.uuid4().hex[:8]}"
                copy_file(self.disk.blob(d), tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            os.utime(dest, (now, now))  # last use: the tier's LRU key
        return memory_view(self.root, source, revision, files, self.path)

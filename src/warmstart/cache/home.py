"""One cache home opened for use: its layout, blob store, index (opened lazily) and tiers, with the
budget that pulls make room within. Everything below it (store, index, evict, views, tiers) gets only
the pieces it needs; this class composes them.

>>> import tempfile; from pathlib import Path
>>> c = Cache(Path(tempfile.mkdtemp()))
>>> c.layout.blobs.is_dir(), c.read_only
(True, False)
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import format_size
from ..errors import CacheFullError, ReadOnlyCacheError
from .index import Index, IndexedFile, SnapshotRow
from .layout import Layout
from .store import BlobStore, cpu_count

if TYPE_CHECKING:  # eviction and the tiers are imported when used: a warm pull needs neither
    from . import evict
    from .tiers.memory import MemoryTier
    from .tiers.shared import SharedTier

log = logging.getLogger(__name__)

#: free space kept on the cache's filesystem beyond what a pull needs
DISK_RESERVE = 256 * 2**20
#: blobs copied at once from the shared tier (None: one per CPU); each copy also has an I/O thread
SHARED_WORKERS: int | None = None


class Cache:
    """The cache home. ``max_size`` is the byte budget for blobs (None: no budget)."""

    def __init__(self, home: Path, *, max_size: int | None = None, memory_dir: Path | None = None,
                 memory_max_size: int | None = None, shared_dir: Path | None = None) -> None:
        self.layout = Layout(Path(home))
        #: a home this process cannot write (read-only mount, no permission): cached models are still
        #: served; nothing is recorded (last use, leases) and an uncached pull fails with ReadOnlyCacheError
        self.read_only = _ensure(self.layout)
        self.store = BlobStore(self.layout)
        self.max_size = max_size
        self._index: Index | None = None
        self.shared_dir = Path(shared_dir) if shared_dir else None
        self.shared: SharedTier | None = None
        self.memory: MemoryTier | None = None
        if self.shared_dir:
            from .tiers.shared import SharedTier

            self.shared = SharedTier(self.shared_dir)
        if memory_dir:
            from .tiers.memory import MemoryTier

            self.memory = MemoryTier(Path(memory_dir), memory_max_size, disk=self.layout)

    @classmethod
    def from_settings(cls, settings) -> Cache:
        """The cache home of ``settings`` with its budget and tiers.

        >>> Cache.from_settings(Settings.from_env())      # doctest: +SKIP
        """
        return cls(settings.home, max_size=settings.max_size, memory_dir=settings.memory_dir,
                   memory_max_size=settings.memory_max_size, shared_dir=settings.shared_dir)

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = Index(self.layout.index_path, read_only=True if self.read_only else None)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def parts(self) -> evict.CacheParts:
        from . import evict

        """The pieces eviction plans over and removes from."""
        return evict.CacheParts(self.layout, self.index, self.store, self.memory)

    # -- lookups -------------------------------------------------------------------------------
    def snapshot(self, source: str, revision: str) -> SnapshotRow | None:
        return self.index.find_snapshot(source, revision)

    def complete(self, files: list[IndexedFile]) -> bool:
        """True when every blob of ``files`` is present with its size."""
        return all(self.store.has(f.digest, f.size) for f in files)

    def digest_for_key(self, key: str) -> str | None:
        """The content digest of a file the origin names without a sha256 (by its transfer key)."""
        return self.index.digest_for_key(key)

    # -- room ----------------------------------------------------------------------------------
    def ensure_room(self, need: int, *, protect: set[str] = frozenset()) -> None:
        """Make sure ``need`` new bytes fit, before anything is downloaded: within the budget (evicting
        least-recently-used, unpinned, unleased snapshots; never a blob in ``protect``) and on disk."""
        if need <= 0:
            return
        if self.max_size is not None:
            from . import evict

            evict.make_room(self.parts(), self.max_size, need, protect=protect)
        free = shutil.disk_usage(self.layout.home).free
        if free - need < DISK_RESERVE:
            raise CacheFullError(
                f"not enough disk space under {self.layout.home}: this pull needs {format_size(need)}, "
                f"{format_size(max(0, free - DISK_RESERVE))} is free; free space, run `warmstart gc`, or set "
                "WARMSTART_HOME to a larger disk"
            )

    # -- shared tier ---------------------------------------------------------------------------
    def fill_from_shared(self, files: Iterable) -> int:
        """Before a download: copy in from the shared tier every listed file (``RemoteFile``-like:
        ``sha256``, ``git_oid``, ``key``, ``size``) that it holds and this cache lacks, in parallel, each
        checked against what the origin listed (see :mod:`warmstart.cache.tiers.shared`). Returns bytes
        copied; 0 without a shared tier."""
        if self.shared is None:
            return 0
        wanted = self.shared.wanted(files, have=self.store.has, digest_for_key=self.index.digest_for_key)
        if not wanted:
            return 0
        self.ensure_room(sum(w.size or 0 for w in wanted.values()), protect=set(wanted))
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        copied = 0
        with cf.ThreadPoolExecutor(min(SHARED_WORKERS or cpu_count(), len(wanted))) as pool:
            futures = {pool.submit(self._copy_shared, d, w.size, w.git_oid): (d, w) for d, w in wanted.items()}
            for fut in cf.as_completed(futures):
                d, w = futures[fut]
                if fut.result():
                    copied += w.size or 0
                    if w.key:
                        self.index.set_key(w.key, d, self.store.path(d).stat().st_size)
        log.info("shared tier: %d bytes of %d blob(s) came from %s", copied, len(wanted), self.shared.root)
        return copied

    def _copy_shared(self, digest: str, size: int | None, git_oid: str | None) -> bool:
        """One blob from the shared tier into the store and the index; False when it did not come."""
        got = self.shared.fetch(digest, size, self.layout.tmp, git_oid)
        if got is None:
            return False
        tmp, nbytes = got
        from .tiers import verified_copy

        self.store.publish(tmp, digest, fsync=verified_copy.FSYNC)
        self.index.add_blob(digest, nbytes)
        return True


_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}


def _ensure(layout: Layout) -> bool:
    """Create the home's directories; returns True when the home exists but cannot be written."""
    try:
        layout.ensure()
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        if not layout.home.is_dir():
            raise ReadOnlyCacheError(f"cannot create the cache home {layout.home} ({exc.strerror}); set "
                                     "WARMSTART_HOME to a writable directory") from None
        log.debug("cache home %s is read-only (%s): serving cached models only", layout.home, exc.strerror)
        return True
    return not os.access(layout.home, os.W_OK)

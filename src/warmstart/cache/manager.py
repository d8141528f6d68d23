"""One cache home: layout + index + blob store, opened lazily.

>>> import tempfile; from pathlib import Path
>>> c = Cache(Path(tempfile.mkdtemp()))
>>> c.layout.blobs.is_dir()
True
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from ..config import format_size
from ..errors import CacheFullError, ReadOnlyCacheError
from .index import FileEntry, Index, SnapshotRow
from .layout import Layout
from .store import BlobStore

log = logging.getLogger(__name__)

#: free space kept on the cache's filesystem beyond what a pull needs
DISK_RESERVE = 256 * 2**20


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
        self.memory = None
        if memory_dir is not None:
            from .tiers import MemoryTier

            self.memory = MemoryTier(Path(memory_dir), memory_max_size)

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

    # -- lookups -------------------------------------------------------------------------------
    def snapshot(self, source: str, revision: str) -> SnapshotRow | None:
        return self.index.find_snapshot(source, revision)

    def complete(self, files: list[FileEntry]) -> bool:
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
            from .evict import make_room  # imported here: eviction is rare

            make_room(self, need, protect=protect)
        free = shutil.disk_usage(self.layout.home).free
        if free - need < DISK_RESERVE:
            raise CacheFullError(
                f"not enough disk space under {self.layout.home}: this pull needs {format_size(need)}, "
                f"{format_size(max(0, free - DISK_RESERVE))} is free; free space, run `warmstart gc`, or set "
                "WARMSTART_HOME to a larger disk"
            )


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


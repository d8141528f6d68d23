"""Rebuild a damaged ``index.db`` from what the cache home holds: the blobs and the views over them.

The views name everything the index did, except pins, last use and converted-snapshot metadata
(:func:`warmstart.cache.view_scan.read_views` reads them back). The damaged file is moved aside
(``index.db.damaged-<time>``), never deleted.

>>> report = rebuild_index(cache)          # doctest: +SKIP
>>> report.snapshots, report.blobs         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from .home import Cache
from .layout import scan_blobs
from .view_scan import read_views

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RebuildReport:
    """What :func:`rebuild_index` recorded, and where the damaged index went."""

    blobs: int
    snapshots: int
    moved_to: str | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def rebuild_index(cache: Cache) -> RebuildReport:
    """Move ``index.db`` aside and record again every blob and every view of the home (see module doc)."""
    path = cache.layout.index_path
    cache.close()
    moved = None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        p = path.with_name(path.name + suffix)
        if os.path.lexists(p):
            dest = p.with_name(f"{path.name}.damaged-{stamp}{suffix}")
            os.replace(p, dest)
            moved = moved or str(dest)
    index = cache.index  # a fresh, empty one
    blobs = 0
    for digest, st in scan_blobs(cache.layout.blobs):
        index.add_blob(digest, st.st_size)
        blobs += 1
    snapshots = 0
    for source, revision, files, refs in read_views(cache.layout):
        index.add_snapshot(source, revision, files)
        for name, rev in refs.items():
            index.set_ref(source, name, rev)
        snapshots += 1
    log.info("rebuilt %s: %d blobs, %d snapshots%s", path, blobs, snapshots,
             f"; the damaged index is kept as {moved}" if moved else "")
    return RebuildReport(blobs, snapshots, moved)

"""Rebuild a damaged ``index.db`` from what the cache home holds: the blobs and the views over them.

The views name everything the index did, except pins, last use and converted-snapshot metadata::

    hub/models--ORG--NAME/snapshots/<commit>/<path> -> ../../blobs/<etag>       exact: hf://ORG/NAME@<commit>
    hub/models--ORG--NAME/blobs/<etag> -> ../../../blobs/sha256/ab/<digest>      (<etag> of 40 hex: git blob id)
    hub/models--ORG--NAME/refs/<branch>                                          "<commit>"
    snapshots/<scheme>/<name>/<revision>/<path> -> …/blobs/sha256/ab/<digest>    best effort: "--" read as "/"

The damaged file is moved aside (``index.db.damaged-<time>``), never deleted. Every link is followed
by reading it, not by resolving it, and only a target inside ``blobs/sha256/`` that exists is recorded.

>>> report = rebuild_index(cache)          # doctest: +SKIP
>>> report.snapshots, report.blobs         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .index import FileEntry
from .layout import scan_blobs

if TYPE_CHECKING:
    from .manager import Cache

log = logging.getLogger(__name__)

_HEX40 = re.compile(r"[0-9a-f]{40}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class RebuildReport:
    """What :func:`rebuild_index` recorded, and where the damaged index went."""

    blobs: int
    snapshots: int
    moved_to: str | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _blob_of(cache: Cache, link: Path, target: str) -> str | None:
    """The digest a link's ``target`` (relative to the link's directory) names, if it is a blob on disk."""
    where = Path(os.path.normpath(link.parent / target))
    digest = where.name
    if not _DIGEST.fullmatch(digest) or where != cache.layout.blob(digest):
        return None
    return digest if cache.store.has(digest) else None


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(root):  # does not follow symlinked directories
        out.extend(Path(dirpath) / n for n in names)
    return out


def _hub_snapshots(cache: Cache):
    """``(source, commit, [FileEntry], {ref: commit})`` for every hub view."""
    hub = cache.layout.hub
    for repo in sorted(hub.glob("models--*")) if hub.is_dir() else ():
        org_name = repo.name[len("models--"):]
        if "--" not in org_name:
            continue
        source = "hf://" + org_name.replace("--", "/", 1)
        snaps = repo / "snapshots"
        found = {}
        for snap in sorted(snaps.iterdir()) if snaps.is_dir() else ():
            entries = []
            for p in _files(snap):
                try:
                    etag_link = Path(os.path.normpath(p.parent / os.readlink(p)))
                    if etag_link.parent != repo / "blobs":
                        continue
                    digest = _blob_of(cache, etag_link, os.readlink(etag_link))
                except OSError:
                    continue
                if digest is None:
                    continue
                etag = etag_link.name
                entries.append(FileEntry(p.relative_to(snap).as_posix(), digest, cache.store.path(digest).stat().st_size,
                                         etag, etag if _HEX40.fullmatch(etag) else None))
            if entries:
                found[snap.name] = entries
        refs = {}
        for ref in _files(repo / "refs") if (repo / "refs").is_dir() else ():
            try:
                commit = ref.read_text().strip()
            except OSError:
                continue
            if commit in found:
                refs[ref.relative_to(repo / "refs").as_posix()] = commit
        for commit, entries in found.items():
            yield source, commit, entries, {k: v for k, v in refs.items() if v == commit}


def _source_snapshots(cache: Cache):
    """``(source, revision, [FileEntry])`` for every non-Hub view (names as views.source_view wrote them)."""
    root = cache.layout.snapshots
    for scheme_dir in sorted(root.iterdir()) if root.is_dir() else ():
        for name_dir in sorted(scheme_dir.iterdir()) if scheme_dir.is_dir() else ():
            for rev_dir in sorted(name_dir.iterdir()) if name_dir.is_dir() else ():
                entries = []
                for p in _files(rev_dir):
                    try:
                        digest = _blob_of(cache, p, os.readlink(p))
                    except OSError:
                        continue
                    if digest is not None:
                        entries.append(FileEntry(p.relative_to(rev_dir).as_posix(), digest,
                                                 cache.store.path(digest).stat().st_size))
                if entries:
                    yield f"{scheme_dir.name}://{name_dir.name.replace('--', '/')}", rev_dir.name, entries


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
        index.add_blob(digest, st.st_size, verified=False)
        blobs += 1
    snapshots = 0
    for source, commit, entries, refs in _hub_snapshots(cache):
        index.add_snapshot(source, commit, entries)
        for name, rev in refs.items():
            index.set_ref(source, name, rev)
        snapshots += 1
    for source, revision, entries in _source_snapshots(cache):
        index.add_snapshot(source, revision, entries)
        snapshots += 1
    log.info("rebuilt %s: %d blobs, %d snapshots%s", path, blobs, snapshots,
                f"; the damaged index is kept as {moved}" if moved else "")
    return RebuildReport(blobs, snapshots, moved)

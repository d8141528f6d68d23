"""``verify``: re-hash the blobs of cached snapshots, quarantine corrupt ones (and, with ``repair``, pull
their snapshots again), then check that every view entry resolves to the blob its snapshot records.

Different blobs are hashed in parallel, one thread per CPU (hashlib releases the GIL; the sha256 of one
blob cannot be split), each through a read-only mapping of the blob (no copy out of the page cache).

>>> report = verify_snapshots(cache, cache.index.snapshots())   # doctest: +SKIP
>>> report.ok, report.corrupt                                    # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError, UnsafePathError
from . import views
from .home import Cache
from .index import SnapshotRow
from .paths import inside
from .store import cpu_count, git_oid_file, sha256_blob

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: blobs checked, bytes hashed, corrupt and missing blobs, snapshots repaired,
    and view entries (``"source@revision:path"``) that did not resolve to their recorded blob, and those
    rebuilt by ``repair``."""

    checked: int
    bytes: int
    seconds: float
    corrupt: tuple[str, ...]
    missing: tuple[str, ...]
    repaired: tuple[str, ...] = ()
    quarantined: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        blobs = (not self.corrupt and not self.missing) or self._all_repaired
        return blobs and set(self.views) <= set(self.views_repaired) and not self.memory_corrupt

    _all_repaired: bool = False
    views: tuple[str, ...] = ()
    views_repaired: tuple[str, ...] = ()
    #: RAM tier copies that did not hash to their digest (dropped: the disk blob is served instead)
    memory_corrupt: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"checked": self.checked, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "corrupt": list(self.corrupt), "missing": list(self.missing), "repaired": list(self.repaired),
                "quarantined": list(self.quarantined), "wrong_views": list(self.views),
                "views_repaired": list(self.views_repaired), "memory_corrupt": list(self.memory_corrupt),
                "ok": self.ok}


def verify_snapshots(cache: Cache, rows: list[SnapshotRow], *, repair: bool = False, workers: int | None = None,
                     refetch: Callable[[str], object] | None = None) -> VerifyReport:
    """Verify the blobs and views of ``rows``; ``refetch("source@revision")`` pulls a snapshot again
    (``repair``: the API layer provides it, since the cache knows nothing of sources)."""
    t0 = time.monotonic()
    digests: dict[str, int] = {}
    git_oids: dict[str, set[str]] = {}  # files listed with a git blob id: the blob must hash to it too
    for r in rows:
        for f in cache.index.snapshot_files(r.id):
            digests[f.digest] = f.size
            if f.git_oid:
                git_oids.setdefault(f.digest, set()).add(f.git_oid)
    corrupt, missing, quarantined = [], [], []
    hashed = 0
    for d, state, n in _check_blobs(cache, digests, git_oids, workers):
        hashed += n
        if state == "missing":
            missing.append(d)
        elif state == "corrupt":
            corrupt.append(d)
            quarantined.append(str(_quarantine(cache, d)))
    repaired = []
    bad = set(corrupt) | set(missing)
    if repair and bad:
        if refetch is None:
            raise ConfigError("verify --repair needs a way to fetch again: use warmstart.cache()")
        for r in rows:
            if bad & set(cache.index.snapshot_digests(r.id)):
                refetch(f"{r.source}@{r.revision}")
                repaired.append(f"{r.source}@{r.revision}")
    left = [d for d in bad if not cache.store.has(d)]
    wrong, fixed = _verify_views(cache, rows, repair)
    ram_bad, ram_bytes = _check_memory(cache, set(digests))
    return VerifyReport(len(digests), hashed + ram_bytes, time.monotonic() - t0, tuple(corrupt), tuple(missing),
                        tuple(repaired), tuple(quarantined), _all_repaired=bool(repaired) and not left,
                        views=tuple(wrong), views_repaired=tuple(fixed), memory_corrupt=tuple(ram_bad))


def _check_memory(cache: Cache, digests: set[str]) -> tuple[list[str], int]:
    """Re-hash the RAM tier's copies of ``digests``; drop (and return) those that do not hash to their
    digest. Returns (bad digests, bytes hashed)."""
    if cache.memory is None:
        return [], 0
    bad, hashed = [], 0
    for d, (size, _) in cache.memory.digests().items():
        if d not in digests:
            continue
        hashed += size
        if cache.memory.hash_copy(d) != d:
            log.warning("RAM tier copy %s is corrupt; dropped it (the disk blob is served instead)",
                        cache.memory.path(d))
            cache.memory.drop(d)
            bad.append(d)
    return bad, hashed


def _check_blobs(cache: Cache, digests: dict[str, int], git_oids: dict[str, set[str]],
                 workers: int | None) -> list[tuple[str, str, int]]:
    """``(digest, "ok" | "corrupt" | "missing", bytes hashed)`` for every blob of ``digests``."""

    def check(d: str) -> tuple[str, str, int]:
        p = cache.store.path(d)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return d, "missing", 0
        if sha256_blob(p) != d:
            return d, "corrupt", size
        wrong = [g for g in git_oids.get(d, ()) if not git_oid_file(p, g)]
        if wrong:
            log.warning("blob %s is not the file its snapshot lists (git blob id %s)", d[:12], wrong[0][:12])
        return d, "corrupt" if wrong else "ok", size

    order = sorted(digests, key=lambda d: -digests[d])  # big ones first: the pool ends together
    with cf.ThreadPoolExecutor(max(1, min(workers or cpu_count(), len(digests)))) as pool:
        return list(pool.map(check, order))


def _verify_views(cache: Cache, rows: list[SnapshotRow], repair: bool) -> tuple[list[str], list[str]]:
    """Check that every file of every view (hub snapshot links and their ``blobs/<etag>`` links,
    ``snapshots/…`` links) resolves to the blob its snapshot records; with ``repair``, rebuild the
    wrong ones (no download: the blobs are local). Returns (wrong entries, repaired entries)."""
    wrong: list[str] = []
    fixed: list[str] = []
    for r in rows:
        if cache.index.get_snapshot(r.id) is None:  # replaced meanwhile (a repair pulled it again)
            continue
        files = cache.index.snapshot_files(r.id)
        name = f"{r.source}@{r.revision}"
        try:
            snap = views.snapshot_dir(cache.layout, r.source, r.revision, r.kind)
        except UnsafePathError as exc:  # recorded before names were checked: it has no view to check
            log.warning("%s: %s; remove it with `warmstart rm %s`", name, exc, r.source)
            wrong.append(f"{name}:")
            continue
        bad = views.wrong_entries(cache.layout, snap, files)
        if not bad:
            continue
        wrong.extend(f"{name}:{p}" for p in bad)
        for p in bad:
            log.info("view %s/%s does not resolve to its blob", snap, p)
        if repair:
            refs = {n: v for n, v in cache.index.refs_of(r.source).items() if v == r.revision}
            try:
                views.rebuild_view(cache.layout, r, files, bad, refs)
            except (UnsafePathError, OSError) as exc:
                log.warning("cannot rebuild the view of %s: %s", name, exc)
            still = set(views.wrong_entries(cache.layout, snap, files))
            fixed.extend(f"{name}:{p}" for p in bad if p not in still)
    return wrong, fixed


def _quarantine(cache: Cache, digest: str) -> Path:
    """Move a corrupt blob out of ``blobs/`` (never served again, kept for inspection)."""
    cache.layout.quarantine.mkdir(parents=True, exist_ok=True)
    dest = inside(cache.layout.home, cache.layout.quarantine / f"{digest}.{int(time.time())}",
                  what="quarantine file")
    try:
        os.replace(inside(cache.layout.home, cache.store.path(digest), what="blob"), dest)
    except FileNotFoundError:
        pass
    if cache.memory is not None:
        cache.memory.drop(digest)
    log.warning("blob %s is corrupt; moved it to %s", digest[:12], dest)
    return dest

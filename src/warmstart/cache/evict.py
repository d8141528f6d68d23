"""Eviction and garbage collection: compute a frozen plan (what, why, how many bytes), then execute it.

Order inside :meth:`Plan.execute`, chosen so that a crash at any point leaves every remaining
snapshot's blobs intact (an orphan blob is harmless; the next ``gc`` removes it):

1. drop the snapshot's index rows (it stops naming its blobs);
2. remove its views (:func:`warmstart.cache.views.remove_views`);
3. delete each blob that no remaining snapshot names and no live lease holds — re-checked right
   before each unlink, so a pull or load that started after planning keeps its blobs.

>>> plan = plan_gc(cache.parts(), max_size=10**9)   # doctest: +SKIP
>>> print(plan.describe()); plan.execute()          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable

from ..config import format_size
from ..errors import CacheFullError, InUseError
from . import leases, tmpdir, views
from .index import Index, SnapshotRow
from .layout import Layout, scan_blobs
from .paths import inside
from .store import BlobStore
from .tiers.memory import MemoryTier

log = logging.getLogger(__name__)

#: unreferenced blobs younger than this are left alone by gc: a pull may be about to record them
ORPHAN_GRACE_S = 600.0


@dataclasses.dataclass(frozen=True)
class CacheParts:
    """The pieces of a cache home that a plan reads and changes (the RAM tier drops its copies too)."""

    layout: Layout
    index: Index
    store: BlobStore
    memory: MemoryTier | None = None


@dataclasses.dataclass(frozen=True)
class Action:
    """One step of a plan. ``kind``: ``snapshot`` (drop a snapshot and its views), ``blob`` (an orphan
    blob), ``tmp`` (a stale partial file); ``bytes`` is what it frees."""

    kind: str
    what: str
    why: str
    bytes: int
    snapshot_id: int | None = None
    digests: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"kind": self.kind, "what": self.what, "why": self.why, "bytes": self.bytes}


@dataclasses.dataclass(frozen=True)
class Result:
    """What :meth:`Plan.execute` removed, and the blobs it kept because a live lease held them."""

    snapshots: int
    blobs: int
    freed: int
    kept_leased: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"snapshots_removed": self.snapshots, "blobs_removed": self.blobs, "bytes_freed": self.freed,
                "blobs_kept_leased": list(self.kept_leased)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """A frozen list of actions over one cache; ``--dry-run`` prints it, :meth:`execute` carries it out."""

    parts: CacheParts = dataclasses.field(repr=False, compare=False)
    actions: tuple[Action, ...]
    used_before: int
    budget: int | None = None
    skipped: tuple[str, ...] = ()

    @property
    def freed(self) -> int:
        return sum(a.bytes for a in self.actions)

    def describe(self) -> str:
        """A human-readable plan, one action per line."""
        lines = [f"cache uses {format_size(self.used_before)}"
                 + (f", budget {format_size(self.budget)}" if self.budget is not None else "")]
        for a in self.actions:
            lines.append(f"  remove {a.kind:8} {a.what}  ({format_size(a.bytes)}): {a.why}")
        for s in self.skipped:
            lines.append(f"  keep            {s}")
        lines.append(f"frees {format_size(self.freed)} in {len(self.actions)} step(s)" if self.actions
                     else "nothing to remove")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"used_bytes": self.used_before, "budget": self.budget, "bytes_to_free": self.freed,
                "actions": [a.to_json() for a in self.actions], "kept": list(self.skipped)}

    def execute(self) -> Result:
        """Carry the plan out in the crash-safe order of the module docstring."""
        p = self.parts
        candidates: dict[str, None] = {}
        snaps = 0
        for a in self.actions:
            if a.kind == "snapshot" and a.snapshot_id is not None:
                row = p.index.get_snapshot(a.snapshot_id)
                if row is None:
                    continue
                files = p.index.snapshot_files(row.id)
                p.index.remove_snapshot(row.id)  # 1. the index stops naming the blobs
                views.remove_views(p.layout, row, files, still_named=p.index.source_blobs(row.source),  # 2.
                                   last=not p.index.snapshots(row.source))
                snaps += 1
                candidates.update(dict.fromkeys(a.digests))
            elif a.kind == "blob":
                candidates.update(dict.fromkeys(a.digests))
            elif a.kind == "tmp":
                tmpdir.remove(p.layout, inside(p.layout.tmp, p.layout.home / a.what, what="partial file"))
        blobs, freed, kept = _remove_blobs(p, candidates)  # 3. unreferenced, unleased blobs
        return Result(snaps, blobs, freed, tuple(kept))


def _remove_blobs(p: CacheParts, digests: Iterable[str]) -> tuple[int, int, list[str]]:
    held = leases.leased_digests(p.layout)
    count = freed = 0
    kept: list[str] = []
    for d in digests:
        if d in held:
            kept.append(d)
            continue
        if p.index.blob_referenced(d):  # a snapshot recorded since planning names it
            continue
        if leases.leased_digests(p.layout).get(d):  # re-checked right before the unlink
            kept.append(d)
            continue
        n = p.store.remove(d)
        if p.memory is not None:
            p.memory.drop(d)
        p.index.forget_blob(d)
        if n:
            count += 1
            freed += n
    return count, freed, kept




# -- planning -----------------------------------------------------------------------------------
def _evictable(index: Index, protect: set[str], held: dict[str, list[int]]) -> list[tuple[SnapshotRow, list[str]]]:
    """Unpinned snapshots none of whose blobs is leased or protected, least recently used first."""
    out = []
    for row in sorted(index.snapshots(), key=lambda r: r.last_used):
        if row.pinned:
            continue
        digests = index.snapshot_digests(row.id)
        if any(d in held or d in protect for d in digests):
            continue
        out.append((row, digests))
    return out


def _freed_by(refs: dict[str, int], digests: list[str]) -> list[str]:
    """The blobs no file names once ``digests`` (one snapshot's files) are gone; updates ``refs``."""
    gone = []
    for d in set(digests):
        refs[d] -= digests.count(d)
        if refs[d] <= 0:
            gone.append(d)
    return sorted(gone)


def plan_eviction(p: CacheParts, budget: int, *, need: int = 0, protect: Iterable[str] = (),
                  why: str = "least recently used") -> Plan:
    """Evict LRU snapshots until blob usage plus ``need`` fits in ``budget``. The plan may fall short
    (everything left is pinned, leased or protected): compare ``plan.used_before - plan.freed + need``."""
    held = leases.leased_digests(p.layout)
    used = p.index.total_blob_bytes()
    refs = p.index.reference_counts()
    sizes = p.index.blob_sizes()
    actions: list[Action] = []
    freed = 0
    for row, digests in _evictable(p.index, set(protect), held):
        if used - freed + need <= budget:
            break
        gone = _freed_by(refs, digests)
        nbytes = sum(sizes.get(d, 0) for d in gone)
        freed += nbytes
        age = time.time() - row.last_used
        actions.append(Action("snapshot", f"{row.source}@{row.revision[:12]}",
                              f"{why}, last used {_ago(age)} ago", nbytes, row.id, tuple(gone)))
    skipped = [f"{row.source}@{row.revision[:12]} (pinned)" for row in p.index.snapshots() if row.pinned]
    for d, pids in held.items():
        skipped.append(f"blob {d[:12]} (in use by pid {', '.join(map(str, sorted(set(pids))))})")
    return Plan(p, tuple(actions), used, budget, tuple(skipped))


def plan_gc(p: CacheParts, *, max_size: int | None = None) -> Plan:
    """Orphan blobs (named by no snapshot, older than the grace period), stale partial downloads, and,
    with ``max_size``, LRU snapshots until the cache fits."""
    base = plan_eviction(p, max_size, why="over the budget") if max_size is not None else None
    actions = list(base.actions) if base else []
    referenced = p.index.referenced_digests()
    now = time.time()
    for digest, st in scan_blobs(p.layout.blobs):
        if digest in referenced or now - st.st_mtime < ORPHAN_GRACE_S:
            continue
        actions.append(Action("blob", digest[:16], "named by no snapshot", st.st_size, None, (digest,)))
    for s in tmpdir.stale(p.layout, now):
        actions.append(Action("tmp", os.path.relpath(s.path, p.layout.home), f"{s.why}, untouched for {_ago(s.age)}",
                              s.bytes))
    used = base.used_before if base else p.index.total_blob_bytes()
    return Plan(p, tuple(actions), used, max_size, base.skipped if base else ())


def plan_remove(p: CacheParts, rows: list[SnapshotRow]) -> Plan:
    """Remove exactly ``rows`` (``warmstart rm``); raises InUseError if a live lease holds any blob."""
    held = leases.leased_digests(p.layout)
    refs = p.index.reference_counts()
    sizes = p.index.blob_sizes()
    actions = []
    for row in rows:
        digests = p.index.snapshot_digests(row.id)
        pids = sorted({pid for d in digests for pid in held.get(d, ())})
        if pids:
            raise InUseError(f"{row.source}@{row.revision[:12]} is in use by process(es) "
                             f"{', '.join(map(str, pids))}; stop them (or wait) and run rm again")
        gone = _freed_by(refs, digests)
        actions.append(Action("snapshot", f"{row.source}@{row.revision[:12]}", "requested by rm",
                              sum(sizes.get(d, 0) for d in gone), row.id, tuple(gone)))
    return Plan(p, tuple(actions), p.index.total_blob_bytes(), None)


def make_room(p: CacheParts, budget: int, need: int, *, protect: Iterable[str] = ()) -> None:
    """Before a pull: evict LRU snapshots so that ``need`` new bytes fit in ``budget``, or raise
    :class:`CacheFullError` without touching anything."""
    if need > budget:
        raise CacheFullError(f"this pull needs {format_size(need)} but the cache budget is {format_size(budget)}; "
                             "raise WARMSTART_MAX_SIZE / --max-size")
    plan = plan_eviction(p, budget, need=need, protect=protect)
    if plan.used_before - plan.freed + need > budget:
        raise CacheFullError(
            f"cannot make room for {format_size(need)} within the budget of {format_size(budget)}: "
            f"{format_size(plan.used_before)} is used and only {format_size(plan.freed)} can be evicted (the rest is "
            "pinned or in use); unpin or rm models, or raise WARMSTART_MAX_SIZE")
    if plan.actions:
        log.info("evicting to make room for %s: %s", format_size(need), plan.describe())
        plan.execute()


def _ago(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds:.0f}s"

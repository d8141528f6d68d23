"""Eviction and garbage collection: compute a frozen plan (what, why, how many bytes), then execute it.

Order inside :meth:`Plan.execute`, chosen so that a crash at any point leaves every remaining
snapshot's blobs intact (an orphan blob is harmless; the next ``gc`` removes it):

1. drop the snapshot's index rows (it stops naming its blobs);
2. remove its views (``hub/models--…/snapshots/<commit>``, refs pointing at it, unused ``hub/…/blobs/<etag>``
   links; or ``snapshots/<scheme>/…`` for other sources);
3. delete each blob that no remaining snapshot names and no live lease holds — re-checked right
   before each unlink, so a pull or load that started after planning keeps its blobs.

>>> plan = plan_gc(cache, max_size=10**9)        # doctest: +SKIP
>>> print(plan.describe()); plan.execute()       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..config import format_size
from ..errors import CacheFullError
from . import leases
from .index import SnapshotRow
from .layout import scan_blobs as layout_scan
from .paths import inside

if TYPE_CHECKING:
    from .manager import Cache

log = logging.getLogger(__name__)

#: unreferenced blobs younger than this are left alone by gc: a pull may be about to record them
ORPHAN_GRACE_S = 600.0
#: partial downloads that can resume (``<key>.part`` with a sidecar that matches it) are removed by gc
#: once untouched for this long
STALE_TMP_S = 7 * 86400.0
#: partial downloads that can never resume (a stream's, one without a usable sidecar) are removed once
#: untouched for this long, and never while a download holds their lock (``locks/<key>.lock``)
DEAD_PART_GRACE_S = 60.0
#: other files in tmp/ (``import-*``, ``put-*``, ``adopt-*``… of a killed process) once untouched this long
TMP_GRACE_S = 600.0
#: the version of the sidecar ``tmp/<key>.part.json`` (``partial.STATE_VERSION``, which cache/ may not import)
_PART_STATE_VERSION = 1


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

    cache: Cache = dataclasses.field(repr=False, compare=False)
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
        cache = self.cache
        candidates: dict[str, None] = {}
        snaps = 0
        for a in self.actions:
            if a.kind == "snapshot" and a.snapshot_id is not None:
                row = cache.index.get_snapshot(a.snapshot_id)
                if row is None:
                    continue
                files = cache.index.snapshot_files(row.id)
                cache.index.remove_snapshot(row.id)  # 1. the index stops naming the blobs
                _remove_views(cache, row, files)      # 2. the views
                snaps += 1
                candidates.update(dict.fromkeys(a.digests))
            elif a.kind == "blob":
                candidates.update(dict.fromkeys(a.digests))
            elif a.kind == "tmp":
                _remove_tmp(cache, inside(cache.layout.tmp, cache.layout.home / a.what, what="partial file"))
        blobs, freed, kept = _remove_blobs(cache, candidates)  # 3. unreferenced, unleased blobs
        return Result(snaps, blobs, freed, tuple(kept))


def _unlink(path: os.PathLike) -> int:
    try:
        size = os.lstat(path).st_size
        os.unlink(path)
        return size
    except FileNotFoundError:
        return 0


def _remove_blobs(cache: Cache, digests: Iterable[str]) -> tuple[int, int, list[str]]:
    held = leases.leased_digests(cache.layout)
    count = freed = 0
    kept: list[str] = []
    for d in digests:
        if d in held:
            kept.append(d)
            continue
        if cache.index.blob_referenced(d):  # a snapshot recorded since planning names it
            continue
        if leases.leased_digests(cache.layout).get(d):  # re-checked right before the unlink
            kept.append(d)
            continue
        n = cache.store.remove(d)
        if cache.memory is not None:
            cache.memory.drop(d)
        cache.index.forget_blob(d)
        if n:
            count += 1
            freed += n
    return count, freed, kept


def _remove_views(cache: Cache, row: SnapshotRow, files) -> None:
    """Remove a dropped snapshot's views: the hub snapshot dir, refs naming it, unused etag links. Every
    path is checked to lie inside its directory first; a view whose name would not (a record made before
    names were checked) is left alone and logged."""
    import shutil

    from ..errors import UnsafePathError
    from .paths import hub_blob_name
    from .views import snapshot_dir

    try:
        snap = snapshot_dir(cache.layout, row.source, row.revision, row.kind)
    except UnsafePathError as exc:
        log.warning("not removing the view of %s: %s", row.source, exc)
        return
    if not snap.is_symlink():  # rmtree never follows links inside; a link in its place is not ours
        shutil.rmtree(snap, ignore_errors=True)
    if not snap.is_relative_to(cache.layout.hub):
        return
    repo = snap.parent.parent
    refs_dir = repo / "refs"
    if refs_dir.is_dir() and not refs_dir.is_symlink():
        for ref in list(refs_dir.rglob("*")):
            try:
                if ref.is_file() and not ref.is_symlink() and ref.read_text().strip() == row.revision:
                    os.unlink(inside(cache.layout.hub, ref, what="refs file"))
            except (OSError, UnsafePathError):
                pass
    still = {hub_blob_name(e, d) for e, d in cache.index.query(
        "SELECT DISTINCT f.etag, f.digest FROM files f JOIN snapshots s ON s.id=f.snapshot "
        "WHERE s.source=?", (row.source,))}
    for f in files:
        name = hub_blob_name(f.etag, f.digest)
        if name not in still:
            _unlink(inside(cache.layout.hub, repo / "blobs" / name, what="hub blob link"))
    if not cache.index.snapshots(row.source) and not repo.is_symlink():
        shutil.rmtree(inside(cache.layout.hub, repo, what="hub repository"), ignore_errors=True)




def used_bytes(cache: Cache) -> int:
    """Bytes of the blobs the index knows (the budget counts these)."""
    return cache.index.total_blob_bytes()


def scan_blobs(cache: Cache) -> list[tuple[str, int, float]]:
    """Every blob file on disk as ``(digest, size, mtime)``; temporary names are skipped."""
    return [(d, st.st_size, st.st_mtime) for d, st in layout_scan(cache.layout.blobs)]


# -- planning -----------------------------------------------------------------------------------
def _evictable(cache: Cache, protect: set[str], held: dict[str, list[int]]) -> list[tuple[SnapshotRow, list[str]]]:
    """Unpinned snapshots none of whose blobs is leased or protected, least recently used first."""
    out = []
    for row in sorted(cache.index.snapshots(), key=lambda r: r.last_used):
        if row.pinned:
            continue
        digests = cache.index.snapshot_digests(row.id)
        if any(d in held or d in protect for d in digests):
            continue
        out.append((row, digests))
    return out


def plan_eviction(cache: Cache, budget: int, *, need: int = 0, protect: Iterable[str] = (),
                  why: str = "least recently used") -> Plan:
    """Evict LRU snapshots until blob usage plus ``need`` fits in ``budget``. The plan may fall short
    (everything left is pinned, leased or protected): compare ``plan.used_before - plan.freed + need``."""
    protect = set(protect)
    held = leases.leased_digests(cache.layout)
    used = used_bytes(cache)
    refs = cache.index.reference_counts()
    sizes = cache.index.blob_sizes()
    actions: list[Action] = []
    skipped: list[str] = []
    freed = 0
    for row, digests in _evictable(cache, protect, held):
        if used - freed + need <= budget:
            break
        gone = []
        for d in set(digests):
            refs[d] -= digests.count(d)
            if refs[d] <= 0:
                gone.append(d)
        nbytes = sum(sizes.get(d, 0) for d in gone)
        freed += nbytes
        age = time.time() - row.last_used
        actions.append(Action("snapshot", f"{row.source}@{row.revision[:12]}",
                              f"{why}, last used {_ago(age)} ago", nbytes, row.id, tuple(sorted(gone))))
    for row in cache.index.snapshots():
        if row.pinned:
            skipped.append(f"{row.source}@{row.revision[:12]} (pinned)")
    for d, pids in held.items():
        skipped.append(f"blob {d[:12]} (in use by pid {', '.join(map(str, sorted(set(pids))))})")
    return Plan(cache, tuple(actions), used, budget, tuple(skipped))


def plan_gc(cache: Cache, *, max_size: int | None = None) -> Plan:
    """Orphan blobs (named by no snapshot, older than the grace period), stale partial downloads, and,
    with ``max_size``, LRU snapshots until the cache fits."""
    base = plan_eviction(cache, max_size, why="over the budget") if max_size is not None else None
    actions = list(base.actions) if base else []
    referenced = cache.index.referenced_digests()
    now = time.time()
    for digest, size, mtime in scan_blobs(cache):
        if digest in referenced or now - mtime < ORPHAN_GRACE_S:
            continue
        actions.append(Action("blob", digest[:16], "named by no snapshot", size, None, (digest,)))
    actions.extend(_tmp_actions(cache, now))
    used = base.used_before if base else used_bytes(cache)
    return Plan(cache, tuple(actions), used, max_size, base.skipped if base else ())


def plan_remove(cache: Cache, rows: list[SnapshotRow]) -> Plan:
    """Remove exactly ``rows`` (``warmstart rm``); raises InUseError if a live lease holds any blob."""
    from ..errors import InUseError

    held = leases.leased_digests(cache.layout)
    refs = cache.index.reference_counts()
    sizes = cache.index.blob_sizes()
    actions = []
    for row in rows:
        digests = cache.index.snapshot_digests(row.id)
        pids = sorted({p for d in digests for p in held.get(d, ())})
        if pids:
            raise InUseError(f"{row.source}@{row.revision[:12]} is in use by process(es) "
                             f"{', '.join(map(str, pids))}; stop them (or wait) and run rm again")
        gone = []
        for d in set(digests):
            refs[d] -= digests.count(d)
            if refs[d] <= 0:
                gone.append(d)
        actions.append(Action("snapshot", f"{row.source}@{row.revision[:12]}", "requested by rm",
                              sum(sizes.get(d, 0) for d in gone), row.id, tuple(sorted(gone))))
    return Plan(cache, tuple(actions), used_bytes(cache), None)


def make_room(cache: Cache, need: int, *, protect: Iterable[str] = ()) -> None:
    """Before a pull: evict LRU snapshots so that ``need`` new bytes fit in ``cache.max_size``, or raise
    :class:`CacheFullError` without touching anything."""
    budget = cache.max_size
    if budget is None:
        return
    if need > budget:
        raise CacheFullError(f"this pull needs {format_size(need)} but the cache budget is {format_size(budget)}; "
                             "raise WARMSTART_MAX_SIZE / --max-size")
    plan = plan_eviction(cache, budget, need=need, protect=protect)
    if plan.used_before - plan.freed + need > budget:
        raise CacheFullError(
            f"cannot make room for {format_size(need)} within the budget of {format_size(budget)}: "
            f"{format_size(plan.used_before)} is used and only {format_size(plan.freed)} can be evicted (the rest is "
            "pinned or in use); unpin or rm models, or raise WARMSTART_MAX_SIZE")
    if plan.actions:
        log.info("evicting to make room for %s: %s", format_size(need), plan.describe())
        plan.execute()


def _tmp_actions(cache: Cache, now: float) -> list[Action]:
    """What gc removes from tmp/: partial downloads that can resume once untouched for STALE_TMP_S;
    those that never can (no sidecar, a sidecar that does not match, a stream's file) after
    DEAD_PART_GRACE_S unless a download holds their lock; any other file after TMP_GRACE_S."""
    entries = {os.path.basename(p): (p, size, mtime) for p, size, mtime in _tmp_entries(cache)}
    actions = []
    for name, (path, size, mtime) in sorted(entries.items()):
        age = now - mtime
        key = _part_key(name)
        if key is None:
            why, grace = "temporary file of a process that is gone", TMP_GRACE_S
        elif name.endswith(".json") and f"{key}.part" in entries:
            continue  # removed with its partial file
        else:
            if name.endswith(".json"):  # a sidecar without its partial file
                why, grace = "resume state of a partial download that is gone", DEAD_PART_GRACE_S
            elif _resumable(path, entries.get(f"{key}.part.json")):
                why, grace = "partial download", STALE_TMP_S
            else:
                why, grace = "partial download that can never resume", DEAD_PART_GRACE_S
                side = entries.get(f"{key}.part.json")
                size += side[1] if side else 0
            if age > grace and _lock_held(cache, key):
                continue  # a live download: never touched
        if age > grace:
            actions.append(Action("tmp", os.path.relpath(path, cache.layout.home),
                                  f"{why}, untouched for {_ago(age)}", size))
    return actions


def _part_key(name: str) -> str | None:
    """``<key>`` of ``<key>.part`` / ``<key>.part.json``; None for any other name."""
    for suffix in (".part", ".part.json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _resumable(part: str, sidecar: tuple[str, int, float] | None) -> bool:
    """A later pull can resume ``part``: its sidecar parses, has this version, and names its size."""
    if sidecar is None:
        return False
    try:
        with open(sidecar[0], "rb") as fh:
            state = json.loads(fh.read(1 << 24))
        size = state["size"]
        return (isinstance(state, dict) and state.get("version") == _PART_STATE_VERSION and isinstance(size, int)
                and size > 0 and isinstance(state.get("done"), list) and os.stat(part).st_size == size)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False


def _lock_fd(cache: Cache, key: str) -> int | None:
    """The download lock of ``key``, taken (an fd to close), or None when a download holds it."""
    try:
        fd = os.open(cache.layout.locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return -1  # no lock directory: no download either
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:  # a filesystem without working locks: the age alone decides
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            return None
    return fd


def _lock_held(cache: Cache, key: str) -> bool:
    fd = _lock_fd(cache, key)
    if fd is None:
        return True
    if fd >= 0:
        os.close(fd)
    return False


def _remove_tmp(cache: Cache, path: os.PathLike) -> int:
    """Remove a file of tmp/; a partial download only under its lock (with its sidecar), so that a
    download starting meanwhile is never cut short."""
    key = _part_key(os.path.basename(path))
    if key is None:
        return _unlink(path)
    fd = _lock_fd(cache, key)
    if fd is None:
        return 0
    try:
        part = cache.layout.tmp / f"{key}.part"
        return _unlink(part) + _unlink(part.with_name(part.name + ".json"))
    finally:
        if fd >= 0:
            os.close(fd)


def _tmp_entries(cache: Cache) -> list[tuple[str, int, float]]:
    out = []
    try:
        with os.scandir(cache.layout.tmp) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if e.is_file(follow_symlinks=False):
                    out.append((e.path, st.st_size, st.st_mtime))
    except FileNotFoundError:
        pass
    return out


def _ago(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds:.0f}s"


__all__ = ["Action", "Plan", "Result", "make_room", "plan_eviction", "plan_gc", "plan_remove"]

"""The cache as a management object: ``ls``, ``du``, ``rm``, ``gc``, ``verify``, ``pin``/``unpin``, ``adopt``,
and the RAM tier. ``warmstart.cache()`` returns one; the CLI's cache commands call nothing else.

>>> import warmstart
>>> c = warmstart.cache()                                  # doctest: +SKIP
>>> [(e.model, e.revision[:8], e.size) for e in c.ls()]    # doctest: +SKIP
>>> plan = c.gc(max_size="50G", dry_run=True); print(plan.describe())   # doctest: +SKIP
>>> c.pin("hf://Qwen/Qwen2.5-0.5B"); c.verify(repair=True)              # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings, parse_size
from ..errors import ConfigError, NotFoundError, UnsafePathError
from . import evict, leases, views
from .index import SnapshotRow
from .manager import Cache
from .paths import hub_blob_name, inside
from .store import cpu_count, git_oid_file, sha256_blob

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One cached snapshot as ``ls`` shows it."""

    model: str
    revision: str
    refs: tuple[str, ...]
    files: int
    size: int
    shared: int
    last_used: float
    pinned: bool
    tier: str
    in_use_by: tuple[int, ...] = ()

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["refs"], d["in_use_by"] = list(self.refs), list(self.in_use_by)
        return d


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
        return blobs and set(self.views) <= set(self.views_repaired)

    _all_repaired: bool = False
    views: tuple[str, ...] = ()
    views_repaired: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"checked": self.checked, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "corrupt": list(self.corrupt), "missing": list(self.missing), "repaired": list(self.repaired),
                "quarantined": list(self.quarantined), "wrong_views": list(self.views),
                "views_repaired": list(self.views_repaired), "ok": self.ok}


class Manager(Cache):
    """A :class:`Cache` with the management commands. Build with :meth:`open`."""

    settings: Settings
    #: fetches ``"source@revision"`` again (``verify --repair``); the API layer provides it, since the
    #: cache knows nothing of sources
    refetch: Callable[[str], object] | None = None

    @classmethod
    def open(cls, settings: Settings | None = None, *, refetch: Callable[[str], object] | None = None) -> Manager:
        settings = settings or Settings.from_env()
        m = cls(settings.home, max_size=settings.max_size, memory_dir=settings.memory_dir,
                memory_max_size=settings.memory_max_size, shared_dir=settings.shared_dir)
        m.settings = settings
        m.refetch = refetch
        return m

    # -- finding snapshots -----------------------------------------------------------------------
    def find(self, ref: str, revision: str | None = None, *, default_only: bool = False) -> list[SnapshotRow]:
        """The cached snapshots of ``ref`` (all of them, or the one its revision names); NotFoundError if none."""
        from ..refs import parse

        # `<source>#derived` names the converted snapshots of a source, as `ls` shows them
        base, derived, tail = ref.partition("#derived")
        if derived and tail and not tail.startswith("@"):
            raise NotFoundError(f"{ref}: write a converted snapshot as SOURCE#derived[@KEY], as `warmstart ls` shows it")
        r = parse(base + tail, revision=revision)
        key = str(r.with_revision(None)) + derived
        rows = self.index.snapshots(key)
        if r.revision:
            rev = self.index.get_ref(key, r.revision) or r.revision
            rows = [x for x in rows if x.revision == rev or (len(rev) >= 7 and x.revision.startswith(rev))]
        elif default_only and len(rows) > 1:
            from ..refs import default_revision

            rev = self.index.get_ref(key, default_revision(r.scheme))
            rows = [x for x in rows if x.revision == rev] or [max(rows, key=lambda x: x.created)]
        if not rows:
            what = f"{key}@{r.revision}" if r.revision else key
            raise NotFoundError(f"{what} is not in the cache; `warmstart ls` lists what is")
        return rows

    # -- ls / du -------------------------------------------------------------------------------
    def ls(self) -> list[Entry]:
        """Every snapshot: model, revision, size, bytes shared with other snapshots, last use, pin, tier."""
        rows = self.index.listing_rows()
        owners = dict(self.index.query("SELECT digest, COUNT(DISTINCT snapshot) FROM files GROUP BY digest"))
        refs: dict[tuple[str, str], list[str]] = {}
        for source, name, rev in self.index.query("SELECT source, name, revision FROM refs"):
            refs.setdefault((source, rev), []).append(name)
        in_ram = set(self.memory.digests()) if self.memory is not None else set()
        held = leases.leased_digests(self.layout)
        snaps: dict[int, dict] = {}
        for sid, source, rev, _created, last_used, pinned, digest, size in rows:
            s = snaps.setdefault(sid, {"source": source, "rev": rev, "last": last_used, "pinned": pinned,
                                       "files": 0, "size": 0, "shared": 0, "ram": 0, "pids": set()})
            if digest is None:
                continue
            s["files"] += 1
            s["size"] += size
            if owners.get(digest, 0) > 1:
                s["shared"] += size
            if digest in in_ram:
                s["ram"] += 1
            s["pids"].update(held.get(digest, ()))
        return [Entry(s["source"], s["rev"], tuple(sorted(refs.get((s["source"], s["rev"]), ()))), s["files"],
                      s["size"], s["shared"], s["last"], bool(s["pinned"]),
                      "memory" if s["files"] and s["ram"] == s["files"] else "disk", tuple(sorted(s["pids"])))
                for s in snaps.values()]

    def du(self) -> dict:
        """Bytes on disk (blobs, partial downloads), the budget, and the tiers' usage."""
        blobs = evict.scan_blobs(self)
        tmp = sum(e[1] for e in evict._tmp_entries(self))
        out = {"home": str(self.layout.home), "blobs": len(blobs), "blob_bytes": sum(b[1] for b in blobs),
               "tmp_bytes": tmp, "snapshots": len(self.index.snapshots()), "budget": self.max_size,
               "indexed_bytes": evict.used_bytes(self)}
        if self.memory is not None:
            out.update(memory_dir=str(self.memory.root), memory_bytes=self.memory.used(),
                       memory_budget=self.memory.max_size)
        if self.shared_dir is not None:
            out["shared_dir"] = str(self.shared_dir)
        return out

    # -- rm / gc -------------------------------------------------------------------------------
    def plan_rm(self, ref: str, revision: str | None = None) -> evict.Plan:
        """What removing a model (every cached revision, or one) would do; InUseError names the
        processes holding it."""
        return evict.plan_remove(self, self.find(ref, revision))

    def rm(self, ref: str, revision: str | None = None, *, dry_run: bool = False) -> evict.Plan | evict.Result:
        """Remove a model (every cached revision, or one); InUseError names the processes holding it."""
        plan = self.plan_rm(ref, revision)
        return plan if dry_run else self.carry_out(plan)

    def plan_gc(self, max_size: int | str | None = None) -> evict.Plan:
        budget = parse_size(max_size) if max_size is not None else self.max_size
        return evict.plan_gc(self, max_size=budget)

    def gc(self, max_size: int | str | None = None, *, dry_run: bool = False) -> evict.Plan | evict.Result:
        """Remove orphan blobs, stale partial files and stale leases; with a budget, LRU snapshots too."""
        plan = self.plan_gc(max_size)
        return plan if dry_run else self.carry_out(plan)

    def carry_out(self, plan: evict.Plan) -> evict.Result:
        """Execute a plan, then let the RAM tier drop what no snapshot names any more."""
        result = plan.execute()
        if self.memory is not None:
            self.memory.gc(self)
        return result

    # -- pins ----------------------------------------------------------------------------------
    def pin(self, ref: str, revision: str | None = None, *, pinned: bool = True) -> list[SnapshotRow]:
        rows = self.find(ref, revision, default_only=True)
        for r in rows:
            self.index.set_pinned(r.id, pinned)
        return rows

    def unpin(self, ref: str, revision: str | None = None) -> list[SnapshotRow]:
        return self.pin(ref, revision, pinned=False)

    # -- verify --------------------------------------------------------------------------------
    def verify(self, ref: str | None = None, revision: str | None = None, *, repair: bool = False,
               workers: int | None = None) -> VerifyReport:
        """Re-hash blobs: different blobs in parallel, one thread per CPU (hashlib releases the GIL; sha256
        of one blob cannot be split), each hashing its blob through a read-only mapping (no copy). Corrupt
        blobs are moved to ``quarantine/``; with ``repair`` their snapshots are pulled again. Then every
        view entry is checked to resolve to the blob its snapshot records; ``repair`` rebuilds wrong ones."""
        t0 = time.monotonic()
        rows = self.find(ref, revision) if ref else self.index.snapshots()
        digests: dict[str, int] = {}
        git_oids: dict[str, set[str]] = {}  # files listed with a git blob id: the blob must hash to it too
        for r in rows:
            for f in self.index.snapshot_files(r.id):
                digests[f.digest] = f.size
                if f.git_oid:
                    git_oids.setdefault(f.digest, set()).add(f.git_oid)
        workers = max(1, min(workers or cpu_count(), len(digests)))
        corrupt, missing, quarantined = [], [], []
        hashed = 0

        def check(d: str) -> tuple[str, str, int]:
            p = self.store.path(d)
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
        with cf.ThreadPoolExecutor(workers) as pool:
            for d, state, n in pool.map(check, order):
                hashed += n
                if state == "missing":
                    missing.append(d)
                elif state == "corrupt":
                    corrupt.append(d)
                    quarantined.append(str(self._quarantine(d)))
                else:
                    self.index.set_verified(d)
        repaired = []
        bad = set(corrupt) | set(missing)
        if repair and bad:
            if self.refetch is None:
                raise ConfigError("verify --repair needs a way to fetch again: use warmstart.cache()")
            for r in rows:
                if bad & set(self.index.snapshot_digests(r.id)):
                    self.refetch(f"{r.source}@{r.revision}")
                    repaired.append(f"{r.source}@{r.revision}")
        left = [d for d in bad if not self.store.has(d)]
        views, fixed = self._verify_views(rows, repair)
        return VerifyReport(len(digests), hashed, time.monotonic() - t0, tuple(corrupt), tuple(missing),
                            tuple(repaired), tuple(quarantined), _all_repaired=bool(repaired) and not left,
                            views=tuple(views), views_repaired=tuple(fixed))

    def _verify_views(self, rows: list[SnapshotRow], repair: bool) -> tuple[list[str], list[str]]:
        """Check that every file of every view (hub snapshot links and their ``blobs/<etag>`` links,
        ``snapshots/…`` links) resolves to the blob its snapshot records; with ``repair``, rebuild the
        wrong ones (no download: the blobs are local). Returns (wrong entries, repaired entries)."""
        wrong: list[str] = []
        fixed: list[str] = []
        for r in rows:
            if self.index.get_snapshot(r.id) is None:  # replaced meanwhile (a repair pulled it again)
                continue
            files = self.index.snapshot_files(r.id)
            name = f"{r.source}@{r.revision}"
            try:
                snap = views.snapshot_dir(self.layout, r.source, r.revision, r.kind)
            except UnsafePathError as exc:  # recorded before names were checked: it has no view to check
                log.warning("%s: %s; remove it with `warmstart rm %s`", name, exc, r.source)
                wrong.append(f"{name}:")
                continue
            bad = views.wrong_entries(self.layout, snap, files)
            if not bad:
                continue
            wrong.extend(f"{name}:{p}" for p in bad)
            for p in bad:
                log.info("view %s/%s does not resolve to its blob", snap, p)
            if repair:
                try:
                    self._rebuild_view(r, snap, files, bad)
                except (UnsafePathError, OSError) as exc:
                    log.warning("cannot rebuild the view of %s: %s", name, exc)
                still = set(views.wrong_entries(self.layout, snap, files))
                fixed.extend(f"{name}:{p}" for p in bad if p not in still)
        return wrong, fixed

    def _rebuild_view(self, row: SnapshotRow, snap: Path, files: list, bad: list[str]) -> None:
        """Clear what is in the way of each wrong entry (inside the view only), then make the view again."""
        if snap.is_symlink():
            os.unlink(inside(self.layout.home, snap, what="snapshot view"))
        for p in bad:
            views.clear_entry(snap, p, self.layout)
        if snap.is_relative_to(self.layout.hub):
            repo = snap.parent.parent
            for f in files:
                link = repo / "blobs" / hub_blob_name(f.etag, f.digest)
                if os.path.lexists(link) and os.path.realpath(link) != os.path.realpath(self.store.path(f.digest)):
                    views.clear_entry(repo / "blobs", link.name, self.layout)
            refs = {n: v for n, v in self.index.refs_of(row.source).items() if v == row.revision}
            views.hub_view(self.layout, row.source.removeprefix("hf://"), row.revision, files, refs)
        else:
            views.source_view(self.layout, row.source, row.revision, files)

    def rebuild_index(self):
        """Move a damaged ``index.db`` aside and rebuild it from the blobs and views on disk (pins and
        last-use times are lost); returns a :class:`~warmstart.cache.rebuild.RebuildReport`."""
        from .rebuild import rebuild_index

        return rebuild_index(self)

    def _quarantine(self, digest: str) -> Path:
        """Move a corrupt blob out of ``blobs/`` (never served again, kept for inspection)."""
        self.layout.quarantine.mkdir(parents=True, exist_ok=True)
        dest = inside(self.layout.home, self.layout.quarantine / f"{digest}.{int(time.time())}",
                      what="quarantine file")
        try:
            os.replace(inside(self.layout.home, self.store.path(digest), what="blob"), dest)
        except FileNotFoundError:
            pass
        if self.memory is not None:
            self.memory.drop(digest)
        log.warning("blob %s is corrupt; moved it to %s", digest[:12], dest)
        return dest

    # -- tiers and adoption ----------------------------------------------------------------------
    def promote(self, ref: str, revision: str | None = None) -> Path:
        """Copy a cached snapshot into the RAM tier; returns its RAM view directory."""
        if self.memory is None:
            from ..errors import ConfigError

            raise ConfigError("no RAM tier: set WARMSTART_MEMORY_DIR (e.g. /dev/shm/warmstart)")
        row = self.find(ref, revision, default_only=True)[0]
        return self.memory.promote(self, row.source, row.revision, self.index.snapshot_files(row.id))

    def adopt(self, hf_cache: str | os.PathLike | None = None, *, dry_run: bool = False):
        """Bring models a huggingface_hub cache holds under management without copying (see ``adopt.py``)."""
        from .adopt import adopt

        return adopt(self, hf_cache, dry_run=dry_run)

"""The cache as a management object: ``ls``, ``du``, ``rm``, ``gc``, ``verify``, ``pin``/``unpin``, ``adopt``,
and the RAM tier. ``warmstart.cache()`` returns one; the CLI's cache commands call nothing else.

>>> import warmstart
>>> c = warmstart.cache()                                  # doctest: +SKIP
>>> [(e.model, e.revision[:8], e.size) for e in c.ls()]    # doctest: +SKIP
>>> plan = c.gc(max_size="50G", dry_run=True); print(plan.describe())   # doctest: +SKIP
>>> c.pin("hf://Qwen/Qwen2.5-0.5B"); c.verify(repair=True)              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from ..config import Settings, parse_size
from ..errors import ConfigError, NotFoundError
from ..refs import Ref
from . import evict, leases, tmpdir
from .adopt import AdoptReport, adopt
from .home import Cache
from .index import SnapshotRow
from .layout import scan_blobs
from .rebuild import RebuildReport, rebuild_index
from .verify import VerifyReport, verify_snapshots


@dataclasses.dataclass(frozen=True)
class CachedModel:
    """One cached snapshot (a model at one revision) as ``ls`` shows it: its refs, file count, bytes,
    bytes shared with other snapshots, last use, pin, tier (``memory`` when every blob is in the RAM
    tier) and the processes holding it."""

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


class CacheManager(Cache):
    """A :class:`~warmstart.cache.home.Cache` with the management commands. Build with :meth:`open`."""

    settings: Settings
    #: fetches ``"source@revision"`` again (``verify --repair``), and parses a ref string (``rm``,
    #: ``pin``, ``verify`` of one model: the sources own the grammar); the API layer provides both,
    #: since the cache knows nothing of sources
    refetch: Callable[[str], object] | None = None
    parse: Callable[..., Ref] | None = None

    @classmethod
    def open(cls, settings: Settings | None = None, *, refetch: Callable[[str], object] | None = None,
             parse: Callable[..., Ref] | None = None) -> CacheManager:
        settings = settings or Settings.from_env()
        m = cls(settings.home, max_size=settings.max_size, memory_dir=settings.memory_dir,
                memory_max_size=settings.memory_max_size, shared_dir=settings.shared_dir)
        m.settings = settings
        m.refetch = refetch
        m.parse = parse
        return m

    # -- finding snapshots -----------------------------------------------------------------------
    def find(self, ref: str, revision: str | None = None, *, default_only: bool = False) -> list[SnapshotRow]:
        """The cached snapshots of ``ref`` (all of them, or the one its revision names); NotFoundError if none."""
        if self.parse is None:
            raise ConfigError("finding a model by its ref needs the sources' grammar: use warmstart.cache()")
        # `<source>#derived` names the converted snapshots of a source, as `ls` shows them
        base, derived, tail = ref.partition("#derived")
        if derived and tail and not tail.startswith("@"):
            raise NotFoundError(f"{ref}: write a converted snapshot as SOURCE#derived[@KEY], as `warmstart ls` shows it")
        r = self.parse(base + tail, revision=revision)
        key = r.key + derived
        rows = self.index.snapshots(key)
        if r.revision:
            rev = self.index.get_ref(key, r.revision) or r.revision
            rows = [x for x in rows if x.revision == rev or (len(rev) >= 7 and x.revision.startswith(rev))]
        elif default_only and len(rows) > 1:
            rev = self.index.get_ref(key, r.default_revision)
            rows = [x for x in rows if x.revision == rev] or [max(rows, key=lambda x: x.created)]
        if not rows:
            what = f"{key}@{r.revision}" if r.revision else key
            raise NotFoundError(f"{what} is not in the cache; `warmstart ls` lists what is")
        return rows

    # -- ls / du -------------------------------------------------------------------------------
    def ls(self) -> list[CachedModel]:
        """Every snapshot: model, revision, size, bytes shared with other snapshots, last use, pin, tier."""
        owners = self.index.owner_counts()
        refs: dict[tuple[str, str], list[str]] = {}
        for source, name, rev in self.index.all_refs():
            refs.setdefault((source, rev), []).append(name)
        in_ram = set(self.memory.digests()) if self.memory is not None else set()
        held = leases.leased_digests(self.layout)
        snaps: dict[int, dict] = {}
        for sid, source, rev, _created, last_used, pinned, digest, size in self.index.listing_rows():
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
        return [CachedModel(s["source"], s["rev"], tuple(sorted(refs.get((s["source"], s["rev"]), ()))),
                            s["files"], s["size"], s["shared"], s["last"], bool(s["pinned"]),
                            "memory" if s["files"] and s["ram"] == s["files"] else "disk", tuple(sorted(s["pids"])))
                for s in snaps.values()]

    def du(self) -> dict:
        """Bytes on disk (blobs, partial downloads), the budget, and the tiers' usage."""
        blob_bytes = [st.st_size for _, st in scan_blobs(self.layout.blobs)]
        out = {"home": str(self.layout.home), "blobs": len(blob_bytes), "blob_bytes": sum(blob_bytes),
               "tmp_bytes": sum(e[1] for e in tmpdir.entries(self.layout)),
               "snapshots": len(self.index.snapshots()), "budget": self.max_size,
               "indexed_bytes": self.index.total_blob_bytes()}
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
        return evict.plan_remove(self.parts(), self.find(ref, revision))

    def rm(self, ref: str, revision: str | None = None, *, dry_run: bool = False) -> evict.Plan | evict.Result:
        """Remove a model (every cached revision, or one); InUseError names the processes holding it."""
        plan = self.plan_rm(ref, revision)
        return plan if dry_run else self.carry_out(plan)

    def plan_gc(self, max_size: int | str | None = None) -> evict.Plan:
        budget = parse_size(max_size) if max_size is not None else self.max_size
        return evict.plan_gc(self.parts(), max_size=budget)

    def gc(self, max_size: int | str | None = None, *, dry_run: bool = False) -> evict.Plan | evict.Result:
        """Remove orphan blobs, stale partial files and stale leases; with a budget, LRU snapshots too."""
        plan = self.plan_gc(max_size)
        return plan if dry_run else self.carry_out(plan)

    def carry_out(self, plan: evict.Plan) -> evict.Result:
        """Execute a plan, then let the RAM tier drop what no snapshot names any more."""
        result = plan.execute()
        if self.memory is not None:
            self.memory.drop_unreferenced(self.index.referenced_digests())
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
        """Re-hash blobs (in parallel) and check every view; corrupt blobs are moved to ``quarantine/``,
        and with ``repair`` their snapshots are pulled again and wrong views rebuilt (see ``verify.py``)."""
        rows = self.find(ref, revision) if ref else self.index.snapshots()
        return verify_snapshots(self, rows, repair=repair, workers=workers, refetch=self.refetch)

    def rebuild_index(self) -> RebuildReport:
        """Move a damaged ``index.db`` aside and rebuild it from the blobs and views on disk (pins and
        last-use times are lost)."""
        return rebuild_index(self)

    # -- tiers and adoption ----------------------------------------------------------------------
    def promote(self, ref: str, revision: str | None = None) -> Path:
        """Copy a cached snapshot into the RAM tier; returns its RAM view directory."""
        if self.memory is None:
            raise ConfigError("no RAM tier: set WARMSTART_MEMORY_DIR (e.g. /dev/shm/warmstart)")
        row = self.find(ref, revision, default_only=True)[0]
        return self.memory.promote(row.source, row.revision, self.index.snapshot_files(row.id))

    def adopt(self, hf_cache: str | os.PathLike | None = None, *, dry_run: bool = False) -> AdoptReport:
        """Bring models a huggingface_hub cache holds under management without copying (see ``adopt.py``)."""
        return adopt(self, hf_cache, dry_run=dry_run)

"""Derived snapshots: a conversion's output, stored once in the cache and found again by its key.

The key is ``sha256({format version, the source weight files' sha256 digests, the recipe's digest})``.
A derived snapshot is an ordinary snapshot row (so ``ls``, ``rm``, ``gc`` and eviction see it) with
``kind='derived'``, ``parent`` = the source snapshot's id (None for a local directory), ``revision`` = the
key, ``source`` = the source's name plus ``#derived`` (so ``ls``, sorted by name, shows it beside its
source), and ``meta`` = a JSON summary of the recipe. Its files are blobs; its directory is a view::

    snapshots/<scheme>/<name>-derived/<key>/model-00001-of-00002.safetensors -> ../../../blobs/sha256/..
                                             rank-00000-of-00002/model.safetensors ...

Crash safety: shards are written under ``tmp/``, published as blobs, and only then is the snapshot
recorded (one SQLite transaction). A crash before that leaves orphan blobs (``gc`` removes them), never
a half-written snapshot that a later ``load`` would trust.

>>> c = convert("hf://org/name", "recipe.yaml")     # doctest: +SKIP
>>> c.path, c.converted                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..cache import leases
from ..cache.home import Cache
from ..cache.index import IndexedFile
from ..cache.store import sha256_file
from ..cache.views import source_view
from ..config import Settings, parse_size
from ..errors import NotFoundError
from ..load.model import weight_files
from ..weights import leased_weights, local_path, pull_weights
from .engine import execute, rank_dir, scratch_dir, source_table
from .plan import make_plan
from .recipe import Recipe

__all__ = ["FORMAT_VERSION", "Converted", "convert", "derived_key"]

log = logging.getLogger(__name__)

#: bump when the output layout changes: old derived snapshots are then simply not found again
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Converted:
    """A derived snapshot: its directory, key, files, ranks, and whether this call converted."""

    path: Path
    key: str
    source: str
    world_size: int
    files: tuple[IndexedFile, ...]
    converted: bool
    seconds: float

    def weight_paths(self, rank: int | None = None) -> list[Path]:
        """The weight files to load: all (unsplit) or only ``rank``'s (split)."""
        if self.world_size > 1:
            if rank is None:
                raise ValueError(f"this model is split over {self.world_size} ranks; pass rank= and world_size=")
            if not 0 <= rank < self.world_size:
                raise ValueError(f"rank={rank} is out of range for world_size={self.world_size}")
            return weight_files(self.path / rank_dir(rank, self.world_size))
        return weight_files(self.path)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict:
        return {"path": str(self.path), "key": self.key, "source": self.source, "world_size": self.world_size,
                "files": [{"path": f.path, "sha256": f.digest, "size": f.size} for f in self.files],
                "bytes": self.size, "converted": self.converted, "seconds": round(self.seconds, 4)}


@dataclasses.dataclass(frozen=True)
class _Source:
    paths: list[Path]
    digests: list[str]
    label: str
    parent: int | None


def _digest_of(cache: Cache, path: Path) -> str:
    """A weight file's sha256: free for cache blobs (their name), memoised by stat for other files."""
    real = Path(os.path.realpath(path))
    if real.parent.parent == cache.layout.blobs.resolve():
        return real.name
    st = real.stat()
    memo = f"stat:{real}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    digest = cache.index.digest_for_key(memo)
    if digest is None:
        digest = sha256_file(real).hexdigest()
        cache.index.set_key(memo, digest, st.st_size)
    return digest


def _resolve(src: Any, cache: Cache, settings: Settings) -> _Source:
    p = local_path(src)
    if p is not None:
        p = p.resolve()
        if not p.exists():
            raise NotFoundError(f"{p}: no such file or directory")
        paths = [p] if p.is_file() else weight_files(p)
        return _Source(paths, [_digest_of(cache, x) for x in paths], f"file://{p}", None)
    snap = pull_weights(str(src), settings)
    paths = leased_weights(snap, settings, "disk")
    source, _, rev = snap.ref.rpartition("@")
    row = cache.snapshot(source, rev)
    return _Source(paths, [_digest_of(cache, x) for x in paths], source, row.id if row else None)


def derived_key(digests: list[str], recipe: Recipe) -> str:
    """The cache key of converting files with ``digests`` (in order) by ``recipe``."""
    text = json.dumps({"format": FORMAT_VERSION, "sources": digests, "recipe": recipe.digest()},
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _lookup(cache: Cache, key: str) -> tuple[Any, list[IndexedFile]] | None:
    row = cache.index.find_derived(key)
    if row is None:
        return None
    files = cache.index.snapshot_files(row.id)
    if not files or not cache.complete(files):
        log.warning("derived snapshot %s… is incomplete (blobs removed); converting again", key[:12])
        return None
    return row, files


@contextlib.contextmanager
def _single_flight(cache: Cache, key: str):
    """One conversion per key at a time across processes (correctness does not depend on it)."""
    lock = cache.layout.lock(f"convert-{key}")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _found(cache: Cache, key: str, row: Any, files: list[IndexedFile], t0: float) -> Converted:
    cache.index.touch(row.id)
    leases.hold(cache.layout, f"{row.source}@{key}", [f.digest for f in files])
    meta = json.loads(row.meta or "{}")
    view = source_view(cache.layout, row.source, key, files)
    return Converted(view, key, row.source, int(meta.get("world_size", 1)), tuple(files), False,
                     time.perf_counter() - t0)


def convert(src: Any, recipe: Any, *, world_size: int | None = None, shard_size: int | str | None = None,
            settings: Settings | None = None, force: bool = False) -> Converted:
    """Convert ``src`` (a ref, directory or file) by ``recipe`` once; later calls find the stored result.

    >>> c = convert("/models/llama", {"steps": [{"cast": {"dtype": "float16"}}]})   # doctest: +SKIP
    >>> c.converted, c.weight_paths()[:1]                                          # doctest: +SKIP
    """
    t0 = time.perf_counter()
    settings = settings or Settings.from_env()
    r = Recipe.load(recipe).with_world_size(world_size)
    if shard_size is not None:
        r = dataclasses.replace(r, shard_size=parse_size(shard_size) or r.shard_size)
    cache = Cache.from_settings(settings)
    source = _resolve(src, cache, settings)
    key = derived_key(source.digests, r)
    if not force and (hit := _lookup(cache, key)):
        return _found(cache, key, *hit, t0)
    plan = make_plan(r, source_table(source.paths))  # every recipe error surfaces here, before writing
    with _single_flight(cache, key):
        if not force and (hit := _lookup(cache, key)):
            return _found(cache, key, *hit, t0)
        need = sum(node.nbytes * (plan.world_size if not node.sharded else 1) for _, node in plan.outputs)
        cache.ensure_room(need)
        scratch = scratch_dir(cache.layout.tmp)
        try:
            outs = execute(plan, source.paths, scratch, shard_size=r.shard_size,
                           metadata={"warmstart_key": key, "warmstart_recipe": r.digest()})
            label = f"{source.label}#derived"
            leases.hold(cache.layout, f"{label}@{key}", [o.digest for o in outs])  # gc must not take them
            for o in outs:
                cache.store.publish(o.tmp, o.digest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        files = [IndexedFile(o.path, o.digest, o.size) for o in outs]
        meta = {"format": FORMAT_VERSION, "recipe": r.to_json(), "recipe_digest": r.digest(),
                "source": source.label, "source_digests": source.digests, "world_size": plan.world_size,
                "name": r.name}
        sid = cache.index.add_snapshot(label, key, files, kind="derived", parent=source.parent,
                                       meta=json.dumps(meta, default=str))
        log.info("converted %s by recipe %s… into %d files (snapshot %d)", source.label, r.digest()[:12],
                 len(files), sid)
    view = source_view(cache.layout, label, key, files)
    return Converted(view, key, label, plan.world_size, tuple(files), True, time.perf_counter() - t0)

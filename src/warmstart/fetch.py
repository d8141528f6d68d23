"""Pull: compose a source, the transfer engine and the cache.

The warm paths come first and touch nothing heavy: a commit that is cached returns without any
request; a branch costs one metadata request; offline (or with the origin unreachable) the cache
answers alone, with a one-line notice.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time
from pathlib import Path

from .cache.home import DISK_RESERVE, Cache
from .cache.index import IndexedFile
from .cache.views import hub_snapshot_dir, hub_view, plain_view, source_view, view_is_complete
from .config import Settings
from .errors import NotFoundError, OfflineError, ReadOnlyCacheError
from .refs import Ref, default_revision
from .snapshot import Snapshot, SnapshotFile

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class PullOptions:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    to: Path | None = None
    link: str = "symlink"
    progress: object | None = None
    in_place: bool = False  # local sources: index the files where they are instead of importing them


def _selected(path: str, opts: PullOptions) -> bool:
    if opts.include and not any(fnmatch.fnmatchcase(path, g) for g in opts.include):
        return False
    return not any(fnmatch.fnmatchcase(path, g) for g in opts.exclude)


def _key(ref: Ref) -> str:
    return str(ref.with_revision(None))


def _finish(cache: Cache, ref: Ref, revision: str, files: list[IndexedFile], opts: PullOptions,
            t0: float, downloaded: int = 0, refs: dict[str, str] | None = None,
            reused: int | None = None) -> Snapshot:
    files = [f for f in files if _selected(f.path, opts)]
    if ref.scheme == "hf":
        path = hub_snapshot_dir(cache.layout, ref.repo_id, revision)
        if refs or not view_is_complete(path, files, cache.layout):  # complete, and every link right
            path = hub_view(cache.layout, ref.repo_id, revision, files, refs)
    else:
        path = source_view(cache.layout, _key(ref), revision, files)
    if opts.to is not None:
        plain_view(cache.layout, opts.to, files, mode=opts.link)
    snap_files = tuple(SnapshotFile(f.path, f.digest, f.size, cache.layout.blob(f.digest)) for f in files)
    total = sum(f.size for f in files)
    return Snapshot(
        ref=str(ref.with_revision(revision)), revision=revision, path=Path(opts.to or path),
        files=snap_files, downloaded=downloaded,
        from_cache=max(0, total - downloaded) if reused is None else min(reused, total),
        seconds=time.monotonic() - t0, cache_path=path,
    )


def from_cache(cache: Cache, ref: Ref, opts: PullOptions, t0: float, *, notice: str | None) -> Snapshot | None:
    """Serve ``ref`` from the cache alone, or None if it is not (completely) there."""
    key = _key(ref)
    wanted = ref.revision or default_revision(ref.scheme)
    revision = cache.index.get_ref(key, wanted) or wanted
    row = cache.snapshot(key, revision)
    if row is None:
        return None
    files = cache.index.snapshot_files(row.id)
    chosen = [f for f in files if _selected(f.path, opts)]
    if (opts.include and not chosen) or not cache.complete(chosen):
        return None
    if notice:
        log.warning("%s; using the cached %s at %s", notice, key, revision[:12])
    cache.index.touch(row.id)
    return _finish(cache, ref, revision, files, opts, t0)


def pull(ref: Ref, settings: Settings, opts: PullOptions, *, cache: Cache | None = None) -> Snapshot:
    """See :func:`warmstart.pull`."""
    t0 = time.monotonic()
    cache = cache or Cache(settings.home, max_size=settings.max_size, shared_dir=settings.shared_dir)
    if ref.pinned:  # an immutable revision that is cached needs no request at all
        snap = from_cache(cache, ref, opts, t0, notice=None)
        if snap is not None:
            return snap
    if settings.offline:
        snap = from_cache(cache, ref, opts, t0, notice="offline mode")
        if snap is None:
            raise OfflineError(f"{ref} is not in the cache and offline mode is on (WARMSTART_OFFLINE or "
                               "HF_HUB_OFFLINE); unset it or pull while online")
        return snap

    from .sources.base import OriginUnreachable
    from .sources.registry import source_for

    source = source_for(ref, settings)
    try:
        listing = source.resolve(ref)
    except OriginUnreachable as exc:
        snap = from_cache(cache, ref, opts, t0, notice=f"{exc}")
        if snap is None:
            hint = "check the network or HF_ENDPOINT" if ref.scheme == "hf" else "check the network"
            raise OfflineError(f"{exc}, and {ref} is not in the cache; {hint}") from None
        return snap
    return _download(cache, ref, listing, settings, opts, t0, source)


def _download(cache: Cache, ref: Ref, listing, settings: Settings, opts: PullOptions, t0: float,
              source=None) -> Snapshot:
    if cache.read_only:  # serve the resolved revision if it is cached; nothing new can be stored
        snap = from_cache(cache, ref.with_revision(listing.revision), opts, t0, notice=None)
        if snap is None:
            raise ReadOnlyCacheError(f"{ref} at {listing.revision[:12]} is not in the cache, and the cache home "
                                     f"{cache.layout.home} is read-only; set WARMSTART_HOME to a writable "
                                     "directory to pull it")
        return snap
    chosen = [f for f in listing.files if _selected(f.path, opts)]
    if opts.include and not chosen:
        raise NotFoundError(f"{ref}: no file matches --include {' '.join(opts.include)}; "
                            f"the model has: {', '.join(f.path for f in listing.files[:8])}")
    # A source may put the files into the cache itself (local paths, OCI tar layers): (entries, bytes
    # read[, bytes served from the cache] — a tar layer's download unpacks to more than it read).
    made = source.materialize(listing, chosen, cache, settings, opts) if source is not None else None
    reused = None
    if made is not None:
        entries, downloaded = {e.path: e for e in made[0]}, made[1]
        reused = made[2] if len(made) > 2 else None
        files = list(entries.values())
        _record(cache, _key(ref), listing.revision, entries)
    else:
        cache.fill_from_shared(chosen)  # the shared tier before the origin (cache/tiers/shared.py)
        entries, downloaded, held = _fetch(cache, ref, chosen, settings, opts)
        try:  # the lease is held until the snapshot is recorded
            files = [entries[f.path] for f in chosen]
            _record(cache, _key(ref), listing.revision, entries)
        finally:
            held.release()
    refs = {}
    if ref.revision != listing.revision:
        name = ref.revision or default_revision(ref.scheme)
        cache.index.set_ref(_key(ref), name, listing.revision)
        refs[name] = listing.revision
    return _finish(cache, ref, listing.revision, files, opts, t0, downloaded, refs, reused)


def _record(cache: Cache, key: str, revision: str, entries: dict[str, IndexedFile]) -> None:
    """Record the union of what this revision has in the cache (include/exclude pull parts of it)."""
    row = cache.snapshot(key, revision)
    known = {f.path: f for f in cache.index.snapshot_files(row.id)} if row else {}
    known.update(entries)
    cache.index.add_snapshot(key, revision, known.values())


def _fetch(cache: Cache, ref: Ref, chosen: list, settings: Settings, opts: PullOptions):
    """Bring every chosen file into the blob store: from the cache when there, else through the
    transfer engine. Returns ``({path: entry}, bytes downloaded, lease)``: the lease keeps the blobs
    this pull reuses from a concurrent gc until the caller has recorded the snapshot."""
    from .cache.leases import acquire as lease
    from .transfer import FileJob, Transfer

    entries: dict[str, IndexedFile] = {}
    jobs: list[FileJob] = []
    by_key: dict[str, list] = {}
    for f in chosen:
        digest = f.sha256 or cache.digest_for_key(f.key)
        if digest and cache.store.has(digest, f.size):
            entries[f.path] = IndexedFile(f.path, digest, cache.store.path(digest).stat().st_size, f.etag,
                                        f.git_oid)
            continue
        if f.key in by_key:  # the same content twice in one model: fetch it once
            by_key[f.key].append(f)
            continue
        by_key[f.key] = [f]
        jobs.append(FileJob(f.path, f.url, f.key, f.size, f.sha256, dict(f.headers), f.ranges, f.probe,
                            f.git_oid))
    held = lease(cache.layout, [e.digest for e in entries.values()], snapshots=[str(ref)])
    if not jobs:
        return entries, 0, held

    def on_file(result) -> None:
        digest = result.digest or (result.job.sha256 or "")
        if result.path is not None:
            cache.store.publish(result.path, digest)
            if cache.shared is not None:  # publish to the shared tier (cache/tiers/shared.py)
                published = cache.shared.publish(cache.store.path(digest), digest)
                if published and not result.job.sha256 and result.job.git_oid:  # readers check the git oid
                    cache.shared.publish_key(result.job.key, digest)
            cache.index.add_blob(digest, result.size)
            if not result.job.sha256:
                cache.index.set_key(result.job.key, digest, result.size)
        elif not digest:  # another process fetched it; it recorded the name
            digest = cache.digest_for_key(result.job.key) or ""
        if not cache.store.has(digest):
            raise NotFoundError(f"{result.job.name}: another process's download vanished; pull again")
        for f in by_key[result.job.key]:
            entries[f.path] = IndexedFile(f.path, digest, result.size or f.size or 0, f.etag, f.git_oid)

    def is_done(job) -> bool:
        digest = job.sha256 or cache.digest_for_key(job.key)
        return bool(digest) and cache.store.has(digest, job.size)

    try:
        known = sum(j.size or 0 for j in jobs)
        cache.ensure_room(known, protect={e.digest for e in entries.values()})
        # files of unknown size may take what is left of the budget, and never the last of the disk
        room = (None if cache.max_size is None
                else max(0, cache.max_size - cache.index.total_blob_bytes() - known))
        engine = Transfer(
            cache.layout.tmp, cache.layout.locks,
            min_connections=settings.min_connections, max_connections=settings.max_connections,
            chunk_size=settings.chunk_size, progress=opts.progress, is_done=is_done,
            timeout=settings.stall_timeout, min_rate=settings.min_rate,
            connect_timeout=settings.connect_timeout, stream_room=room, disk_reserve=DISK_RESERVE,
        )
        stats = engine.run(jobs, on_file)
    except BaseException:
        held.release()
        raise
    log.info("%s: %d files, %.1f MB in %.2fs over up to %d connections", ref, stats.files,
             stats.downloaded / 1e6, stats.seconds, stats.connections)
    return entries, stats.downloaded, held

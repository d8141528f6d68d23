"""The pull pipeline: the one path by which any source's files reach the cache.

(1) A cached pinned revision, or offline mode, is answered from the cache; (2) the source lists the
files (an unreachable origin falls back to the cache); (3) blobs the cache may hold are leased, then
checked present; (4) the shared tier is asked for the rest; (5) files listed without a size are
probed, all at once, then the cache makes room (never evicting this pull's blobs; dropping RAM copies
of what it evicts); (6) the engine fetches and verifies remote files, :mod:`warmstart.ingest` imports
local ones; each is published (blob store, shared tier), indexed, leased; (7) blobs a source unpacks
(OCI tar layers) are measured, room made, their files streamed into capped temporary files and
published; (8) every blob is re-checked (one removed before its lease is fetched again), the snapshot
recorded, the leases released; (9) the views are made.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import ingest
from .cache import leases
from .cache.home import DISK_RESERVE, Cache
from .cache.index import IndexedFile
from .cache.views import hub_snapshot_dir, hub_view, plain_view, source_view, view_is_complete
from .config import Settings
from .errors import NotFoundError, OfflineError, ReadOnlyCacheError
from .refs import Ref
from .snapshot import Snapshot, SnapshotFile

if TYPE_CHECKING:  # the engine and the sources are imported when a pull needs the origin
    from .sources.base import Listing, RemoteFile, Source, Unpacker

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
    return ref.key


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
    return Snapshot(ref=str(ref.with_revision(revision)), revision=revision, path=Path(opts.to or path),
                    files=snap_files, downloaded=downloaded, seconds=time.monotonic() - t0, cache_path=path,
                    from_cache=max(0, total - downloaded) if reused is None else min(reused, total))


def from_cache(cache: Cache, ref: Ref, opts: PullOptions, t0: float, *, notice: str | None) -> Snapshot | None:
    """Serve ``ref`` from the cache alone, or None if it is not (completely) there."""
    key = _key(ref)
    wanted = ref.revision or ref.default_revision
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
    cache = cache or Cache.from_settings(settings)  # with the RAM tier: evicting drops RAM copies too
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


def _download(cache: Cache, ref: Ref, listing: Listing, settings: Settings, opts: PullOptions, t0: float,
              source: Source) -> Snapshot:
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
    unpacker = source.unpacker(listing)
    packed = [f for f in chosen if unpacker is not None and unpacker.unpacks(f)]
    reused: int | None = None
    done = _unpacked_before(cache, _key(ref), listing.revision, chosen, packed) if packed else None
    if done is not None:  # unpacked by an earlier pull, every blob still here: nothing to fetch or unpack
        files, downloaded, reused = done, 0, sum(f.size for f in done)
        _record(cache, _key(ref), listing.revision, {f.path: f for f in files})
    else:
        run = _Pull(cache, ref, settings, opts)
        try:  # the leases are held until the snapshot is recorded
            _bring(run, chosen)
            files = [run.entries[f.path] for f in chosen if f not in packed]
            if packed:
                unpacked = _unpack(run, unpacker, packed)
                reused = (sum(e.size for e in files if e.path not in run.fetched)
                          + sum(e.size for f, es in unpacked if f.path not in run.fetched for e in es))
                files += [e for _, es in unpacked for e in es]
            _record(cache, _key(ref), listing.revision, {f.path: f for f in files})
        finally:
            run.release()
        if packed:  # the unpacked files are recorded; the blobs they came from are not files of the snapshot
            ingest.drop(cache, {run.entries[f.path].digest for f in packed})
        downloaded = run.downloaded
    refs = {}
    if ref.revision != listing.revision:
        name = ref.revision or ref.default_revision
        cache.index.set_ref(_key(ref), name, listing.revision)
        refs[name] = listing.revision
    return _finish(cache, ref, listing.revision, files, opts, t0, downloaded, refs, reused)


def _record(cache: Cache, key: str, revision: str, entries: dict[str, IndexedFile]) -> None:
    """Record the union of what this revision has in the cache (include/exclude pull parts of it)."""
    row = cache.snapshot(key, revision)
    known = {f.path: f for f in cache.index.snapshot_files(row.id)} if row else {}
    known.update(entries)
    cache.index.add_snapshot(key, revision, known.values())


def _unpacked_before(cache: Cache, key: str, revision: str, chosen: list[RemoteFile],
                     packed: list[RemoteFile]) -> list[IndexedFile] | None:
    """The recorded files of ``revision`` when they are all in the cache and hold every chosen file
    that is not unpacked (the snapshot does not say which blob a file was unpacked from)."""
    row = cache.snapshot(key, revision)
    known = cache.index.snapshot_files(row.id) if row is not None else []
    paths = {f.path for f in known}
    if known and all(f.path in paths for f in chosen if f not in packed) and cache.complete(known):
        return known
    return None


def _unpack(run: _Pull, unpacker: Unpacker, packed: list[RemoteFile]) -> list[tuple[RemoteFile, list[IndexedFile]]]:
    """Turn each fetched, verified blob of ``packed`` into files, one blob at a time in listing order:
    the hook counts what it unpacks to (capped by the room the cache has), the cache makes room for
    that count, the hook streams the files into a :class:`~warmstart.ingest.Sink`, and only when the
    whole blob is good are they published. A blob the hook refuses is removed again, and so is all
    that was written for it."""
    cache = run.cache
    layers = {run.entries[f.path].digest for f in packed}

    def refused() -> None:
        run.release()
        ingest.drop(cache, layers)

    out = []
    for f in packed:
        blob = cache.store.path(run.entries[f.path].digest)
        try:
            allowed = unpacker.measure(f, blob, ingest.room(cache))
        except BaseException:
            refused()
            raise
        cache.ensure_room(allowed, protect=run.digests())
        sink = ingest.Sink(cache.layout.tmp, unpacker.label(f), allowed)
        try:
            unpacker.unpack(f, blob, sink)
        except BaseException:
            sink.discard()
            refused()
            raise
        entries = []
        try:
            for name, tmp, digest, size in sink.written:
                run.publish(None if cache.store.has(digest) else tmp, digest, size)
                entries.append(IndexedFile(name, digest, size, digest))
        finally:
            sink.discard()
        out.append((f, entries))
        run.unpacked.update(e.digest for e in entries)
        run.lease()
    return out


class _Pull:
    """One pull's state: the entries it has (``{path: IndexedFile}``), the leases on their blobs (held
    until the snapshot is recorded), and what came from the origin now."""

    def __init__(self, cache: Cache, ref: Ref, settings: Settings, opts: PullOptions) -> None:
        self.cache, self.ref, self.settings, self.opts = cache, ref, settings, opts
        self.entries: dict[str, IndexedFile] = {}
        self.fetched: set[str] = set()  # paths whose bytes were read from the origin by this pull
        self.unpacked: set[str] = set()  # digests of the files unpacked so far
        self.downloaded = 0
        self.probed: dict = {}  # {path: Probed} of files the listing gives no size for
        self._leases: list[leases.Lease] = []
        self._leased: set[str] = set()

    def digests(self) -> set[str]:
        return {e.digest for e in self.entries.values()} | self.unpacked

    def lease(self, more: set[str] = frozenset()) -> None:
        """Lease every blob this pull has (and ``more``: blobs it may reuse) that no lease of it holds yet."""
        new = (self.digests() | more) - self._leased
        if new:
            self._leases.append(leases.acquire(self.cache.layout, new, snapshots=[str(self.ref)]))
            self._leased |= new

    def release(self) -> None:
        for held in self._leases:
            held.release()
        self._leases.clear()
        self._leased.clear()

    def publish(self, tmp: Path | None, digest: str, size: int, *, key: str | None = None,
                git_oid: str | None = None, shared: bool = True) -> None:
        """Put a verified temporary file in the blob store (and the shared tier) and index it; ``key``:
        the transfer key of a file the origin names without a sha256."""
        cache = self.cache
        if tmp is not None:
            cache.store.publish(tmp, digest)
            published = shared and cache.shared is not None and cache.shared.publish(cache.store.path(digest), digest)
            if published and key and git_oid:
                cache.shared.publish_key(key, digest)  # readers check the git blob id
        cache.index.add_blob(digest, size)
        if key:
            cache.index.set_key(key, digest, size)


_REFETCHES = 3  # times a pull fetches again blobs an rm/gc removed while it ran


def _bring(run: _Pull, chosen: list[RemoteFile]) -> None:
    """:func:`_bring_once`, then again for any blob gone before the snapshot is recorded (an ``rm``/``gc``
    that checked the leases just before this pull took them)."""
    _bring_once(run, chosen)
    for _ in range(_REFETCHES):
        gone = [f for f in chosen if f.path in run.entries and not run.cache.store.has(run.entries[f.path].digest)]
        if not gone:
            return
        log.info("%d blob(s) of %s were removed while it was pulled; fetching them again", len(gone), run.ref)
        for f in gone:
            del run.entries[f.path]
        _bring_once(run, gone)
    raise NotFoundError(f"{run.ref}: its blobs keep being removed while it is pulled (a concurrent `warmstart rm` "
                        "or `gc`?); pull again when they have finished")


def _bring_once(run: _Pull, chosen: list[RemoteFile]) -> None:
    """Make every chosen file's blob present: the cache (leased before it is found present), the shared
    tier, then the origin (remote files) or the filesystem (local files)."""
    cache, opts = run.cache, run.opts

    def missing(files: list[RemoteFile]) -> list[RemoteFile]:
        run.lease({d for f in files if (d := ingest.known_digest(cache, f, in_place=opts.in_place))})
        left = []
        for f in files:
            entry = ingest.present(cache, f, in_place=opts.in_place)
            if entry is None:
                left.append(f)
            else:
                run.entries[f.path] = entry
        run.lease()
        return left

    todo = missing(chosen)
    remote = [f for f in todo if not ingest.is_local(f)]
    if cache.shared is not None and remote:  # the shared tier before the origin (cache/tiers/shared.py)
        cache.fill_from_shared(remote)  # the lease keeps what this pull has
        todo = missing(todo)
        remote = [f for f in todo if not ingest.is_local(f)]
    local = [f for f in todo if ingest.is_local(f)]
    if any(f.size is None for f in remote):  # sizes the listing lacks: the budget is checked before bytes move
        from .transfer import probe_unsized

        run.probed = probe_unsized(remote, timeout=run.settings.stall_timeout,
                                   connect_timeout=run.settings.connect_timeout)
    sizes = {path: p.size or 0 for path, p in run.probed.items()}
    need = sum(f.size or sizes.get(f.path, 0) for f in remote) + (0 if opts.in_place else sum(f.size or 0 for f in local))
    cache.ensure_room(need, protect=run.digests())
    if remote:
        _transfer(run, remote)
    if local:
        _import(run, local)
    run.lease()


def _transfer(run: _Pull, files: list[RemoteFile]) -> None:
    """Fetch ``files`` through the transfer engine with the settings' parameters (and what probing
    learnt), publishing each."""
    from .transfer import FileJob, Transfer

    cache, settings = run.cache, run.settings
    jobs: list[FileJob] = []
    by_key: dict[str, list[RemoteFile]] = {}
    for f in files:
        if f.key in by_key:  # the same content twice in one model: fetch it once
            by_key[f.key].append(f)
            continue
        by_key[f.key] = [f]
        p = run.probed.get(f.path)  # probed: size, Range support and validator known, no HEAD in the engine
        jobs.append(FileJob(f.path, f.url, f.key, p.size if p else f.size, f.sha256, dict(f.headers),
                            p.ranges if p else f.ranges, f.probe and not p, f.git_oid, f.etag or (p and p.etag)))

    def on_file(result) -> None:
        job = result.job
        digest = result.digest or (job.sha256 or "")
        if result.path is not None:
            run.publish(result.path, digest, result.size, key=None if job.sha256 else job.key,
                        git_oid=job.git_oid)
        elif not digest:  # another process fetched it; it recorded the name
            digest = cache.digest_for_key(job.key) or ""
        if not cache.store.has(digest):
            raise NotFoundError(f"{job.name}: another process's download vanished; pull again")
        for f in by_key[job.key]:
            run.entries[f.path] = IndexedFile(f.path, digest, result.size or f.size or 0, f.etag, f.git_oid)
            if result.path is not None:
                run.fetched.add(f.path)

    def is_done(job) -> bool:
        digest = job.sha256 or cache.digest_for_key(job.key)
        return bool(digest) and cache.store.has(digest, job.size)

    known = sum(j.size or 0 for j in jobs)
    # files of unknown size may take what is left of the budget, and never the last of the disk
    room = None if cache.max_size is None else max(0, cache.max_size - cache.index.total_blob_bytes() - known)
    engine = Transfer(cache.layout.tmp, cache.layout.locks, min_connections=settings.min_connections,
                      max_connections=settings.max_connections, chunk_size=settings.chunk_size,
                      progress=run.opts.progress, is_done=is_done, timeout=settings.stall_timeout,
                      min_rate=settings.min_rate, connect_timeout=settings.connect_timeout, stream_room=room,
                      disk_reserve=DISK_RESERVE)
    stats = engine.run(jobs, on_file)
    run.downloaded += stats.downloaded
    log.info("%s: %d files, %.1f MB in %.2fs over up to %d connections", run.ref, stats.files,
             stats.downloaded / 1e6, stats.seconds, stats.connections)


def _import(run: _Pull, files: list[RemoteFile]) -> None:
    """Import local files (or index them in place, ``--in-place``), publishing each."""
    lock = threading.Lock()

    def publish(f: RemoteFile, tmp: Path | None, digest: str) -> None:
        run.publish(tmp, digest, f.size or 0, key=ingest.local_key(f, in_place=run.opts.in_place), shared=not run.opts.in_place)
        with lock:
            run.entries[f.path] = IndexedFile(f.path, digest, f.size or 0, f.etag)
            run.fetched.add(f.path)

    ingest.import_all(run.cache, files, in_place=run.opts.in_place, progress=run.opts.progress, publish=publish)
    if not run.opts.in_place:
        run.downloaded += sum(f.size or 0 for f in files)

"""The parallel ranged-read engine.

One pool of connections is shared by every file of a pull. Each worker thread owns one keep-alive
connection per host and repeatedly takes the next task from a shared scheduler:

* ``resolve``: for files whose size or Range support is unknown, a HEAD that follows redirects;
  files the listing describes fully (Hub LFS files, S3 objects) skip it, and their first ranged GET
  follows the Hub's 302 to its CDN instead, so no round trip is spent before the first byte;
* ``chunk``: a ranged GET whose body is ``readinto`` a reusable buffer and ``pwrite`` straight into a
  preallocated temporary file, at its offset;
* ``stream``: one GET for small files, unknown sizes and origins without ranges.

Chunks are handed out file by file, ``chunk_size`` each (16 MiB: few requests, each costing a round
trip and origin work) until the last round, which is split evenly across the workers so they end
together; an idle worker near the end splits the largest chunk still in flight, when what is left of
it would take longer than a new request's first byte.

CDNs cap each connection, so the number of connections adapts: the engine starts with
``min_connections`` and adds half as many again while the aggregate rate still grows by ≥15 %, up to
``max_connections`` (defaults 16 and 64; ``WARMSTART_MIN_CONNECTIONS``/``WARMSTART_MAX_CONNECTIONS``). Each rate is measured over 0.25 s once
every connection of the step receives bytes, so an origin slow to answer the first requests of a
step does not pass for a link that more connections would fill.

sha256 is computed while downloading: as the contiguous prefix of a file grows, a hashing thread reads
it back (from the page cache) and feeds the hash, so verification is done moments after the last
byte arrives. A file whose digest does not match is discarded and downloaded once more; a second
mismatch fails with ``IntegrityError``. Nothing unverified is ever handed to ``on_file``.

Partial files survive ``kill -9``: ``tmp/<key>.part`` holds the bytes, ``tmp/<key>.part.json`` the
ranges known to be written (saved every 0.25 s, in-flight progress included). A later run resumes
from them. Across processes, one ``flock`` per file makes the download single-flight: a process that
finds the lock held waits for the other and then takes the published blob (or resumes if the other
died).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from . import _http
from ._io import start_writeback
from .errors import CacheFullError, IntegrityError, NotFoundError, TransferError
from .partial import PartialFile as _File
from .partial import git_hasher, merge, preallocate

log = logging.getLogger(__name__)

MiB = 2**20
BUFFER = 1 * MiB
MIN_CHUNK = 1 * MiB
STREAM_BELOW = 4 * MiB  # files smaller than this go in one request
SAVE_EVERY = 0.25


@dataclasses.dataclass
class FileJob:
    """One file to fetch. ``key`` names its partial and lock files (filesystem-safe, stable across
    runs); ``sha256`` is the expected digest when the origin gives one."""

    name: str
    url: str
    key: str
    size: int | None
    sha256: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    ranges: bool = True
    probe: bool = True  # False: size and Range support are known, skip the HEAD (presigned S3 GET URLs)
    git_oid: str | None = None  # the git blob id the origin gives for files without a sha256 (Hub, non-LFS)


@dataclasses.dataclass
class FileResult:
    job: FileJob
    digest: str
    size: int
    path: Path | None  # the verified temporary file to publish; None when another process did
    downloaded: int = 0
    resumed: int = 0


@dataclasses.dataclass
class Stats:
    downloaded: int = 0
    resumed: int = 0
    files: int = 0
    seconds: float = 0.0
    connections: int = 0


class Progress(Protocol):
    def start(self, total_bytes: int, total_files: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self) -> None: ...


class _NoProgress:
    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self) -> None:
        pass


class Transfer:
    """Fetch many files over one adaptive pool of connections. See the module docstring.

    >>> t = Transfer(Path("/tmp/ws/tmp"), Path("/tmp/ws/locks"))                     # doctest: +SKIP
    >>> stats = t.run([FileJob("a.bin", url, "k1", 123, sha)], on_file=publish)        # doctest: +SKIP
    """

    def __init__(
        self,
        tmp_dir: Path,
        lock_dir: Path,
        *,
        min_connections: int = 16,
        max_connections: int = 64,
        chunk_size: int = 16 * MiB,
        retries: int = 6,
        timeout: float = 30.0,
        progress: Progress | None = None,
        is_done: Callable[[FileJob], bool] | None = None,
        on_range: Callable[[FileJob, int, int], None] | None = None,
    ) -> None:
        self.tmp_dir, self.lock_dir = Path(tmp_dir), Path(lock_dir)
        self.min_connections = max(1, min(min_connections, max_connections))
        self.max_connections = max(1, max_connections)
        self.chunk_size = max(MIN_CHUNK, chunk_size)
        self.retries = retries
        self.timeout = timeout
        self.progress = progress or _NoProgress()
        self.is_done = is_done or (lambda job: False)
        self.on_range = on_range
        self._cv = threading.Condition()
        self._files: list[_File] = []
        self._waiting = 0
        self._error: BaseException | None = None
        self._stop = False
        self._stop_evt = threading.Event()
        self._clients: list[_http.Client] = []
        self._target = 0
        self._workers: list[threading.Thread] = []
        self._receiving: set[int] = set()  # workers that have had a response body (thread idents)
        # smoothed over completed chunks: seconds from request to first byte, and bytes/s of one body
        self._ttfb_s = 0.05
        self._conn_bps: float | None = None
        self._net_bytes = 0
        self._hash_pool: ThreadPoolExecutor | None = None
        self._on_file: Callable[[FileResult], None] = lambda r: None
        self.stats = Stats()

    # -- public ----------------------------------------------------------------------------
    def run(self, jobs: list[FileJob], on_file: Callable[[FileResult], None]) -> Stats:
        """Fetch ``jobs``; ``on_file`` receives each verified file (from a worker thread) and must
        move it away (publish) before returning. Raises the first permanent error."""
        t0 = time.monotonic()
        self._on_file = on_file
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.progress.start(sum(j.size or 0 for j in jobs), len(jobs))
        self._hash_pool = ThreadPoolExecutor(2, thread_name_prefix="warmstart-hash")
        try:
            for job in jobs:
                self._admit(job)
            self._supervise()
        except BaseException:
            self._halt()
            raise
        finally:
            self._halt()
            for w in self._workers:
                w.join()  # before closing files: a live worker must never pwrite to a reused fd
            self._hash_pool.shutdown(wait=True)
            self._save_all()
            for f in self._files:
                self._release(f)
        self.stats.seconds = time.monotonic() - t0
        return self.stats

    # -- admission and single flight -------------------------------------------------------
    def _admit(self, job: FileJob) -> None:
        f = _File(job, self.tmp_dir / f"{job.key}.part")
        lock_path = self.lock_dir / f"{job.key}.lock"
        f.lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(f.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is downloading it; waiting", job.name)
            with self._cv:
                self._waiting += 1
            threading.Thread(target=self._wait_other, args=(f,), daemon=True).start()
            return
        except OSError as exc:  # a filesystem without working locks: correctness does not need them
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("locks do not work under %s (%s); concurrent pulls may download twice",
                        self.lock_dir, exc)
        if self.is_done(job):  # another process finished it after our listing: nothing to fetch
            self._take_published(f)
            return
        self._activate(f)

    def _wait_other(self, f: _File) -> None:
        try:
            fcntl.flock(f.lock_fd, fcntl.LOCK_EX)
            if self.is_done(f.job):
                self._take_published(f)
                return
            self._activate(f)
        except BaseException as exc:
            self._fail(exc)
        finally:
            with self._cv:
                self._waiting -= 1
                self._cv.notify_all()

    def _take_published(self, f: _File) -> None:
        """The file is already in the cache (another process published it): report it, fetch nothing."""
        self._release(f)
        self.progress.advance(f.job.size or 0)
        self.progress.file_done()
        with self._cv:
            self.stats.files += 1
            f.finished = True
            self._files.append(f)
        self._on_file(FileResult(f.job, f.job.sha256 or "", f.job.size or 0, None))

    def _release(self, f: _File) -> None:
        if f.fd >= 0:
            os.close(f.fd)
            f.fd = -1
        if f.lock_fd >= 0:
            os.close(f.lock_fd)  # closing drops the flock
            f.lock_fd = -1

    def _activate(self, f: _File) -> None:
        job = f.job
        if job.size is not None and job.size > 0 and job.ranges and job.size > STREAM_BELOW:
            self._load_partial(f)
            f.resolved = not job.probe
        else:
            f.stream = True
            f.resolved = True
        with self._cv:
            self._files.append(f)
            self._cv.notify_all()
        if f.resolved and not f.stream and not f.pending:
            self._poke_hash(f)  # everything was already on disk

    def _load_partial(self, f: _File) -> None:
        f.open_resumable()
        if f.resumed:
            log.info("%s: resuming, %d of %d bytes already on disk", f.job.name, f.resumed, f.size)
            self.progress.advance(f.resumed)
            self.stats.resumed += f.resumed

    # -- supervision and adaptive connections ----------------------------------------------
    def _supervise(self) -> None:
        """Wait for the files while growing the pool: +50 % connections per step while the
        aggregate rate still grows by >= 15 %."""
        self._spawn(self.min_connections)
        window, settle, patience = 0.25, 0.15, 2.0
        last_change = time.monotonic()
        mark_t, mark_b = last_change, 0
        prev: tuple[int, float] | None = None  # (connections, rate) before the last step
        growing = True
        last_save = last_change
        with self._cv:
            while True:
                if self._error is not None:
                    raise self._error
                if self._all_finished():
                    return
                self._cv.wait(0.05)
                now = time.monotonic()
                if now - last_save >= SAVE_EVERY:
                    self._save_dirty()
                    last_save = now
                # measure a step only once all its connections receive (or, with a slow origin, after
                # ``patience``): their start-up would otherwise pass for growth
                ramping = len(self._receiving) < self._target and now - last_change < patience
                if not growing or now - last_change < settle or ramping:
                    mark_t, mark_b = now, self._net_bytes
                    continue
                if now - mark_t < window:
                    continue
                rate = (self._net_bytes - mark_b) / (now - mark_t)
                mark_t, mark_b = now, self._net_bytes
                if prev is not None and rate < prev[1] * 1.15:
                    growing = False  # the last step did not help: the link is full (its extra
                    # connections stay: they cost little, and cover per-request latency)
                    log.debug("link full at %d connections (%.1f MB/s)", self._target, rate / 1e6)
                    continue
                room = self.max_connections - self._target
                if room <= 0:
                    growing = False
                    continue
                if self._unassigned() < MIN_CHUNK * self._target:
                    continue
                prev = (self._target, rate)
                self._spawn(min(room, max(2, self._target // 2)))
                last_change = now

    def _spawn(self, n: int) -> None:
        log.debug("connections: %d -> %d after %.1f MB", self._target, self._target + n, self._net_bytes / 1e6)
        with self._cv:
            self._target += n
        for _ in range(n):
            w = threading.Thread(target=self._worker, name=f"warmstart-io-{len(self._workers)}", daemon=True)
            self._workers.append(w)
            w.start()
        self.stats.connections = max(self.stats.connections, self._target)

    def _all_finished(self) -> bool:
        return self._waiting == 0 and all(f.finished for f in self._files)

    def _unassigned(self) -> int:
        return sum(b - a for f in self._files for a, b in f.pending)

    def _fail(self, exc: BaseException) -> None:
        with self._cv:
            if self._error is None:
                self._error = exc
        self._halt()

    def _halt(self) -> None:
        """Stop every worker now: blocked reads are woken by shutting their sockets down."""
        with self._cv:
            self._stop = True
            self._stop_evt.set()
            clients = list(self._clients)
            self._cv.notify_all()
        for c in clients:
            c.abort()

    # -- scheduling ------------------------------------------------------------------------
    def _next_task(self) -> tuple | None:
        with self._cv:
            while True:
                if self._stop or self._error is not None:
                    return None
                for f in self._files:  # small files and redirects first: they cost a round trip each
                    if f.finished or f.resolving:
                        continue
                    if f.stream:
                        f.resolving = True
                        return ("stream", f)
                    if not f.resolved:
                        f.resolving = True
                        return ("resolve", f)
                for f in self._files:
                    if f.resolved and not f.stream and f.pending and not f.finished:
                        return self._carve(f)
                stolen = self._steal()
                if stolen:
                    return stolen
                for f in self._files:  # every byte written but nobody hashing: hand it to the hasher
                    if (f.resolved and not f.stream and not f.pending and not f.inflight
                            and not f.hash_busy and not f.finished):
                        self._poke_hash(f)
                if self._all_finished():
                    return None
                self._cv.wait(0.5)

    def _carve(self, f: _File) -> tuple:
        # Full-size chunks while more than a round of them is left (each request costs a round trip
        # and origin work); the last round is split evenly across the workers so they end together.
        left, workers = self._unassigned(), max(1, len(self._workers))
        size = self.chunk_size if left > self.chunk_size * workers else max(2 * MIN_CHUNK, left // workers)
        a, b = f.pending[0]
        end = min(b, a + size)
        if b - end < MIN_CHUNK // 2:  # don't leave a sliver behind
            end = b
        if end == b:
            f.pending.pop(0)
        else:
            f.pending[0][0] = end
        span = [a, a, end]
        f.inflight.append(span)
        return ("chunk", f, span)

    def _steal(self) -> tuple | None:
        # Splitting L bytes in flight ends them after ttfb + L/2r instead of L/r (r: one connection's
        # rate), which is sooner when L > 2 r ttfb (1 MB at 20 MB/s and 25 ms). The split point stays
        # beyond the victim's read in progress (up to BUFFER bytes from its position), or those bytes
        # would come twice; so only rests over 2 * BUFFER are split, and 4 MiB until rates are known.
        threshold = 4 * MiB if self._conn_bps is None else 2 * self._conn_bps * self._ttfb_s
        best, best_left = None, int(max(2 * BUFFER, threshold))
        for f in self._files:
            for span in f.inflight:
                left = span[2] - span[1]
                if left > best_left:
                    best, best_left = (f, span), left
        if best is None:
            return None
        f, span = best
        mid = span[1] + max(BUFFER, (best_left // 2) // 65536 * 65536)
        new = [mid, mid, span[2]]
        span[2] = mid
        f.inflight.append(new)
        return ("chunk", f, new)

    # -- workers ---------------------------------------------------------------------------
    def _worker(self) -> None:
        client = _http.Client(timeout=self.timeout)
        with self._cv:
            self._clients.append(client)
        buf = memoryview(bytearray(BUFFER))
        try:
            while (task := self._next_task()) is not None:
                kind, f = task[0], task[1]
                try:
                    if kind == "resolve":
                        self._with_retries(f, functools.partial(self._resolve, client, f))
                    elif kind == "stream":
                        self._with_retries(f, functools.partial(self._stream, client, f, buf))
                    else:
                        self._with_retries(f, functools.partial(self._chunk, client, f, task[2], buf))
                except BaseException as exc:
                    self._fail(exc)
                    return
        finally:
            client.close()

    def _with_retries(self, f: _File, fn: Callable[[], None]) -> None:
        for attempt in range(self.retries + 1):
            try:
                fn()
                return
            except _http.HTTPStatusError as exc:
                if self._stop:
                    return
                if not exc.retryable or attempt == self.retries:
                    raise self._status_error(f, exc) from None
                delay = exc.retry_after or _backoff(attempt)
                log.info("%s: %s; retrying in %.1fs", f.job.name, exc, delay)
            except (OSError, _TruncatedError) as exc:
                if self._stop:
                    return  # halted: the socket was shut down under us
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise CacheFullError(f"disk full while writing {f.part}: free space and pull again "
                                         "(the partial download is kept and will resume)") from None
                if attempt == self.retries:
                    raise TransferError(f"{f.job.name}: {exc} (after {self.retries} retries); "
                                        "check the connection and pull again to resume") from None
                delay = _backoff(attempt)
                log.info("%s: %s; retrying in %.1fs", f.job.name, exc, delay)
            if self._stop_evt.wait(delay):
                return

    def _status_error(self, f: _File, exc: _http.HTTPStatusError) -> Exception:
        if exc.status == 404:
            return NotFoundError(f"{f.job.name}: not found at the origin (HTTP 404); check the name and revision")
        if exc.status == 412:
            return IntegrityError(f"{f.job.name}: the object changed at the origin after it was listed "
                                  "(HTTP 412, ETag mismatch); nothing was published, pull again")
        if exc.status in (401, 403):
            return TransferError(f"{f.job.name}: access denied (HTTP {exc.status}); check your credentials")
        return TransferError(f"{f.job.name}: {exc}; pull again later to resume")

    def _resolve(self, client: _http.Client, f: _File) -> None:
        url, resp = client.follow("HEAD", f.job.url, f.job.headers)
        _http.drain(resp)
        if resp.status == 405:  # no HEAD: fetch it as one stream
            with self._cv:
                f.stream, f.resolved, f.resolving = True, True, False
                self._cv.notify_all()
            return
        if resp.status != 200:
            raise _http.HTTPStatusError(resp.status, url, _http.headers_of(resp))
        length = resp.getheader("Content-Length")
        if length is not None and f.size is not None and int(length) != f.size:
            raise IntegrityError(f"{f.job.name}: the origin now serves {length} bytes, the listing said "
                                 f"{f.size}; the file changed upstream, pull again")
        ranges = (resp.getheader("Accept-Ranges") or "").lower() == "bytes"
        with self._cv:
            f.url = url
            f.headers = f.job.headers if _http.host_key(url) == _http.host_key(f.job.url) else {
                k: v for k, v in f.job.headers.items() if k.lower() != "authorization"}
            f.resolved, f.resolving = True, False
            if not ranges:
                f.stream, f.pending, f.done = True, [], []
                if f.fd >= 0:
                    os.close(f.fd)
                    f.fd = -1
            self._cv.notify_all()
            everything_on_disk = not f.stream and not f.pending and not f.inflight
        if everything_on_disk:  # a resumed file with no byte missing: only the hash is left to do
            self._poke_hash(f)

    def _chunk(self, client: _http.Client, f: _File, span: list[int], buf: memoryview) -> None:
        start, end = span[1], span[2]
        if start >= end:
            return self._chunk_done(f, span)
        headers = dict(f.headers)
        headers["Range"] = f"bytes={start}-{end - 1}"
        url = f.url
        t_sent = time.monotonic()
        # follow(): a file's first requests go through the Hub's 302 (no HEAD round trips before the
        # first byte); later ones go straight to where it pointed.
        got_url, resp = client.follow("GET", url, headers)
        t_head = time.monotonic()
        if got_url != url:
            with self._cv:
                if f.url == url:
                    f.url = got_url
                    if _http.host_key(got_url) != _http.host_key(url):
                        f.headers = {k: v for k, v in f.headers.items() if k.lower() != "authorization"}
        if resp.status != 206:
            body = _http.drain(resp)
            if resp.status in (401, 403, 404, 410) and got_url != f.job.url:  # e.g. an expired CDN link
                with self._cv:
                    f.url, f.headers = f.job.url, dict(f.job.headers)
                raise _TruncatedError(f"HTTP {resp.status} from the redirect target; resolving again")
            if resp.status == 200:
                client.drop(got_url)
                raise _TruncatedError("origin ignored the Range header")
            raise _http.HTTPStatusError(resp.status, got_url, _http.headers_of(resp), body)
        cr = _http.parse_content_range(resp.getheader("Content-Range"))
        if cr is None or cr[0] != start or cr[1] != end or (cr[2] is not None and cr[2] != f.size):
            client.drop(got_url)
            raise _TruncatedError(f"unexpected Content-Range {resp.getheader('Content-Range')!r}")
        me = threading.get_ident()
        if me not in self._receiving:
            with self._cv:
                self._receiving.add(me)
        pos = start
        try:
            while True:
                with self._cv:
                    end = span[2]  # another worker may have taken the tail
                    if self._stop:
                        break
                if pos >= end:
                    break
                n = resp.readinto(buf[: min(BUFFER, end - pos)])
                if not n:
                    raise _TruncatedError(f"body ended at byte {pos}, expected {end}")
                os.pwrite(f.fd, buf[:n], pos)
                with self._cv:  # at the hash frontier: hash from memory, no read-back later
                    live = f.hashed == pos and not f.hash_busy and not f.finished
                    if live:
                        f.hash_busy = True
                if live:
                    f.hash_update(buf[:n])
                pos += n
                with self._cv:
                    if live:
                        f.hashed, f.hash_busy = pos, False
                    span[1] = pos
                    f.downloaded += n
                    self._net_bytes += n
                    f.dirty = True
                self.progress.advance(n)
        except BaseException:
            client.drop(f.url)
            raise
        if pos < span[2] or resp.length:
            client.drop(f.url)  # unread body left (stolen tail, or stopping)
        if pos >= span[2]:
            self._observe(t_head - t_sent, pos - start, time.monotonic() - t_head)
            self._chunk_done(f, span)

    def _observe(self, ttfb: float, nbytes: int, seconds: float) -> None:
        """Smooth one chunk's time to first byte and body rate into the stealing threshold."""
        with self._cv:
            self._ttfb_s = 0.8 * self._ttfb_s + 0.2 * ttfb
            if nbytes >= MIN_CHUNK and seconds > 0:
                rate = nbytes / seconds
                self._conn_bps = rate if self._conn_bps is None else 0.8 * self._conn_bps + 0.2 * rate

    def _chunk_done(self, f: _File, span: list[int]) -> None:
        start_writeback(f.fd, span[0], span[2] - span[0])  # so the fsync before publishing is short
        with self._cv:
            f.inflight.remove(span)
            f.done = merge(f.done + [[span[0], span[2]]])
            f.dirty = True
        if self.on_range is not None:
            self.on_range(f.job, span[0], span[2])
        self._poke_hash(f)

    def _stream(self, client: _http.Client, f: _File, buf: memoryview) -> None:
        url, resp = client.follow("GET", f.job.url, f.job.headers)
        if resp.status != 200:
            raise _http.HTTPStatusError(resp.status, url, _http.headers_of(resp), _http.drain(resp))
        with self._cv:
            self._receiving.add(threading.get_ident())  # a streamed body counts for the pool's ramp too
            f.hasher, f.git = hashlib.sha256(), git_hasher(f.job)
        if f.fd >= 0:
            os.close(f.fd)
        f.fd = os.open(f.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        pos = 0
        try:
            while n := resp.readinto(buf):
                os.pwrite(f.fd, buf[:n], pos)
                f.hash_update(buf[:n])
                pos += n
                with self._cv:
                    self._net_bytes += n
                    f.downloaded += n
                self.progress.advance(n)
        except BaseException:
            client.drop(url)
            self.progress.advance(-pos)
            os.close(f.fd)
            f.fd = -1
            raise
        if resp.length or (f.size is not None and pos != f.size):
            client.drop(url)
            self.progress.advance(-pos)
            os.close(f.fd)
            f.fd = -1
            raise _TruncatedError(f"got {pos} bytes, expected {f.size}")
        with self._cv:
            f.size = pos
            f.hashed, f.done = pos, [[0, pos]]
            f.hash_busy = True
        self._finish(f)

    # -- hashing and completion ------------------------------------------------------------
    def _poke_hash(self, f: _File) -> None:
        with self._cv:
            if f.hash_busy or f.finished:
                return
            f.hash_busy = True
        assert self._hash_pool is not None
        self._hash_pool.submit(self._hash_more, f)

    def _hash_more(self, f: _File) -> None:
        try:
            view = memoryview(bytearray(4 * MiB))
            while True:
                with self._cv:
                    target = f.contiguous()
                    complete = f.size is not None and target == f.size
                    if f.hashed >= target:
                        if not complete:
                            f.hash_busy = False
                            return
                        break
                    start = f.hashed
                n = os.preadv(f.fd, [view[: min(len(view), target - start)]], start)
                if n <= 0:
                    raise IntegrityError(f"{f.part}: short read while hashing")
                f.hash_update(view[:n])
                with self._cv:
                    f.hashed = start + n
            self._finish(f)
        except BaseException as exc:
            self._fail(exc)

    def _finish(self, f: _File) -> None:
        digest = f.hasher.hexdigest()
        bad_git = f.git is not None and f.git.hexdigest() != f.job.git_oid
        if (f.job.sha256 and digest != f.job.sha256) or bad_git:
            expected = f"sha256 {f.job.sha256}" if f.job.sha256 else f"git blob id {f.job.git_oid}"
            self._discard(f)
            if f.integrity_retries >= 1:
                raise IntegrityError(f"{f.job.name}: downloaded bytes do not match their {expected}; the "
                                     "data was discarded. The origin serves corrupt data: try again later "
                                     "or report it")
            log.warning("%s: bytes do not match their %s; discarding and downloading again", f.job.name, expected)
            with self._cv:
                f.integrity_retries += 1
                f.hasher, f.git, f.hashed, f.hash_busy = hashlib.sha256(), git_hasher(f.job), 0, False
                if f.stream:
                    f.resolving = False
                else:
                    f.fd = os.open(f.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                    preallocate(f.fd, f.size or 0, f.part)
                    f.done, f.pending = [], [[0, f.size or 0]]
                self._cv.notify_all()
            return
        os.close(f.fd)
        f.fd = -1
        with self._cv:
            f.dirty = False
        try:
            f.state_path.unlink()
        except FileNotFoundError:
            pass
        self._on_file(FileResult(f.job, digest, f.size or 0, f.part, f.downloaded, f.resumed))
        self._release(f)
        self.progress.file_done()
        with self._cv:
            self.stats.files += 1
            self.stats.downloaded += f.downloaded
            f.finished, f.hash_busy = True, False
            self._cv.notify_all()
        log.debug("%s: verified and published (%.1f MB received in all)", f.job.name, self._net_bytes / 1e6)

    def _discard(self, f: _File) -> None:
        if f.fd >= 0:
            os.close(f.fd)
            f.fd = -1
        self.progress.advance(-(f.size or 0))
        for p in (f.part, f.state_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # -- resume state ----------------------------------------------------------------------
    def _save_dirty(self) -> None:
        for f in self._files:
            if f.dirty and not f.finished and not f.stream:
                f.dirty = False
                f.save()

    def _save_all(self) -> None:
        with self._cv:
            self._save_dirty()


class _TruncatedError(Exception):
    """A response body that ended early or did not match what was asked."""


def _backoff(attempt: int) -> float:
    return min(8.0, 0.2 * 2**attempt) * (0.5 + random.random())

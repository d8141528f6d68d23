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

Every request is watched (see :meth:`Transfer._watch`): an answer that delivers no byte for
``stall_timeout`` seconds (30; ``WARMSTART_STALL_TIMEOUT``), or fewer than ``min_rate`` bytes/s (1 KiB/s;
``WARMSTART_MIN_RATE``) averaged over that window, has its connection shut down and is retried from the
byte it reached, at most ``retries`` times: a pull never hangs on a stalled or dripping origin.

A file's bytes are bounded: by the size the listing or a HEAD gave (more is an ``IntegrityError``),
else by the Content-Length of its GET, else by the room left in the cache budget and on disk
(``CacheFullError`` before the disk fills). A stream that fails leaves nothing in ``tmp/``: it could
never resume.

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
import http.client
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from . import _http
from ._io import start_writeback
from .config import format_size
from .errors import CacheFullError, IntegrityError, NotFoundError, TransferError, WarmstartError
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
        timeout: float = _http.STALL_TIMEOUT,
        min_rate: int = _http.MIN_RATE,
        connect_timeout: float = _http.CONNECT_TIMEOUT,
        stream_room: int | None = None,
        disk_reserve: int = 0,
        progress: Progress | None = None,
        is_done: Callable[[FileJob], bool] | None = None,
        on_range: Callable[[FileJob, int, int], None] | None = None,
    ) -> None:
        self.tmp_dir, self.lock_dir = Path(tmp_dir), Path(lock_dir)
        self.min_connections = max(1, min(min_connections, max_connections))
        self.max_connections = max(1, max_connections)
        self.chunk_size = max(MIN_CHUNK, chunk_size)
        self.retries = retries
        self.timeout = timeout  # the stall timeout: no byte for this long drops a request
        self.min_rate = min_rate
        self.connect_timeout = connect_timeout
        #: bytes that files of unknown size may write in all (the budget's room); None: no budget
        self.stream_room = stream_room
        self.disk_reserve = disk_reserve  # free disk space kept while writing files of unknown size
        self._room_used = 0
        self._beats: list[_Beat] = []
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
        if job.size is not None and job.size < 0:
            raise TransferError(f"{job.name}: the origin lists a negative size ({job.size}); it is faulty, "
                                "report it")
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
                self._watch(now)
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

    def _watch(self, now: float) -> None:
        """Shut down the connection of a request that received no byte for ``timeout`` seconds, or
        fewer than ``min_rate`` bytes/s over that window (headers included: they count as no byte).
        Its worker then fails the attempt with that reason and retries from the byte it reached."""
        for beat in self._beats:
            if not beat.active or beat.reason is not None:
                continue
            seq, idle, span = beat.seq, now - beat.last, now - beat.mark_t
            if idle >= self.timeout:
                why = f"no byte for {idle:.0f} s"
            elif span >= self.timeout:
                got = beat.bytes - beat.mark_b
                if got >= self.min_rate * span:
                    beat.mark_t, beat.mark_b = now, beat.bytes
                    continue
                why = f"{got} bytes in {span:.0f} s, below the minimum rate of {self.min_rate} bytes/s"
            else:
                continue
            if beat.seq == seq and beat.active:
                beat.reason = why
                log.debug("dropping a connection: %s", why)
                beat.client.abort()

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
        client = _http.Client(timeout=self.timeout + 1.0, connect_timeout=self.connect_timeout)
        beat = _Beat(client)
        with self._cv:
            self._clients.append(client)
            self._beats.append(beat)
        buf = memoryview(bytearray(BUFFER))
        try:
            while (task := self._next_task()) is not None:
                kind, f = task[0], task[1]
                try:
                    if kind == "resolve":
                        self._with_retries(f, beat, functools.partial(self._resolve, client, f))
                    elif kind == "stream":
                        self._with_retries(f, beat, functools.partial(self._stream, client, f, buf, beat))
                    else:
                        self._with_retries(f, beat, functools.partial(self._chunk, client, f, task[2], buf, beat))
                except BaseException as exc:
                    self._fail(exc)
                    return
        finally:
            client.close()

    def _with_retries(self, f: _File, beat: _Beat, fn: Callable[[], None]) -> None:
        for attempt in range(self.retries + 1):
            beat.start()
            try:
                fn()
                return
            except WarmstartError:
                raise  # permanent: a refused redirect, a size or budget overrun, a digest mismatch
            except _http.HTTPStatusError as exc:
                if self._stop:
                    return
                if not exc.retryable or attempt == self.retries:
                    raise self._status_error(f, exc) from None
                delay = exc.retry_after or _backoff(attempt)
                log.info("%s: %s; retrying in %.1fs", f.job.name, exc, delay)
            except (OSError, http.client.HTTPException, _TruncatedError) as exc:
                if self._stop:
                    return  # halted: the socket was shut down under us
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise CacheFullError(f"disk full while writing {f.part}: free space and pull again "
                                         "(the partial download is kept and will resume)") from None
                why = beat.reason or (f"no byte for {self.timeout:.0f} s" if isinstance(exc, TimeoutError)
                                      else _http.printable(str(exc) or type(exc).__name__))
                if beat.reason is not None:
                    beat.client.drop()  # the watchdog shut its sockets down
                if attempt == self.retries:
                    raise TransferError(f"{f.job.name}: {why} (after {self.retries} retries); "
                                        "check the connection and pull again to resume") from None
                delay = _backoff(attempt)
                log.info("%s: %s; retrying in %.1fs", f.job.name, why, delay)
            finally:
                beat.stop()
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
        length = _http.content_length(resp.getheader("Content-Length"))
        if length is not None and f.size is not None and length != f.size:
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

    def _chunk(self, client: _http.Client, f: _File, span: list[int], buf: memoryview, beat: _Beat) -> None:
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
                n = _fill(resp, buf[: min(BUFFER, end - pos)], beat)
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

    def _stream(self, client: _http.Client, f: _File, buf: memoryview, beat: _Beat) -> None:
        """One GET for the whole file, bounded: never more bytes than the listed (or probed) size, else
        than the answer's Content-Length, else than the room left in the budget and on disk."""
        url, resp = client.follow("GET", f.job.url, f.job.headers)
        if resp.status != 200:
            raise _http.HTTPStatusError(resp.status, url, _http.headers_of(resp), _http.drain(resp))
        expected, announced = f.job.size, resp.length  # resp.length: None when unknown or invalid
        if expected is not None and announced is not None and announced != expected:
            client.drop(url)
            raise IntegrityError(f"{f.job.name}: the origin sends {announced} bytes, the listing said {expected}; "
                                 "the file changed upstream or the origin is faulty; nothing was kept, pull again")
        cap = expected if expected is not None else announced
        with self._cv:
            self._receiving.add(threading.get_ident())  # a streamed body counts for the pool's ramp too
            f.hasher, f.git = hashlib.sha256(), git_hasher(f.job)
        if f.fd >= 0:
            os.close(f.fd)
        pos = 0
        try:
            if expected is None:
                self._take_room(f, announced or 0, 0)  # a Content-Length beyond the room: fail before a byte
            f.fd = os.open(f.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            # one byte more than the cap is asked for: an origin that sends it is caught, not believed
            while n := _fill(resp, buf if cap is None else buf[: min(len(buf), cap + 1 - pos)], beat):
                if cap is not None and pos + n > cap:
                    said = "the listing said" if expected is not None else "its Content-Length said"
                    raise IntegrityError(f"{f.job.name}: the origin sent more than the {cap} bytes {said}; "
                                         "nothing was kept. The origin is faulty or hostile: check it")
                if cap is None:
                    self._take_room(f, n, pos)
                os.pwrite(f.fd, buf[:n], pos)
                f.hash_update(buf[:n])
                pos += n
                with self._cv:
                    self._net_bytes += n
                    f.downloaded += n
                self.progress.advance(n)
            if resp.length or (expected is not None and pos != expected):
                raise _TruncatedError(f"got {pos} bytes, expected {expected if expected is not None else resp.length}")
        except BaseException:
            client.drop(url)
            self.progress.advance(-pos)
            with self._cv:
                f.downloaded -= pos
            self._drop_stream(f)
            raise
        beat.stop()  # publishing is not the origin's time
        with self._cv:
            f.size = pos
            f.hashed, f.done = pos, [[0, pos]]
            f.hash_busy = True
        self._finish(f)

    def _take_room(self, f: _File, n: int, pos: int) -> None:
        """Reserve ``n`` more bytes for a file of unknown size: within the budget's room, and leaving
        ``disk_reserve`` free on disk. CacheFullError otherwise (nothing is kept)."""
        with self._cv:
            if self.stream_room is not None and self._room_used + n > self.stream_room:
                raise CacheFullError(
                    f"{f.job.name}: the origin sends more than the {format_size(self.stream_room)} left in the cache "
                    f"budget (the file's size is unknown; {format_size(pos + n)} so far); raise WARMSTART_MAX_SIZE "
                    "or make room with `warmstart gc`; nothing was kept")
            self._room_used += n
            f.room += n
        free = shutil.disk_usage(self.tmp_dir).free
        if free < n + self.disk_reserve:
            raise CacheFullError(
                f"{f.job.name}: not enough disk space under {self.tmp_dir} for a file of unknown size "
                f"({format_size(pos + n)} so far, {format_size(free)} free); free space or set WARMSTART_HOME to a "
                "larger disk; nothing was kept")

    def _drop_stream(self, f: _File) -> None:
        """A failed stream can never resume: close and remove its partial file, give its room back."""
        if f.fd >= 0:
            os.close(f.fd)
            f.fd = -1
        with self._cv:
            self._room_used -= f.room
            f.room = 0
        for p in (f.part, f.state_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

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


class _Beat:
    """The request a worker has in progress, as the supervisor's watchdog sees it: when it began,
    when its last byte came, bytes since a mark. Written by the worker, read by the supervisor; the
    GIL keeps each field whole, and ``seq`` tells one request from the next."""

    __slots__ = ("client", "seq", "active", "last", "bytes", "mark_t", "mark_b", "reason")

    def __init__(self, client: _http.Client) -> None:
        self.client = client
        self.seq = 0
        self.active = False
        self.last = self.mark_t = time.monotonic()
        self.bytes = self.mark_b = 0
        self.reason: str | None = None

    def start(self) -> None:
        now = time.monotonic()
        self.reason = None
        self.last = self.mark_t = now
        self.mark_b = self.bytes
        self.seq += 1
        self.active = True

    def stop(self) -> None:
        self.active = False

    def got(self, n: int) -> None:
        self.bytes += n
        self.last = time.monotonic()


def _fill(resp, view: memoryview, beat: _Beat) -> int:
    """Fill ``view`` from the body (fewer bytes only at its end), telling ``beat`` of every byte as it
    arrives, so that a slow body is seen while the buffer fills."""
    got = 0
    while got < len(view):
        n = _http.readinto_some(resp, view[got:])
        if not n:
            break
        got += n
        beat.got(n)
    return got




def _backoff(attempt: int) -> float:
    return min(8.0, 0.2 * 2**attempt) * (0.5 + random.random())

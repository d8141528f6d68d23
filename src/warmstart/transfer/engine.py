"""The parallel ranged-read engine: :class:`Transfer` fetches many files over one adaptive pool of
connections, shared by every file of a pull, and hands on each file once its digest is verified.

The rooms of the package, each with its own docstring:

* :mod:`.plan`: which byte ranges of a file are unassigned, in flight, done; how a chunk is handed
  out and how an idle worker takes part of another's (pure, no sockets or threads);
* :mod:`.schedule`: which task a worker does next; :mod:`.ramp`: how many connections;
* :mod:`.worker`: one connection's request loop (HEAD, ranged GETs, retries), :mod:`.stream` the
  one-GET case, :mod:`.watchdog` stalled and dripping answers;
* :mod:`.verify`: sha256 and git blob ids computed while downloading;
* :mod:`.flight` and :mod:`.partial`: single flight across processes (one ``flock`` per file) and
  the resume state (``tmp/<key>.part`` and its ``.part.json`` sidecar).

A file's bytes are fetched from the origin once: a chunk in flight is only ever split where its
worker has not requested yet, so no response is cut short (a kill or a failed request aside).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .._http import CONNECT_TIMEOUT, MIN_RATE, STALL_TIMEOUT
from .._retry import TRANSFER
from ..errors import TransferError
from .flight import open_lock, release_lock, try_lock, wait_lock
from .job import FileJob, FileResult, Progress, Stats
from .partial import PartialFile
from .plan import MIN_CHUNK, MiB
from .ramp import Ramp
from .schedule import Scheduler
from .shared import Settings, Shared
from .verify import Verifier
from .watchdog import watch
from .worker import Worker

log = logging.getLogger(__name__)

STREAM_BELOW = 4 * MiB  # files smaller than this go in one request
SAVE_EVERY = 0.25
#: the most bytes one ranged request asks for: a chunk larger than this is fetched as several requests
#: in a row, and only bytes not requested yet may go to an idle worker, so the tail stays short
#: without cutting any answer short. A file's requests are an eighth of it, between 4 MiB (so that a file
#: of a few MiB is still read over several connections) and 16 MiB (at 1 GB, 4 MiB requests cost 1.4
#: more CPU-s and 0.4 s of the steady rate on 2 cores: bench/download.py, docs/benchmarks.md)
REQUEST_SIZE = 16 * MiB


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
        retries: int = TRANSFER.attempts - 1,
        timeout: float = STALL_TIMEOUT,
        min_rate: int = MIN_RATE,
        connect_timeout: float = CONNECT_TIMEOUT,
        stream_room: int | None = None,
        disk_reserve: int = 0,
        progress: Progress | None = None,
        is_done: Callable[[FileJob], bool] | None = None,
        on_range: Callable[[FileJob, int, int], None] | None = None,
    ) -> None:
        chunk = max(MIN_CHUNK, chunk_size)
        #: ``timeout``: the stall timeout (no byte for this long drops a request); ``stream_room``: bytes
        #: files of unknown size may write in all (the budget's room; None: no budget); ``disk_reserve``:
        #: free disk space kept while writing them
        self.settings = Settings(
            Path(tmp_dir), Path(lock_dir), max(1, min(min_connections, max_connections)), max(1, max_connections),
            chunk, min(chunk, REQUEST_SIZE), dataclasses.replace(TRANSFER, attempts=max(1, retries + 1)),
            timeout, min_rate, connect_timeout, stream_room, disk_reserve)
        self.is_done = is_done or (lambda job: False)
        self._shared = Shared(self.settings, progress, on_range)
        self._verifier: Verifier | None = None
        self._threads: list[threading.Thread] = []
        self._on_file: Callable[[FileResult], None] = lambda r: None

    @property
    def stats(self) -> Stats:
        return self._shared.stats

    def run(self, jobs: list[FileJob], on_file: Callable[[FileResult], None]) -> Stats:
        """Fetch ``jobs``; ``on_file`` receives each verified file (from a worker thread) and must
        move it away (publish) before returning. Raises the first permanent error."""
        t0 = time.monotonic()
        shared, s = self._shared, self.settings
        self._on_file = on_file
        s.tmp_dir.mkdir(parents=True, exist_ok=True)
        s.lock_dir.mkdir(parents=True, exist_ok=True)
        shared.progress.start(sum(j.size or 0 for j in jobs), len(jobs))
        self._verifier = verifier = Verifier(shared, self._publish)
        try:
            for job in jobs:
                self._admit(job)
            self._supervise(Scheduler(shared, verifier))
        except BaseException:
            shared.halt()
            raise
        finally:
            shared.halt()
            for w in self._threads:
                w.join()  # before closing files: a live worker must never pwrite to a reused fd
            verifier.close()
            with shared.cv:
                self._save_dirty()
            for f in shared.files:
                f.close()
                f.lock_fd = release_lock(f.lock_fd)
        shared.stats.seconds = time.monotonic() - t0
        return shared.stats

    # -- admission and single flight -------------------------------------------------------
    def _admit(self, job: FileJob) -> None:
        if job.size is not None and job.size < 0:
            raise TransferError(f"{job.name}: the origin lists a negative size ({job.size}); it is faulty, "
                                "report it")
        f = PartialFile(job, self.settings.tmp_dir / f"{job.key}.part")
        f.lock_fd = open_lock(self.settings.lock_dir / f"{job.key}.lock")
        if not try_lock(f.lock_fd, self.settings.lock_dir):
            log.info("%s: another process is downloading it; waiting", job.name)
            with self._shared.cv:
                self._shared.waiting += 1
            threading.Thread(target=self._wait_other, args=(f,), daemon=True).start()
            return
        if self.is_done(job):  # another process finished it after our listing: nothing to fetch
            self._take_published(f)
            return
        self._activate(f)

    def _wait_other(self, f: PartialFile) -> None:
        shared = self._shared
        try:
            wait_lock(f.lock_fd)
            if self.is_done(f.job):
                self._take_published(f)
                return
            self._activate(f)
        except BaseException as exc:
            shared.fail(exc)
        finally:
            with shared.cv:
                shared.waiting -= 1
                shared.cv.notify_all()

    def _take_published(self, f: PartialFile) -> None:
        """The file is already in the cache (another process published it): report it, fetch nothing."""
        shared = self._shared
        f.close()
        f.lock_fd = release_lock(f.lock_fd)
        shared.progress.advance(f.job.size or 0)
        shared.progress.file_done()
        with shared.cv:
            shared.stats.files += 1
            f.finished = True
            shared.files.append(f)
        self._on_file(FileResult(f.job, f.job.sha256 or "", f.job.size or 0, None))

    def _activate(self, f: PartialFile) -> None:
        job, shared = f.job, self._shared
        if job.size is not None and job.size > 0 and job.ranges and job.size > STREAM_BELOW:
            f.open_resumable()
            if f.resumed:
                log.info("%s: resuming, %d of %d bytes already on disk", job.name, f.resumed, f.size)
                shared.progress.advance(f.resumed)
                shared.stats.resumed += f.resumed
            f.resolved = not job.probe
        else:
            f.stream = True
            f.resolved = True
        with shared.cv:
            shared.files.append(f)
            shared.cv.notify_all()
        if f.resolved and f.on_disk:
            assert self._verifier is not None
            self._verifier.poke(f)  # everything was already on disk

    # -- supervision -----------------------------------------------------------------------
    def _supervise(self, scheduler: Scheduler) -> None:
        """Wait for the files while growing the pool (:mod:`.ramp`), watching every request
        (:mod:`.watchdog`) and saving the resume state every :data:`SAVE_EVERY` seconds."""
        shared, s = self._shared, self.settings
        now = time.monotonic()
        ramp = Ramp(s.min_connections, s.max_connections, now)
        self._spawn(scheduler, ramp.target)
        last_save = now
        with shared.cv:
            while True:
                if shared.error is not None:
                    raise shared.error
                if shared.all_finished():
                    return
                shared.cv.wait(0.05)
                now = time.monotonic()
                watch(shared.beats, now, s.timeout, s.min_rate)
                if now - last_save >= SAVE_EVERY:
                    self._save_dirty()
                    last_save = now
                more = ramp.step(now, shared.net_bytes, len(shared.receiving), shared.unassigned())
                if more:
                    self._spawn(scheduler, more)

    def _spawn(self, scheduler: Scheduler, n: int) -> None:
        shared = self._shared
        log.debug("connections: %d -> %d after %.1f MB", shared.workers, shared.workers + n, shared.net_bytes / 1e6)
        assert self._verifier is not None
        for _ in range(n):
            worker = Worker(shared, self._verifier, scheduler.next_task)
            t = threading.Thread(target=worker.run, name=f"warmstart-io-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            with shared.cv:
                shared.workers += 1
            t.start()
        shared.stats.connections = max(shared.stats.connections, shared.workers)

    # -- completion ------------------------------------------------------------------------
    def _publish(self, f: PartialFile, digest: str) -> None:
        """``f`` is verified: hand it to ``on_file`` (which moves it away), then let its lock go."""
        shared = self._shared
        f.close()
        with shared.cv:
            f.dirty = False
        try:
            f.state_path.unlink()
        except FileNotFoundError:
            pass
        self._on_file(FileResult(f.job, digest, f.size or 0, f.part, f.downloaded, f.resumed))
        f.lock_fd = release_lock(f.lock_fd)
        shared.progress.file_done()
        with shared.cv:
            shared.stats.files += 1
            shared.stats.downloaded += f.downloaded
            f.finished, f.hash_busy = True, False
            shared.cv.notify_all()
        log.debug("%s: verified and published (%.1f MB received in all)", f.job.name, shared.net_bytes / 1e6)

    def _save_dirty(self) -> None:
        """Save the resume state of files with new bytes (called under the lock)."""
        for f in self._shared.files:
            if f.dirty and not f.finished and not f.stream:
                f.dirty = False
                f.save()

"""What every thread of one :class:`~warmstart.transfer.Transfer` shares: its settings, its files, the
pool's measurements and the stop signal, all guarded by one condition variable, ``cv``."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

from .._http import CONNECT_TIMEOUT, MIN_RATE, STALL_TIMEOUT, Client
from .._retry import TRANSFER, Retry
from .job import FileJob, NoProgress, Progress, Stats
from .partial import PartialFile
from .plan import MIN_CHUNK, MiB
from .watchdog import Beat


@dataclasses.dataclass
class Settings:
    """The engine's knobs (see :class:`~warmstart.transfer.Transfer` for their meaning)."""

    tmp_dir: Path
    lock_dir: Path
    min_connections: int = 16
    max_connections: int = 64
    chunk_size: int = 16 * MiB
    request_size: int = 16 * MiB
    retry: Retry = TRANSFER
    timeout: float = STALL_TIMEOUT
    min_rate: int = MIN_RATE
    connect_timeout: float = CONNECT_TIMEOUT
    stream_room: int | None = None
    disk_reserve: int = 0


class Shared:
    """State shared by the supervisor, the workers and the hashers; fields are read and written under
    ``cv`` unless noted."""

    def __init__(self, settings: Settings, progress: Progress | None,
                 on_range: Callable[[FileJob, int, int], None] | None) -> None:
        self.settings = settings
        self.progress = progress or NoProgress()  # called outside the lock
        self.on_range = on_range
        self.cv = threading.Condition()
        self.files: list[PartialFile] = []
        self.waiting = 0  # files whose lock another process holds
        self.error: BaseException | None = None
        self.stop = False
        self.stop_evt = threading.Event()
        self.clients: list[Client] = []
        self.beats: list[Beat] = []
        self.workers = 0
        self.receiving: set[int] = set()  # workers that have had a response body (thread idents)
        # smoothed over completed requests: seconds from request to first byte, and bytes/s of one body
        self.ttfb_s = 0.05
        self.conn_bps: float | None = None
        self.net_bytes = 0
        self.room_used = 0  # bytes of the budget's room taken by files of unknown size
        self.stats = Stats()

    def all_finished(self) -> bool:
        return self.waiting == 0 and all(f.finished for f in self.files)

    def unassigned(self) -> int:
        return sum(f.plan.unassigned for f in self.files if not f.stream)

    def observe(self, ttfb: float, nbytes: int, seconds: float) -> None:
        """Smooth one request's time to first byte and body rate into the splitting threshold."""
        with self.cv:
            self.ttfb_s = 0.8 * self.ttfb_s + 0.2 * ttfb
            if nbytes >= MIN_CHUNK and seconds > 0:
                rate = nbytes / seconds
                self.conn_bps = rate if self.conn_bps is None else 0.8 * self.conn_bps + 0.2 * rate

    def min_steal(self) -> int:
        """The fewest bytes worth taking from another worker's chunk: taking ``n`` of them ends them
        after ``ttfb + n/r`` instead of ``n/r`` more for the victim, which is sooner when
        ``n > r * ttfb`` (r: one connection's rate; 2 MiB until rates are known)."""
        if self.conn_bps is None:
            return 2 * MiB
        return int(max(MIN_CHUNK // 2, self.conn_bps * self.ttfb_s))

    def fail(self, exc: BaseException) -> None:
        with self.cv:
            if self.error is None:
                self.error = exc
        self.halt()

    def halt(self) -> None:
        """Stop every worker now: blocked reads are woken by shutting their sockets down."""
        with self.cv:
            self.stop = True
            self.stop_evt.set()
            clients = list(self.clients)
            self.cv.notify_all()
        for c in clients:
            c.abort()

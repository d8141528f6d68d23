"""One pull per model however many ask (single flight), with its progress fanned out to every asker.

A :class:`Flight` runs ``api.pull`` in a worker thread; its :class:`_Sink` (the pull's progress sink)
posts throttled progress lines to the event loop and, once the agent is stopping, raises
``KeyboardInterrupt`` at the next chunk, which stops the pull resumably (partial data stays in tmp/).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable

PROGRESS_EVERY = 0.25  # seconds between progress lines


class _Sink:
    def __init__(self, flight: Flight, stop: threading.Event) -> None:
        self.flight, self.stop = flight, stop
        self.total = self.files = self.files_done = self.bytes = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self, total_bytes: int, total_files: int) -> None:
        with self._lock:
            self.total, self.files = total_bytes, total_files
        self._post(force=True)

    def advance(self, n: int) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # stops the transfer; what arrived stays resumable
        with self._lock:
            self.bytes += n
        self._post()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
        self._post()

    def close(self) -> None:
        pass

    def _post(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        with self._lock:
            line = {"progress": {"bytes": self.bytes, "total": self.total, "files_done": self.files_done,
                                 "files": self.files}}
        self.flight.post(line)


@dataclasses.dataclass(eq=False)
class Flight:
    """A pull in progress; ``subscribe()`` gives a queue of its lines, ending with ``None``."""

    key: tuple
    loop: asyncio.AbstractEventLoop
    subscribers: list[asyncio.Queue] = dataclasses.field(default_factory=list)
    future: asyncio.Future | None = None
    last_progress: dict | None = None
    result: dict | None = None  # the final line: the snapshot's JSON or {"error", "type"}

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        if self.last_progress is not None:
            q.put_nowait(self.last_progress)
        if self.result is not None:
            q.put_nowait(self.result)
            q.put_nowait(None)
        else:
            self.subscribers.append(q)
        return q

    def post(self, line: dict) -> None:  # from the worker thread
        self.loop.call_soon_threadsafe(self._broadcast, line, False)

    def _broadcast(self, line: dict, last: bool) -> None:
        if not last:
            self.last_progress = line
        for q in self.subscribers:
            q.put_nowait(line)
            if last:
                q.put_nowait(None)
        if last:
            self.subscribers.clear()

    def finish(self, line: dict) -> None:  # on the loop
        self.result = line
        self._broadcast(line, True)


class Flights:
    """The single-flight table: ``start(key, work)`` returns the running flight for ``key`` or starts one.

    ``work(sink)`` runs in ``executor`` and returns the final line (a dict)."""

    def __init__(self, executor, stop: threading.Event) -> None:
        self.executor, self.stop = executor, stop
        self.running: dict[tuple, Flight] = {}

    def start(self, key: tuple, work: Callable[[_Sink], dict]) -> tuple[Flight, bool]:
        flight = self.running.get(key)
        if flight is not None:
            return flight, True
        loop = asyncio.get_running_loop()
        flight = Flight(key, loop)
        sink = _Sink(flight, self.stop)
        flight.future = loop.run_in_executor(self.executor, work, sink)
        self.running[key] = flight

        def done(fut: asyncio.Future) -> None:
            self.running.pop(key, None)
            flight.finish(fut.result() if not fut.cancelled() and fut.exception() is None
                          else {"error": f"the agent failed: {fut.exception()}", "type": "WarmstartError"})

        flight.future.add_done_callback(done)
        return flight, False

    def __len__(self) -> int:
        return len(self.running)

"""The streaming engine: reader threads -> bounded staging pool -> one device allocation per file.

::

    file ──pread──► [reader threads] ──► staging pool (pinned on CUDA; bounded: staging_bytes)
                                              │ filled buffers, in any order
                                              ▼
                          copy stage: dest[off:off+n].copy_(buf, non_blocking=True) on a side stream,
                          event per buffer; the buffer returns to the pool once its event completed
                                              ▼
            dest = ONE uint8 allocation per file (data section) ──► tensors are views (slice/view/reshape)

Host memory is bounded by the pool whatever the model size; reads overlap with copies. The same
engine runs with a CPU destination (plain buffers, synchronous ``copy_``) so CI exercises its
scheduling, bounds, alignment and dtype logic without a GPU.

Load-while-downloading seam: a reader asks ``ready.wait_ready(start, end)`` (absolute file offsets)
before reading a range; :class:`FinishedFile` (the default) returns at once. A transfer that writes
the file as ranges arrive only has to implement that one method.

>>> engine = StreamEngine(device="cuda:0", staging_bytes=512 << 20)      # doctest: +SKIP
>>> tensors = engine.load(["model-00001-of-00002.safetensors", ...])     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from warmstart.errors import InvalidCheckpointError
from warmstart.load.cpu import castable, resolve_dtype, torch_view
from warmstart.load.safetensors import Header, read_header

__all__ = ["RangeSource", "FinishedFile", "StreamEngine", "StreamStats", "DEFAULT_STAGING_BYTES"]

logger = logging.getLogger(__name__)

DEFAULT_STAGING_BYTES = 512 << 20
DEFAULT_BUFFER_BYTES = 32 << 20
_ALIGN = 4096


class RangeSource(Protocol):
    """Tells the reader when a byte range of the file is final (written and verified)."""

    def wait_ready(self, start: int, end: int) -> None:
        """Block until bytes ``[start, end)`` of the file can be read; raise to abort the load."""


class FinishedFile:
    """The file is complete on disk: every range is ready."""

    def wait_ready(self, start: int, end: int) -> None:
        return None


@dataclass
class StreamStats:
    """Instrumentation of the last ``load``: peak staging bytes checked out, bytes read, buffers."""

    peak_inflight_bytes: int = 0
    allocated_bytes: int = 0
    bytes_read: int = 0
    buffers: int = 0
    chunks: int = 0
    direct: bool = False


class _Pool:
    """A bounded pool of staging buffers, allocated lazily, page-aligned (O_DIRECT-ready)."""

    def __init__(self, count: int, size: int, pinned: bool, stats: StreamStats) -> None:
        self.count, self.size, self.pinned, self.stats = count, size, pinned, stats
        self.free: list[Any] = []
        self.allocated = 0
        self.inflight = 0
        self.cond = threading.Condition()

    def _new(self) -> Any:
        import torch

        if self.pinned:  # cudaHostAlloc memory is page-aligned
            return torch.empty(self.size, dtype=torch.uint8, pin_memory=True)
        raw = torch.empty(self.size + _ALIGN, dtype=torch.uint8)
        skip = -raw.data_ptr() % _ALIGN
        return raw[skip:skip + self.size]

    def acquire(self, stop: threading.Event) -> Any | None:
        with self.cond:
            while not self.free and self.allocated >= self.count:
                if stop.is_set():
                    return None
                self.cond.wait(0.05)
            if stop.is_set():
                return None
            if self.free:
                buf = self.free.pop()
            else:
                buf = self._new()
                self.allocated += 1
                self.stats.allocated_bytes = self.allocated * self.size
                self.stats.buffers = self.allocated
            self.inflight += self.size
            self.stats.peak_inflight_bytes = max(self.stats.peak_inflight_bytes, self.inflight)
            return buf

    def release(self, buf: Any) -> None:
        with self.cond:
            self.free.append(buf)
            self.inflight -= self.size
            self.cond.notify()


class StreamEngine:
    """Load safetensors files into ``device`` through a bounded staging pool.

    ``staging_bytes`` bounds host memory (default 512 MiB); ``buffer_bytes`` is one read (32 MiB);
    ``readers`` threads read in parallel; ``direct=True`` reads with O_DIRECT (bypassing the page
    cache; measured slower on a warm cache, so off by default).

    >>> engine = StreamEngine(device="cpu", staging_bytes=64 << 20)     # doctest: +SKIP
    >>> state = engine.load(["model.safetensors"], dtype="float16")     # doctest: +SKIP
    >>> engine.stats.peak_inflight_bytes <= 64 << 20                    # doctest: +SKIP
    True
    """

    def __init__(self, device: Any = "cpu", *, staging_bytes: int | None = None,
                 buffer_bytes: int | None = None, readers: int = 2, direct: bool = False) -> None:
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but CUDA is not available; use device='cpu'")
        self.staging_bytes = int(staging_bytes or DEFAULT_STAGING_BYTES)
        size = int(buffer_bytes or min(DEFAULT_BUFFER_BYTES, max(_ALIGN, self.staging_bytes // 4)))
        size = max(_ALIGN, size - size % _ALIGN)
        if size > self.staging_bytes:
            raise ValueError(f"buffer_bytes={size} exceeds staging_bytes={self.staging_bytes}; lower it")
        self.buffer_bytes = size
        self.readers = max(1, readers)
        self.direct = direct
        self.stats = StreamStats()

    def load(self, paths: Iterable[str | os.PathLike[str]], *, dtype: Any = None,
             ready: dict[str, RangeSource] | None = None) -> dict[str, Any]:
        """Load all files; tensor names must be unique across files."""
        self.stats = StreamStats()
        pinned = self.device.type == "cuda"
        pool = _Pool(max(1, self.staging_bytes // self.buffer_bytes), self.buffer_bytes, pinned, self.stats)
        out: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for p in paths:
            path = os.fspath(p)
            src = (ready or {}).get(path) or FinishedFile()
            for name, t in self._load_file(path, pool, dtype, src).items():
                if name in owner:
                    raise InvalidCheckpointError(f"{path}: tensor {name!r}: also in {owner[name]}; "
                                                 "shards must not repeat tensor names")
                owner[name] = path
                out[name] = t
        return out

    def load_file(self, path: str | os.PathLike[str], *, dtype: Any = None,
                  ready: RangeSource | None = None) -> dict[str, Any]:
        """Load one file (``ready`` tells when ranges are available; default: the file is complete)."""
        return self.load([path], dtype=dtype, ready={os.fspath(path): ready} if ready else None)

    def _open(self, path: str) -> tuple[int, bool]:
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        if self.direct and hasattr(os, "O_DIRECT"):
            try:
                return os.open(path, flags | os.O_DIRECT), True
            except OSError as e:
                logger.debug("%s: O_DIRECT unavailable (%s); using buffered reads", path, e)
        return os.open(path, flags), False

    def _load_file(self, path: str, pool: _Pool, dtype: Any, ready: RangeSource) -> dict[str, Any]:
        import torch

        header = read_header(path)
        dest = torch.empty(header.data_size, dtype=torch.uint8, device=self.device)
        if header.data_size:
            fd, direct = self._open(path)
            try:
                self.stats.direct = direct
                self._stream(fd, direct, header, dest, pool, ready)
            finally:
                os.close(fd)
        dt = resolve_dtype(dtype, "pt")
        out = {}
        for name, info in header.tensors.items():
            off = info.start - header.data_start
            t = torch_view(dest[off:off + info.nbytes], info, path, name)
            out[name] = t if dt is None or t.dtype == dt or not castable(t) else t.to(dt)
        return out

    def _stream(self, fd: int, direct: bool, h: Header, dest: Any, pool: _Pool, ready: RangeSource) -> None:
        import torch

        first = h.data_start - h.data_start % _ALIGN
        chunks = [(a, min(a + pool.size, h.file_size)) for a in range(first, h.file_size, pool.size)]
        self.stats.chunks += len(chunks)
        work: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(chunks)):
            work.put(i)
        filled: queue.Queue[tuple[int, Any] | None] = queue.Queue()
        stop = threading.Event()
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set():
                    try:
                        i = work.get_nowait()
                    except queue.Empty:
                        return
                    buf = pool.acquire(stop)
                    if buf is None:
                        return
                    a, b = chunks[i]
                    try:
                        ready.wait_ready(max(a, h.data_start), b)
                        self._read(fd, buf, a, b, direct, h)
                    except BaseException:
                        pool.release(buf)
                        raise
                    filled.put((i, buf))
            except BaseException as e:  # propagate to the copy stage, which re-raises
                errors.append(e)
                stop.set()
                filled.put(None)

        threads = [threading.Thread(target=reader, name=f"warmstart-read-{k}", daemon=True)
                   for k in range(min(self.readers, len(chunks)))]
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(device=self.device) if cuda else None
        pending: deque[tuple[Any, Any]] = deque()
        for t in threads:
            t.start()
        try:
            done = 0
            while done < len(chunks):
                while pending and pending[0][0].query():
                    pool.release(pending.popleft()[1])
                try:
                    item = filled.get(timeout=0.05)
                except queue.Empty:
                    if pending:
                        pending[0][0].synchronize()
                    elif not any(t.is_alive() for t in threads) and filled.empty():
                        raise (errors[0] if errors else RuntimeError("reader threads exited early")) from None
                    continue
                if item is None:
                    raise errors[0]
                i, buf = item
                a, b = chunks[i]
                lo = max(a, h.data_start)
                src, dst = buf[lo - a:b - a], dest[lo - h.data_start:b - h.data_start]
                if stream is not None:
                    with torch.cuda.stream(stream):
                        dst.copy_(src, non_blocking=True)
                        ev = torch.cuda.Event()
                        ev.record(stream)
                    pending.append((ev, buf))
                else:
                    dst.copy_(src)
                    pool.release(buf)
                done += 1
        finally:
            stop.set()
            for t in threads:
                t.join()
            if stream is not None:
                stream.synchronize()
            while pending:
                pool.release(pending.popleft()[1])

    def _read(self, fd: int, buf: Any, a: int, b: int, direct: bool, h: Header) -> None:
        n = b - a
        want = n + (-n % _ALIGN) if direct else n
        mv = memoryview(buf.numpy())[:want]
        got = 0
        while got < n:
            k = os.preadv(fd, [mv[got:]], a + got)
            if k <= 0:
                raise InvalidCheckpointError(f"{h.path}: header: file ended at byte {a + got}, expected "
                                             f"{h.file_size} (truncated while loading?); re-download it")
            got += k
        self.stats.bytes_read += n

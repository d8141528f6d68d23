"""Link shaping, fault injection and byte counters shared by every test origin.

A test origin is a ``ThreadingHTTPServer`` whose handler derives from :class:`OriginHandler`.
Three objects hang off the server and may be swapped or mutated while it runs:

* ``server.link``: a :class:`Link` (or ``None`` for an unshaped loopback link). Bandwidth is capped
  per connection and in total (a token bucket shared by every server that holds the same ``Link``),
  and ``latency_s`` is slept before the first byte of each response (one RTT per request).
* ``server.faults``: a :class:`Faults` queue, e.g.
  ``server.faults.add("truncate", path_glob="*model-00001*", times=1, after_bytes=1 << 20)``.
* ``server.counters``: a :class:`Counters`: body bytes per path and in total, requests per (method, path).

Example::

    link = Link(per_conn_bps=20e6, total_bps=320e6, latency_s=0.02)
    with HubServer(repos=[...], link=link) as hub:
        ...
        assert hub.counters.bytes_for("*model-00001*") == size
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

Source = bytes | bytearray | memoryview | Path

MAX_SLICE = 256 * 1024
MIN_SLICE = 16 * 1024
UNSHAPED_SLICE = 4 * 1024 * 1024


class TokenBucket:
    """A thread-safe token bucket that lets callers go into debt and sleep it off.

    ``take(n)`` reserves ``n`` tokens at once and sleeps outside the lock until they are paid for,
    so many threads sharing one bucket converge on ``rate`` bytes/s in total with one lock per slice.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(MAX_SLICE, rate * 0.02))
        self._tokens = self.burst
        self._t = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class Link:
    """A shaped link: ``per_conn_bps`` and ``total_bps`` in bytes/s (``None`` = no cap), plus latency.

    One ``Link`` may be shared by several servers (the Hub and its CDN): the total cap covers them all.
    """

    def __init__(
        self, per_conn_bps: float | None = None, total_bps: float | None = None, latency_s: float = 0.0
    ) -> None:
        self.per_conn_bps = per_conn_bps
        self.total_bps = total_bps
        self.latency_s = float(latency_s)
        self.total = TokenBucket(total_bps) if total_bps else None

    def __repr__(self) -> str:
        return f"Link(per_conn_bps={self.per_conn_bps}, total_bps={self.total_bps}, latency_s={self.latency_s})"

    @property
    def shaped(self) -> bool:
        return bool(self.per_conn_bps or self.total_bps)

    def connection_bucket(self) -> TokenBucket | None:
        """A fresh bucket for one connection (``None`` without a per-connection cap)."""
        return TokenBucket(self.per_conn_bps) if self.per_conn_bps else None

    def slice_size(self) -> int:
        rates = [r for r in (self.per_conn_bps, self.total_bps) if r]
        if not rates:
            return UNSHAPED_SLICE
        return int(min(MAX_SLICE, max(MIN_SLICE, min(rates) / 50)))

    def wait_for(self, n: int, conn_bucket: TokenBucket | None) -> None:
        if conn_bucket is not None:
            conn_bucket.take(n)
        if self.total is not None:
            self.total.take(n)

    def send(self, sock_or_wfile, data: bytes | memoryview, conn_bucket: TokenBucket | None = None) -> int:
        """Write ``data`` to a socket or a writable file in slices honouring both caps; returns its length."""
        write = getattr(sock_or_wfile, "sendall", None) or sock_or_wfile.write
        mv = memoryview(data).cast("B")
        step = self.slice_size()
        for i in range(0, len(mv), step):
            piece = mv[i : i + step]
            self.wait_for(len(piece), conn_bucket)
            write(piece)
        return len(mv)


# --------------------------------------------------------------------------------------------- faults

FAULT_KINDS = ("status5xx", "reset", "truncate", "corrupt")
BODY_FAULTS = ("reset", "truncate", "corrupt")


@dataclass
class Fault:
    """One fault: fires on requests whose path matches ``path_glob``, ``times`` times (``None``: forever).

    * ``status5xx``: answer ``status`` (default 503) instead of the resource.
    * ``reset``: send ``after_bytes`` of the body, then close with SO_LINGER 0 (an RST).
    * ``truncate``: announce the full Content-Length, send ``after_bytes``, then close (a FIN).
    * ``corrupt``: flip ``nbytes`` bytes of the body starting at body offset ``after_bytes``.
    """

    kind: str
    path_glob: str = "*"
    times: int | None = 1
    after_bytes: int = 0
    status: int = 503
    nbytes: int = 16
    method: str | None = None
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self.path_glob)


class Faults:
    """A thread-safe set of pending faults; see :class:`Fault`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.history: list[tuple[str, str]] = []  # (kind, path) of each firing

    def add(
        self,
        kind: str,
        path_glob: str = "*",
        times: int | None = 1,
        *,
        after_bytes: int = 0,
        status: int = 503,
        nbytes: int = 16,
        method: str | None = None,
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        fault = Fault(kind, path_glob, times, after_bytes, status, nbytes, method)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, kinds: Iterable[str], method: str, path: str) -> Fault | None:
        """The first pending fault of one of ``kinds`` matching the request, consumed once."""
        kinds = tuple(kinds)
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, path):
                    fault.fired += 1
                    if fault.times is not None and fault.fired >= fault.times:
                        self._faults.remove(fault)
                    self.history.append((fault.kind, path))
                    return fault
        return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.history.clear()


# ------------------------------------------------------------------------------------------- counters


@dataclass
class Counters:
    """Body bytes served per path and in total; requests per (method, path). Thread-safe."""

    bytes_by_path: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)
    bytes_total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_request(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[(method, path)] += 1

    def add_bytes(self, path: str, n: int) -> None:
        if n:
            with self._lock:
                self.bytes_by_path[path] += n
                self.bytes_total += n

    def bytes_for(self, path_glob: str = "*") -> int:
        with self._lock:
            return sum(n for p, n in self.bytes_by_path.items() if fnmatch.fnmatchcase(p, path_glob))

    def requests_for(self, path_glob: str = "*", method: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (m, p), n in self.requests.items()
                if (method is None or m == method) and fnmatch.fnmatchcase(p, path_glob)
            )

    def reset(self) -> None:
        with self._lock:
            self.bytes_by_path.clear()
            self.requests.clear()
            self.bytes_total = 0


# --------------------------------------------------------------------------------------------- server


class OriginServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server with a shaped link, faults and counters, run on a daemon thread."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, addr: tuple[str, int], handler: type, *, link: Link | None = None,
                 faults: Faults | None = None, counters: Counters | None = None) -> None:
        super().__init__(addr, handler)
        self.link = link
        self.faults = faults if faults is not None else Faults()
        self.counters = counters if counters is not None else Counters()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OriginServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=f"origin-{self.endpoint}"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """``(start, end_inclusive)`` for a single satisfiable range, ``None`` for the whole body, or
    ``"unsatisfiable"``. Malformed or multi-range headers are ignored (the whole body is sent)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1) if size else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class OriginHandler(BaseHTTPRequestHandler):
    """Base handler: keep-alive, latency, status faults, Range, shaped bodies with body faults, counters."""

    protocol_version = "HTTP/1.1"
    server_version = "warmstart-test-origin/1"
    timeout = 120
    server: OriginServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet by default
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._bucket_link: Link | None = None
        self._bucket = None

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def url_path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def conn_bucket(self) -> TokenBucket | None:
        link = self.server.link
        if link is None:
            return None
        if self._bucket_link is not link:
            self._bucket_link, self._bucket = link, link.connection_bucket()
        return self._bucket

    def begin(self) -> bool:
        """Count the request, sleep the latency, fire a status fault. False when already answered."""
        path = self.url_path
        self.server.counters.add_request(self.command, path)
        link = self.server.link
        if link is not None and link.latency_s > 0:
            time.sleep(link.latency_s)
        fault = self.server.faults.take(("status5xx",), self.command, path)
        if fault is not None:
            self.send_json(fault.status, {"error": f"injected fault: {fault.status}"})
            return False
        return True

    def send_json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", "0")
        self.end_headers()

    def send_resource(self, source: Source, size: int, headers: dict[str, str], *, ranges: bool = True) -> None:
        """Answer GET/HEAD for a whole resource with Range support (``ranges=False``: always 200)."""
        span = parse_range(self.headers.get("Range"), size) if ranges else None
        if span == "unsatisfiable":
            self.send_json(416, {"error": "Requested range not satisfiable"},
                           {"Content-Range": f"bytes */{size}", **({"Accept-Ranges": "bytes"} if ranges else {})})
            return
        start, end = span if span else (0, size - 1)
        length = end - start + 1 if size else 0
        self.send_response(206 if span else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        self.wfile.flush()
        self.send_body(source, start, length)

    def body_fault(self, length: int) -> tuple[Fault | None, int, tuple[int, int] | None]:
        """Take the body fault (if any) for this request: ``(fault, bytes to send, byte span to flip)``."""
        fault = self.server.faults.take(BODY_FAULTS, self.command, self.url_path)
        limit = length
        if fault is not None and fault.kind in ("reset", "truncate"):
            limit = min(length, fault.after_bytes)
        flip = None
        if fault is not None and fault.kind == "corrupt":
            at = min(fault.after_bytes, length - 1)
            flip = (at, min(length, at + max(1, fault.nbytes)))
        return fault, limit, flip

    def send_body(self, source: Source, start: int, length: int) -> None:
        path = self.url_path
        fault, limit, flip = self.body_fault(length)
        try:
            self._stream(source, start, limit, path, flip)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            return
        self.end_body_fault(fault)

    def end_body_fault(self, fault: Fault | None) -> None:
        """After a cut-short body: ``reset`` sends an RST (SO_LINGER 0), ``truncate`` a plain close."""
        if fault is not None and fault.kind == "reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        elif fault is not None and fault.kind == "truncate":
            self.close_connection = True

    def _stream(self, source: Source, start: int, length: int, path: str,
                flip: tuple[int, int] | None) -> None:
        link = self.server.link
        shaped = link is not None and link.shaped
        sock = self.connection
        counters = self.server.counters
        if isinstance(source, Path) and not shaped and flip is None:
            with open(source, "rb") as f:  # zero-copy: the fastest unshaped path
                offset, end = start, start + length
                while offset < end:
                    n = sock.sendfile(f, offset, min(UNSHAPED_SLICE, end - offset))
                    if n == 0:
                        raise BrokenPipeError("sendfile sent nothing")
                    counters.add_bytes(path, n)
                    offset += n
            return
        step = link.slice_size() if link is not None else UNSHAPED_SLICE
        bucket = self.conn_bucket()
        fd = None
        mv = None
        if isinstance(source, Path):
            fd = os.open(source, os.O_RDONLY)
        else:
            mv = memoryview(source).cast("B")
        try:
            done = 0
            while done < length:
                n = min(step, length - done)
                if shaped:
                    link.wait_for(n, bucket)
                piece = os.pread(fd, n, start + done) if fd is not None else mv[start + done : start + done + n]
                if len(piece) != n:
                    raise OSError(f"short read from {source}")
                if flip is not None and flip[0] < done + n and flip[1] > done:
                    buf = bytearray(piece)
                    for i in range(max(flip[0], done), min(flip[1], done + n)):
                        buf[i - done] ^= 0xFF
                    piece = buf
                sock.sendall(piece)
                counters.add_bytes(path, n)
                done += n
        finally:
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def serving(server: OriginServer):
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ServedOrigin:
    """What every test origin offers around its ``OriginServer`` (``self._server``): start/stop, a
    context manager, ``endpoint``, and the shared ``link``, ``faults`` and ``counters``."""

    _server: OriginServer

    def start(self):
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return self._server.endpoint

    @property
    def link(self) -> Link | None:
        return self._server.link

    @link.setter
    def link(self, link: Link | None) -> None:
        self._server.link = link

    @property
    def faults(self) -> Faults:
        return self._server.faults

    @property
    def counters(self) -> Counters:
        return self._server.counters

    def reset(self) -> None:
        """Between tests: zero the counters, drop pending faults, unshape the link."""
        self.counters.reset()
        self.faults.clear()
        self.link = None

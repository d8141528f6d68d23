"""A scriptable hostile origin on loopback for the transfer tests: it speaks just enough of the Hub's
API (the revision JSON, ``/{repo}/resolve/{commit}/{path}``) and of plain HTTP, and each path's
answer is a function the test chooses: endless bodies, stalls, drips, redirects, bad headers.

Example::

    with HostileOrigin() as o:
        o.hub_file("w.bin", b"x" * 13, answer=endless)        # listed as 13 bytes, never stops
        o.route("/plain/f.bin", endless)                       # https-style source
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

COMMIT = "c0ffee" + "0" * 34
REPO = "evil/model"

Answer = Callable[["Handler"], None]


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        origin = self.server.origin
        path = urlsplit(self.path).path
        with origin.lock:
            origin.requests.append((self.command, path))
            count = sum(1 for _, p in origin.requests if p == path)
        answer = origin.routes.get(path)
        if answer is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.count = count  # this request is the count-th one to the path
        answer(self)

    # -- building blocks for answers --------------------------------------------------------------
    def write_raw(self, data: bytes) -> bool:
        """Write to the socket; False once the client has gone."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            return False

    def serve(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        """A well-behaved answer, with Range support."""
        start, end, status = 0, len(data), 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end, status = int(a), min(len(data), int(b) + 1 if b else len(data)), 206
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if not headers or "Content-Length" not in headers:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command != "HEAD":
            self.write_raw(data[start:end])


def serve(data: bytes, headers: dict[str, str] | None = None) -> Answer:
    return lambda h: h.serve(data, headers)


def endless(h: Handler) -> None:
    """200, no length, then bytes until the client hangs up (at most 1 GiB); counts what went out."""
    h.send_response(200)
    h.send_header("Connection", "close")
    h.end_headers()
    h.close_connection = True
    if h.command == "HEAD":
        return
    block = b"A" * (64 << 10)
    for _ in range(1 << 14):
        if not h.write_raw(block):
            return
        with h.server.origin.lock:
            h.server.origin.sent += len(block)


def unsized(data: bytes) -> Answer:
    """HEAD: 200 without Content-Length; GET: ``data`` without Content-Length, then close."""
    def answer(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        if h.command != "HEAD":
            h.write_raw(data)
    return answer


def sized_head(size: int, get: Answer) -> Answer:
    """HEAD announces ``size`` bytes; GET answers with ``get``."""
    def answer(h: Handler) -> None:
        if h.command == "HEAD":
            h.send_response(200)
            h.send_header("Content-Length", str(size))
            h.end_headers()
            return
        get(h)
    return answer


def redirect(location: str) -> Answer:
    def answer(h: Handler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return answer


def first(n: int, bad: Answer, good: Answer) -> Answer:
    """The first ``n`` requests to the path get ``bad``, later ones ``good``."""
    return lambda h: (bad if h.count <= n else good)(h)


def stall(seconds: float = 30.0) -> Answer:
    """Accept the request and say nothing for ``seconds`` (or until the server stops)."""
    def answer(h: Handler) -> None:
        h.server.origin.stopping.wait(seconds)
        h.close_connection = True
    return answer


def drip(data: bytes, every: float = 0.2, headers_too: bool = False) -> Answer:
    """A byte every ``every`` seconds: of the body (after honest headers, 206 for a Range), or of the
    headers too."""
    def answer(h: Handler) -> None:
        h.close_connection = True
        body, status, extra = data, "200 OK", ""
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end = int(a), min(len(data), int(b) + 1 if b else len(data))
            body, status, extra = data[start:end], "206 Partial Content", \
                f"Content-Range: bytes {start}-{end - 1}/{len(data)}\r\n"
        head = (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nAccept-Ranges: bytes\r\n{extra}"
                "\r\n").encode()
        if not headers_too:
            if not h.write_raw(head):
                return
            head = b""
        stream = head + body
        for i in range(len(stream)):
            if h.server.origin.stopping.wait(every) or not h.write_raw(stream[i:i + 1]):
                return
    return answer


def slow(data: bytes, rate: float, piece: int = 1024) -> Answer:
    """``data`` at about ``rate`` bytes/s, ``piece`` bytes at a time: slow but steady."""
    def answer(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        for i in range(0, len(data), piece):
            if h.server.origin.stopping.wait(piece / rate) or not h.write_raw(data[i:i + piece]):
                return
    return answer


def json_answer(body: bytes, *, length: bool = True, chunk: int = 1 << 20) -> Answer:
    """``body`` as the JSON answer, with or without Content-Length, written in pieces."""
    def answer(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if length:
            h.send_header("Content-Length", str(len(body)))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        for i in range(0, len(body), chunk):
            if not h.write_raw(body[i:i + chunk]):
                return
    return answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    origin: HostileOrigin


class HostileOrigin:
    """The server; ``routes`` maps a path to its answer. ``hub_file`` adds a file to the Hub listing."""

    def __init__(self) -> None:
        self.routes: dict[str, Answer] = {}
        self.siblings: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.origin = self
        self.routes[f"/api/models/{REPO}/revision/main"] = self._listing

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.endpoint + path

    def route(self, path: str, answer: Answer) -> None:
        self.routes[path] = answer

    def hub_file(self, name: str, data: bytes, answer: Answer | None = None, *, size: int | None = -1,
                 lfs: bool = False) -> None:
        """List ``name`` (size ``len(data)`` unless given; None: no size) and answer its resolve URL."""
        entry: dict = {"rfilename": name, "blobId": git_oid(data)}
        if size != -1:
            if size is not None:
                entry["size"] = size
        else:
            entry["size"] = len(data)
        if lfs:
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        self.siblings.append(entry)
        self.routes[f"/{REPO}/resolve/{COMMIT}/{name}"] = answer or serve(data)

    def hub_api(self, answer: Answer) -> None:
        """Replace the revision JSON with ``answer``."""
        self.routes[f"/api/models/{REPO}/revision/main"] = answer

    def _listing(self, h: Handler) -> None:
        body = json.dumps({"id": REPO, "sha": COMMIT, "siblings": self.siblings}).encode()
        h.serve(body, {"Content-Type": "application/json"})

    def __enter__(self) -> HostileOrigin:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()

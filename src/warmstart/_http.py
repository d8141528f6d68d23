"""A minimal keep-alive HTTP client on ``http.client``, one instance per worker thread.

Written by hand rather than with requests/httpx because the transfer engine's hot loop must
``readinto`` large preallocated buffers and ``pwrite`` them without intermediate copies, and because
``warmstart pull`` on a warm cache must start in milliseconds (these libraries cost 100+ ms to import).

>>> c = Client()
>>> resp = c.request("GET", "http://127.0.0.1:8000/x", {"Range": "bytes=0-9"})   # doctest: +SKIP
"""

from __future__ import annotations

import errno
import http.client
import json
import re
import socket
import ssl
import time
import urllib.parse

from ._proxy import proxy_for, redact_userinfo
from ._urls import URL_SAFE, check_url, host_key, printable, redact
from .config import format_size
from .errors import ConfigError, TransferError

# re-exported: callers reach the whole client through this module
__all__ = ["Client", "HTTPStatusError", "check_url", "connect", "content_length", "drain", "headers_of",
           "host_key", "is_connection_error", "load_json", "parse_content_range", "printable", "proxy_for",
           "read_bounded", "readinto_some", "redact", "redact_userinfo", "trust_ca_bundle"]

USER_AGENT = "warmstart/0.1"
#: the default bound of a metadata answer (a listing page, a manifest, a revision's JSON)
METADATA_LIMIT = 64 * 2**20
#: the default timeouts: reaching a host, and waiting for the next byte of an answer
CONNECT_TIMEOUT = 5.0
STALL_TIMEOUT = 30.0
#: an answer slower than this (bytes/s, averaged over the stall timeout) is dropped as well
MIN_RATE = 1024

_ssl_context: ssl.SSLContext | None = None
#: (scheme, host:port) -> the TLS context of a CA bundle configured for that host (AWS_CA_BUNDLE for S3)
_host_contexts: dict[tuple[str, str], ssl.SSLContext] = {}


def _context(key: tuple[str, str] | None = None) -> ssl.SSLContext:
    global _ssl_context
    if key is not None and key in _host_contexts:
        return _host_contexts[key]
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def trust_ca_bundle(url: str, cafile: str) -> None:
    """Verify HTTPS connections to ``url``'s host with the certificates in ``cafile`` only (instead of the
    system's), as boto3 does with AWS_CA_BUNDLE. A file that cannot be loaded is a ConfigError."""
    key = host_key(url)
    if key[0] == "https" and key not in _host_contexts:
        try:
            _host_contexts[key] = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle {cafile} ({exc}); fix or unset AWS_CA_BUNDLE") from None


class HTTPStatusError(Exception):
    """A response with an unexpected status; ``retryable`` for 408/429/5xx."""

    def __init__(self, status: int, url: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.url = url
        self.headers = headers or {}
        self.body = body
        super().__init__(f"HTTP {status} from {redact(url)}")

    @property
    def retryable(self) -> bool:
        return self.status in (408, 425, 429) or self.status >= 500

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return min(float(value), 30.0) if value else None
        except ValueError:
            return None




def connect(scheme: str, netloc: str, timeout: float,
            connect_timeout: float | None = None) -> tuple[http.client.HTTPConnection, dict[str, str] | None]:
    """A connection to ``netloc``, through the environment's proxy if any. The second value is None,
    or the headers to add to each request when requests must name the absolute URL (plain HTTP through
    a proxy); HTTPS goes through a CONNECT tunnel, so TLS is end to end. With ``connect_timeout`` the
    connection is made at once under that timeout, and ``timeout`` then bounds each read."""
    if scheme not in ("http", "https"):
        raise TransferError(f"unsupported URL scheme {printable(scheme)!r}: only http and https")
    if connect_timeout is not None:
        conn, absolute = connect(scheme, netloc, connect_timeout)
        connect_within(conn, connect_timeout, netloc)
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, absolute
    parts = urllib.parse.urlsplit("//" + netloc)
    host, port = parts.hostname or "", parts.port or (443 if scheme == "https" else 80)
    proxy = proxy_for(scheme, host)
    if proxy is None:
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=timeout, context=_context((scheme, netloc))), None
        return http.client.HTTPConnection(netloc, timeout=timeout), None
    proxy_host, proxy_port, auth = proxy
    if scheme == "https":
        conn = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=timeout, context=_context((scheme, netloc)))
        conn.set_tunnel(host, port, headers=auth)
        return conn, None
    return http.client.HTTPConnection(proxy_host, proxy_port, timeout=timeout), auth


def connect_within(conn: http.client.HTTPConnection, seconds: float, netloc: str) -> None:
    """``conn.connect()`` under its (connect) timeout. A connection that is not answered in time (a
    blackholed origin) raises ``TimeoutError`` with errno ``ETIMEDOUT``, which tells it apart from a
    read that stalls (errno None) for the retry policy (``warmstart._retry``)."""
    try:
        conn.connect()
    except TimeoutError as exc:
        if exc.errno is not None:
            raise
        raise TimeoutError(errno.ETIMEDOUT, f"no answer from {printable(netloc)} within {seconds:g} s "
                           "(WARMSTART_CONNECT_TIMEOUT)") from None


class Client:
    """Persistent connections keyed by (scheme, host:port). Not thread-safe: one per thread."""

    def __init__(self, timeout: float = STALL_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._absolute: dict[tuple[str, str], dict[str, str]] = {}  # plain HTTP through a proxy

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        conn = self._conns.get(key)
        if conn is None:
            conn, absolute = connect(scheme, netloc, self.timeout, self.connect_timeout)
            self._conns[key] = conn
            if absolute is not None:
                self._absolute[key] = absolute
        return conn

    def drop(self, url: str | None = None) -> None:
        """Close one host's connection (after an error or an abandoned body), or all of them."""
        keys = [host_key(url)] if url else list(self._conns)
        for key in keys:
            conn = self._conns.pop(key, None)
            self._absolute.pop(key, None)
            if conn is not None:
                conn.close()

    def close(self) -> None:
        self.drop()

    def abort(self) -> None:
        """From another thread: wake any blocked read by shutting the sockets down."""
        for conn in list(self._conns.values()):
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def request(self, method: str, url: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """Send one request on a kept-alive connection; reconnects once if the old one went stale. A URL
        the client cannot request (another scheme, a malformed host or port) is a TransferError."""
        p = urllib.parse.urlsplit(check_url(url, what="request"))
        path = p.path or "/"
        if p.query:
            path += "?" + p.query
        hdrs = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if headers:
            hdrs.update(headers)
        for attempt in (0, 1):
            fresh = (p.scheme, p.netloc) not in self._conns or self._conns[(p.scheme, p.netloc)].sock is None
            try:
                conn = self._conn(p.scheme, p.netloc)
                if conn.sock is None:  # closed by the server after the last answer: reconnect, same timeouts
                    conn.timeout = self.connect_timeout
                    connect_within(conn, self.connect_timeout, p.netloc)
                    if conn.sock is not None:
                        conn.sock.settimeout(self.timeout)
                target, extra = path, self._absolute.get((p.scheme, p.netloc))
                if extra is not None:  # through a proxy: the absolute URL, and the proxy's credentials
                    target = f"{p.scheme}://{p.netloc}{path}"
                    hdrs.update(extra)
                conn.request(method, target, headers=hdrs)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.drop(url)
                if fresh or attempt:
                    raise ConnectionError(f"{redact(url)}: {exc}") from exc
                continue
            except (OSError, http.client.HTTPException):
                self.drop(url)
                raise
            if resp.will_close:
                self._conns.pop((p.scheme, p.netloc), None)
                self._absolute.pop((p.scheme, p.netloc), None)
            return resp
        raise AssertionError("unreachable")

    def follow(
        self, method: str, url: str, headers: dict[str, str] | None = None, *, max_redirects: int = 8,
        hops: list[http.client.HTTPResponse] | None = None,
    ) -> tuple[str, http.client.HTTPResponse]:
        """Request ``url`` following redirects; returns (final URL, response). Credentials are not
        sent to another host. A redirect to anything but an http(s) URL with a host, or more than
        ``max_redirects`` of them, is a TransferError. ``hops``, when given, receives each redirect's
        (drained) response, e.g. for the Hub's ``X-Linked-Size`` and ``X-Linked-Etag``."""
        headers = dict(headers or {})
        origin = host_key(url)
        for _ in range(max_redirects + 1):
            resp = self.request(method, url, headers)
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                drain(resp)
                if hops is not None:
                    hops.append(resp)
                if not location:
                    raise HTTPStatusError(resp.status, url)
                try:
                    url = urllib.parse.urljoin(url, location)
                except ValueError:  # e.g. a malformed IPv6 host: urljoin parses the target
                    url = location
                # non-ASCII characters and spaces percent-encoded, as browsers and requests do
                url = urllib.parse.quote(url, safe=URL_SAFE)
                check_url(url, what="redirect")
                if host_key(url) != origin:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                continue
            return url, resp
        host = printable(urllib.parse.urlsplit(url).hostname or "the origin")
        raise TransferError(f"too many redirects ({max_redirects}) from {host}; check the URL or the origin")


def content_length(value: str | None) -> int | None:
    """A Content-Length header as an int, or None when absent or not a plain non-negative number.

    >>> content_length("13"), content_length("abc"), content_length("-1"), content_length("²")
    (13, None, None, None)
    """
    value = (value or "").strip()
    if not value or len(value) > 19 or not value.isascii() or not value.isdigit():
        return None
    return int(value)



def drain(resp: http.client.HTTPResponse, limit: int = 1 << 16) -> bytes:
    """Read a (small) body so the connection can be reused; returns what was read."""
    try:
        return resp.read(limit) if resp.length is None or resp.length <= limit else resp.read(0)
    except (OSError, http.client.HTTPException):
        return b""


def headers_of(resp: http.client.HTTPResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.getheaders()}


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)", re.ASCII)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes 0-9/100`` -> (0, 10, 100) with an exclusive end; None when malformed (a negative or
    non-numeric value, an end before the start, a range beyond the total).

    >>> parse_content_range("bytes 0-9/100"), parse_content_range("bytes 5-1/100"), parse_content_range("x")
    ((0, 10, 100), None, None)
    """
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2)) + 1
    total = None if m.group(3) == "*" else int(m.group(3))
    if end <= start or (total is not None and end > total):
        return None
    return start, end, total


def readinto_some(resp: http.client.HTTPResponse, buf: memoryview) -> int:
    """Read at most ``len(buf)`` bytes of the body with at most one ``recv``; 0 at its end.

    ``resp.readinto`` loops until the buffer is full, so a body that drips a byte at a time blocks it
    for ever and shows no progress; reading what has arrived lets a caller measure the rate and give
    up on a body that is too slow. Bytes go straight into ``buf`` (no copy) unless the body is chunked.
    """
    if resp.fp is None or not len(buf):
        return 0
    if resp.chunked:
        data = resp.read1(len(buf))
        buf[: len(data)] = data
        return len(data)
    if resp.length is not None:
        buf = buf[: resp.length]
        if not len(buf):
            resp.close()
            return 0
    n = resp.fp.readinto1(buf)
    if not n:
        resp.close()
        return 0
    if resp.length is not None:
        resp.length -= n
        if not resp.length:
            resp.close()  # as http.client does at the end of a body: the connection stays open
    return n


def read_bounded(resp: http.client.HTTPResponse, limit: int = METADATA_LIMIT, *, what: str, hint: str,
                 stall_s: float = STALL_TIMEOUT, min_rate: int = MIN_RATE) -> bytes:
    """The whole body of a metadata answer, at most ``limit`` bytes, else a one-line TransferError
    (``what`` names the answer, ``hint`` says what to check). The body must also keep coming: at least
    ``min_rate`` bytes/s over each ``stall_s`` seconds (a byte at a time would otherwise hold a pull
    for ever). The caller drops the connection after an error (the rest of the body is unread).

    >>> read_bounded(resp, 64 << 20, what="the Hub's listing", hint="check HF_ENDPOINT")   # doctest: +SKIP
    """
    declared = resp.length
    if declared is not None and declared > limit:
        raise TransferError(f"{what} is larger than {format_size(limit, binary=True)} ({format_size(declared, binary=True)} announced); {hint}")
    out = bytearray()
    buf = memoryview(bytearray(min(limit + 1, 1 << 20)))
    mark_t, mark_n = time.monotonic(), 0
    while n := readinto_some(resp, buf[: min(len(buf), limit + 1 - len(out))]):
        out += buf[:n]
        if len(out) > limit:
            raise TransferError(f"{what} is larger than {format_size(limit, binary=True)}; {hint}")
        now = time.monotonic()
        if now - mark_t >= stall_s:
            if len(out) - mark_n < min_rate * (now - mark_t):
                raise TransferError(f"{what} arrives too slowly ({len(out) - mark_n} bytes in {now - mark_t:.0f} s)"
                                    f"; {hint}")
            mark_t, mark_n = now, len(out)
    return bytes(out)


def load_json(data: bytes, *, what: str, hint: str):
    """``json.loads`` with every failure (invalid, not UTF-8, nested too deeply) as a one-line TransferError.

    >>> load_json(b"[" * 100000, what="the listing", hint="check HF_ENDPOINT")
    Traceback (most recent call last):
    ...
    warmstart.errors.TransferError: the listing is not valid JSON (nested too deeply); check HF_ENDPOINT
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise TransferError(f"{what} is not valid JSON (nested too deeply); {hint}") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise TransferError(f"{what} is not valid JSON; {hint}") from None




def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, http.client.HTTPException, socket.timeout))

"""A minimal keep-alive HTTP client on ``http.client``, one instance per worker thread.

Written by hand rather than with requests/httpx because the transfer engine's hot loop must
``readinto`` large preallocated buffers and ``pwrite`` them without intermediate copies, and because
``warmstart pull`` on a warm cache must start in milliseconds (these libraries cost 100+ ms to import).

>>> c = Client()
>>> # resp = c.request("GET", "http://127.0.0.1:8000/x", {"Range": "bytes=0-9"})   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import re
import socket
import ssl
import urllib.parse

from ._redact import redact_url

USER_AGENT = "warmstart/0.1"

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
            from .errors import ConfigError

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


def redact(url: str) -> str:
    """The URL as it may be printed: no query string (signed URLs carry credentials there), fragment
    or ``user:password@`` (see ``warmstart._redact``)."""
    return redact_url(url)


def host_key(url: str) -> tuple[str, str]:
    p = urllib.parse.urlsplit(url)
    return p.scheme, p.netloc


# -- forward proxies --------------------------------------------------------------------------------
def proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """The forward proxy for ``scheme://host`` from the environment, as curl and requests read it:
    ``https_proxy`` / ``http_proxy``, then ``all_proxy`` (lower case first, then upper case), unless
    ``no_proxy`` lists the host (``*``, a name and its subdomains, an IP or a CIDR range). Loopback
    hosts never go through a proxy. Returns (proxy host, port, Proxy-Authorization header) or None."""
    def env(name: str) -> str:
        return os.environ.get(name) or os.environ.get(name.upper()) or ""

    names = [f"{scheme}_proxy", "all_proxy"]
    name = next((n for n in names if env(n)), None)
    if name is None or _is_loopback(host) or _no_proxy(host, env("no_proxy")):
        return None
    value = env(name).strip()
    p = urllib.parse.urlsplit(value if "://" in value else "http://" + value)
    try:
        port = p.port or 80
    except ValueError:
        port = 0
    if p.scheme != "http" or not p.hostname or not port:
        from .errors import ConfigError

        raise ConfigError(f"{name.upper()}={redact_userinfo(value)} is not supported: give an http:// proxy "
                          "(http://HOST:PORT, with user:password@ if it needs them), or unset it")
    headers = {}
    if p.username is not None:
        creds = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    return p.hostname, port, headers


def redact_userinfo(url: str) -> str:
    """``http://user:secret@host`` -> ``http://***@host``."""
    head, sep, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if sep and "://" in head else ("***@" + tail if sep else url)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_proxy(host: str, value: str) -> bool:
    host = host.lower().rstrip(".")
    for entry in value.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:  # a CIDR range
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if entry.startswith("[") and "]" in entry:  # [IPv6]:port
            entry = entry[1:entry.index("]")]
        elif entry.count(":") == 1:  # host:port: the port is not compared
            entry = entry.split(":")[0]
        entry = entry.lstrip(".").rstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def connect(scheme: str, netloc: str, timeout: float) -> tuple[http.client.HTTPConnection, dict[str, str] | None]:
    """A connection to ``netloc``, through the environment's proxy if any. The second value is None,
    or the headers to add to each request when requests must name the absolute URL (plain HTTP through
    a proxy); HTTPS goes through a CONNECT tunnel, so TLS is end to end."""
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {scheme!r}")
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


class Client:
    """Persistent connections keyed by (scheme, host:port). Not thread-safe: one per thread."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._absolute: dict[tuple[str, str], dict[str, str]] = {}  # plain HTTP through a proxy

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        conn = self._conns.get(key)
        if conn is None:
            conn, absolute = connect(scheme, netloc, self.timeout)
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
        """Send one request on a kept-alive connection; reconnects once if the old one went stale."""
        p = urllib.parse.urlsplit(url)
        path = p.path or "/"
        if p.query:
            path += "?" + p.query
        hdrs = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if headers:
            hdrs.update(headers)
        for attempt in (0, 1):
            conn = self._conn(p.scheme, p.netloc)
            fresh = conn.sock is None
            target, extra = path, self._absolute.get((p.scheme, p.netloc))
            if extra is not None:  # through a proxy: the absolute URL, and the proxy's credentials
                target = f"{p.scheme}://{p.netloc}{path}"
                hdrs.update(extra)
            try:
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
        self, method: str, url: str, headers: dict[str, str] | None = None, *, max_redirects: int = 8
    ) -> tuple[str, http.client.HTTPResponse]:
        """Request ``url`` following redirects; returns (final URL, response). Credentials are not
        sent to another host."""
        headers = dict(headers or {})
        origin = host_key(url)
        for _ in range(max_redirects + 1):
            resp = self.request(method, url, headers)
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                drain(resp)
                if not location:
                    raise HTTPStatusError(resp.status, url)
                url = urllib.parse.urljoin(url, location)
                if host_key(url) != origin:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                continue
            return url, resp
        raise HTTPStatusError(310, url)


def drain(resp: http.client.HTTPResponse, limit: int = 1 << 16) -> bytes:
    """Read a (small) body so the connection can be reused; returns what was read."""
    try:
        return resp.read(limit) if resp.length is None or resp.length <= limit else resp.read(0)
    except (OSError, http.client.HTTPException):
        return b""


def headers_of(resp: http.client.HTTPResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.getheaders()}


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes 0-9/100`` -> (0, 10, 100) with an exclusive end."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)) + 1, total


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, http.client.HTTPException, socket.timeout))

"""A shaping reverse proxy on loopback, for origins we did not write (moto's S3, the CNCF registry).

Requests are forwarded as they are (the ``Host`` header included, so signed S3 requests and registry
upload locations keep naming the proxy); response bodies are streamed back (never held whole)
through :mod:`.shaping`: the
proxy's ``link`` shapes them, its ``faults`` inject 5xx/429/403 statuses, resets, truncations and
corrupt bytes, and its ``counters`` count requests and body bytes per path.

Example::

    with ShapingProxy("127.0.0.1", moto_port, link=Link(20e6, 320e6, 0.02)) as proxy:
        s3 = boto3.client("s3", endpoint_url=proxy.endpoint, ...)
        proxy.faults.add("status5xx", path_glob="/bucket/*", status=503, times=2)
"""

from __future__ import annotations

import http.client

from .shaping import Link, OriginHandler, OriginServer, ServedOrigin

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
       "content-length"}
RELAY_PIECE = 1 << 20  # upstream bodies are streamed in pieces this big, never held whole


class _ProxyServer(OriginServer):
    upstream: tuple[str, int]


class ProxyHandler(OriginHandler):
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self._up: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        if self._up is not None:
            self._up.close()
        super().finish()

    def _forward(self) -> None:
        if not self.begin():
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body is not None or self.command in ("PUT", "POST", "PATCH"):
            headers["Content-Length"] = str(length)
        for attempt in (0, 1):
            if self._up is None:
                self._up = http.client.HTTPConnection(*self.server.upstream, timeout=120)
            try:
                self._up.request(self.command, self.path, body=body, headers=headers)
                resp = self._up.getresponse()
                break
            except (ConnectionError, http.client.HTTPException):
                self._up.close()
                self._up = None
                if attempt:
                    raise
        status, up_headers = resp.status, resp.getheaders()
        buffered: bytes | None = None
        if self.command == "HEAD":
            resp.read()
            size = int(resp.getheader("Content-Length") or 0)
        elif resp.length is None:  # no length announced (chunked, or until close): buffer the body
            buffered = resp.read()
            size = len(buffered)
        else:
            size = resp.length
        self.send_response(status)
        for k, v in up_headers:
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD" or not size:
            return
        self.wfile.flush()
        if buffered is not None:
            self.send_body(buffered, 0, size)
        else:
            self._relay(resp, size)

    def _relay(self, resp: http.client.HTTPResponse, length: int) -> None:
        """Stream an upstream body through the link, piece by piece, with the body faults of
        :meth:`OriginHandler.send_body` (offsets are body offsets)."""
        path = self.url_path
        fault, limit, flip = self.body_fault(length)
        done = 0
        try:
            while done < limit:
                piece = resp.read(min(RELAY_PIECE, limit - done))
                if not piece:
                    raise ConnectionResetError("upstream body ended early")
                rel = None if flip is None else (flip[0] - done, flip[1] - done)
                self._stream(piece, 0, len(piece), path, rel)
                done += len(piece)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            self._drop_upstream()
            return
        if done < length:
            self._drop_upstream()  # body left unread upstream
        self.end_body_fault(fault)

    def _drop_upstream(self) -> None:
        if self._up is not None:
            self._up.close()
            self._up = None

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward


class ShapingProxy(ServedOrigin):
    """Forward ``127.0.0.1:<port>`` to ``upstream``; ``link``, ``faults``, ``counters`` as any origin."""

    def __init__(self, host: str, port: int, *, link: Link | None = None) -> None:
        self._server = _ProxyServer(("127.0.0.1", 0), ProxyHandler, link=link)
        self._server.upstream = (host, port)

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1]

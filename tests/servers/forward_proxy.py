"""A forward HTTP proxy on loopback, as corporate networks run them: ``CONNECT host:port`` tunnels (for
HTTPS) and absolute-form requests (``GET http://host:port/path``) for plain HTTP.

Names are resolved through ``hosts`` (e.g. ``{"origin.test": "127.0.0.1"}``), so a client can be sent
to a name only the proxy knows: its traffic then demonstrably went through the proxy. With ``auth``
(``"user:password"``) requests without that ``Proxy-Authorization`` get 407.

    with ForwardProxy(hosts={"origin.test": "127.0.0.1"}) as proxy:
        os.environ["HTTP_PROXY"] = proxy.url
        ...
        assert proxy.seen == [("GET", "http://origin.test:8000/a.bin")]
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ForwardProxy:
    def __init__(self, hosts: dict[str, str] | None = None, auth: str | None = None) -> None:
        self.hosts = dict(hosts or {})
        self.auth = auth
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _allowed(self) -> bool:
                proxy.seen.append((self.command, self.path))
                if proxy.auth is None:
                    return True
                want = "Basic " + base64.b64encode(proxy.auth.encode()).decode()
                if self.headers.get("Proxy-Authorization") == want:
                    return True
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def _address(self, host: str, port: int) -> tuple[str, int]:
                return proxy.hosts.get(host, host), port

            def do_CONNECT(self) -> None:  # noqa: N802
                if not self._allowed():
                    return
                host, _, port = self.path.rpartition(":")
                upstream = socket.create_connection(self._address(host, int(port)), timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                conns = [self.connection, upstream]
                try:
                    while True:
                        ready, _, _ = select.select(conns, [], [], 10)
                        if not ready:
                            return
                        for sock in ready:
                            data = sock.recv(1 << 16)
                            if not data:
                                return
                            (upstream if sock is self.connection else self.connection).sendall(data)
                except OSError:
                    return
                finally:
                    upstream.close()

            def _forward(self) -> None:
                if not self._allowed():
                    return
                url = urllib.parse.urlsplit(self.path)
                if url.scheme != "http":
                    self.send_error(400, "absolute http:// URL expected")
                    return
                conn = http.client.HTTPConnection(*self._address(url.hostname or "", url.port or 80), timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization",
                                                                                        "proxy-connection")}
                target = url.path + (f"?{url.query}" if url.query else "")
                conn.request(self.command, target, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # a HEAD answer has no body but tells the length of the one a GET would get
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_GET = do_HEAD = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> ForwardProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

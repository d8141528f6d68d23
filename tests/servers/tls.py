"""HTTPS on loopback with a self-signed certificate, for the TLS tests (CA bundles, proxies).

    cert, key = self_signed(tmp_path, "origin.test")       # skips the test without the openssl command
    with TlsServer(cert, key, b"ok") as server:
        url = f"https://127.0.0.1:{server.port}/x"
"""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest


def self_signed(directory: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``name`` (an IP or a DNS name) signed by itself, and its key."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    san = f"IP:{name}" if name.replace(".", "").isdigit() else f"DNS:{name}"
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={name}", "-addext", f"subjectAltName={san}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def wrap(server: http.server.HTTPServer, cert: Path, key: Path) -> None:
    """Serve ``server`` over TLS with ``cert`` (before it starts serving)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)


class TlsServer:
    """Answers every GET with 200 and ``body``."""

    def __init__(self, cert: Path, key: Path, body: bytes) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        wrap(self.server, cert, key)
        self.port = self.server.server_port

    def __enter__(self) -> TlsServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

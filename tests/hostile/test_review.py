"""Hostile cases found by an adversarial review after issue 14: malformed HTTP answers and redirect loops,
colliding snapshot folder names, and a pull racing ``rm`` over a blob it reuses."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import warmstart
from warmstart.config import Settings
from warmstart.errors import TransferError, WarmstartError


def _settings(home: Path, **kw) -> Settings:
    return dataclasses.replace(Settings.from_env(), quiet=True, home=home, **kw)


@pytest.fixture
def raw_origin() -> Iterator:
    """A loopback server answering every request with ``answer(request)`` bytes, then closing."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    state = {"answer": lambda req: b""}

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                try:
                    req = conn.recv(65536)
                    conn.sendall(state["answer"](req))
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}/m/model.bin"
    yield state
    sock.close()


def test_a_malformed_http_answer_is_one_line_without_its_bytes(raw_origin, ws_home):
    raw_origin["answer"] = lambda req: b"\x00\x01\x02garbage \x1b[31mEVIL\r\n\r\n"
    with pytest.raises(TransferError) as info:
        warmstart.pull(raw_origin["url"], settings=_settings(ws_home))
    msg = str(info.value)
    assert "did not answer in HTTP" in msg and "\n" not in msg
    assert "garbage" not in msg and "\x1b" not in msg and "EVIL" not in msg


def test_a_redirect_loop_is_too_many_redirects_not_http_310(raw_origin, ws_home):
    raw_origin["answer"] = lambda req: (b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n"
                                        b"Connection: close\r\n\r\n")
    with pytest.raises(WarmstartError) as info:
        warmstart.pull(raw_origin["url"], settings=_settings(ws_home))
    msg = str(info.value)
    assert "too many redirects (8) from 127.0.0.1" in msg, msg
    assert "310" not in msg

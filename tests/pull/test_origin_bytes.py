"""No byte downloaded twice: a pull of a file of many chunks over several connections makes the
origin send exactly the file's bytes, whether the link is shaped or not (the origin's own counters
are the reference). Splitting a chunk for an idle worker must never cut a response short."""

from __future__ import annotations

import os
import time

import pytest

import warmstart
from tests.pull.conftest import MiB, assert_blobs_sound, sha256
from tests.servers.shaping import Link

SIZE = 48 * MiB


def _served_when_quiet(hub, glob: str, settle: float = 0.3, timeout: float = 10.0) -> int:
    """The origin's body bytes for ``glob`` once they hold still for ``settle`` seconds (a server
    thread counts a slice just after it went out, which may be after the client has it)."""
    deadline = time.monotonic() + timeout
    last, since = hub.counters.bytes_for(glob), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < settle:
        time.sleep(0.02)
        now = hub.counters.bytes_for(glob)
        if now != last:
            last, since = now, time.monotonic()
    return last


@pytest.mark.parametrize("chunk", [2 * MiB, 16 * MiB], ids=["2M-chunks", "16M-chunks"])
@pytest.mark.parametrize("link", [None, Link(per_conn_bps=60e6, total_bps=240e6)], ids=["unshaped", "shaped"])
def test_a_multi_chunk_pull_fetches_each_byte_once(ws_home, hub, make_repo, monkeypatch, link, chunk):
    data = os.urandom(SIZE)
    repo_id = make_repo({"model.safetensors": data, "config.json": b'{"model_type": "llama"}'})
    monkeypatch.setenv("WARMSTART_CHUNK_SIZE", str(chunk))
    monkeypatch.setenv("WARMSTART_MIN_CONNECTIONS", "4")
    monkeypatch.setenv("WARMSTART_MAX_CONNECTIONS", "8")
    hub.link = link
    snap = warmstart.pull(repo_id)
    assert sha256((snap.path / "model.safetensors").read_bytes()) == sha256(data)
    assert hub.counters.requests_for("/blobs/*", "GET") >= SIZE // chunk  # many chunks, several requests
    assert _served_when_quiet(hub, "/blobs/*") == SIZE  # each byte once: not one more
    assert snap.downloaded == SIZE + len(b'{"model_type": "llama"}')
    assert_blobs_sound(ws_home)

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


# ------------------------------------------------------------- a pull racing rm over a reused blob


@pytest.mark.parametrize("racer", ["rm", "unlink"])
def test_a_reused_blob_removed_during_the_pull_is_never_recorded_missing(hub, ws_home, monkeypatch, racer):
    """Revision 2 reuses revision 1's ``w.bin`` blob (an LFS file: found by its sha256). Right after the pull finds that blob present,
    ``rm`` of revision 1 runs (``rm``: through warmstart, which must see the pull's lease and keep it;
    ``unlink``: the blob simply vanishes, as when an ``rm`` checked the leases just before they were
    taken). The snapshot the pull records must have every blob."""
    import uuid

    from tests.servers.hub import HubRepo
    from warmstart import pipeline
    from warmstart.errors import InUseError

    repo = HubRepo(f"review/race-{uuid.uuid4().hex[:8]}", {"config.json": b'{"a": 1}', "w.bin": b"one" * 100})
    new = {"config.json": b'{"a": 2}', "w.bin": b"one" * 100}
    hub.add_repo(repo)
    ref = f"hf://{repo.repo_id}"
    s = _settings(ws_home)
    first = warmstart.pull(ref, settings=s)
    repo.commit({"config.json": new["config.json"]})
    real = pipeline._present
    raced = []

    def present_then_race(cache, f, opts):
        entry = real(cache, f, opts)
        if entry is not None and not raced:
            raced.append(f.path)
            if racer == "rm":
                try:
                    warmstart.cache(settings=s).rm(ref, first.revision)
                except InUseError:
                    pass
            else:
                blob = cache.store.path(entry.digest)
                blob.chmod(0o644)
                blob.unlink()
        return entry

    monkeypatch.setattr(pipeline, "_present", present_then_race)
    hub.counters.reset()
    snap = warmstart.pull(ref, settings=s)
    if racer == "rm":  # the lease taken before the check kept the blob: nothing fetched again
        assert hub.counters.bytes_for("*/w.bin") == 0
    assert raced == ["w.bin"] and snap.revision != first.revision
    for f in snap.files:
        assert f.blob.exists(), f.path
        assert (snap.path / f.path).read_bytes() == new[f.path]
    assert warmstart.cache(settings=s).verify().ok

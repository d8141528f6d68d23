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
    from warmstart import ingest
    from warmstart.errors import InUseError

    repo = HubRepo(f"review/race-{uuid.uuid4().hex[:8]}", {"config.json": b'{"a": 1}', "w.bin": b"one" * 100})
    new = {"config.json": b'{"a": 2}', "w.bin": b"one" * 100}
    hub.add_repo(repo)
    ref = f"hf://{repo.repo_id}"
    s = _settings(ws_home)
    first = warmstart.pull(ref, settings=s)
    repo.commit({"config.json": new["config.json"]})
    real = ingest.present
    raced = []

    def present_then_race(cache, f, **kw):
        entry = real(cache, f, **kw)
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

    monkeypatch.setattr(ingest, "present", present_then_race)
    hub.counters.reset()
    snap = warmstart.pull(ref, settings=s)
    if racer == "rm":  # the lease taken before the check kept the blob: nothing fetched again
        assert hub.counters.bytes_for("*/w.bin") == 0
    assert raced == ["w.bin"] and snap.revision != first.revision
    for f in snap.files:
        assert f.blob.exists(), f.path
        assert (snap.path / f.path).read_bytes() == new[f.path]
    assert warmstart.cache(settings=s).verify().ok


# ------------------------------------------------------------------ snapshot folder names never collide


def test_two_sources_never_share_a_snapshot_folder(http_origin, ws_home):
    """``…/a-b/…`` and ``…/a~b/…`` (and two long URLs alike in their first 200 characters) are different
    sources: serving the same bytes (so the same revision), each keeps its own view, and ``rm`` of one
    leaves the other's view whole."""
    long = "x" * 230
    s = _settings(ws_home)
    for left, right in [("a-b/w.bin", "a~b/w.bin"), (f"{long}/1/w.bin", f"{long}/2/w.bin")]:
        http_origin.put(left, b"the same bytes")
        http_origin.put(right, b"the same bytes")
        a = warmstart.pull(http_origin.url(left), settings=s)
        b = warmstart.pull(http_origin.url(right), settings=s)
        assert a.revision == b.revision and a.path != b.path
        warmstart.cache(settings=s).rm(http_origin.url(left))
        assert not a.path.exists()
        assert (b.path / "w.bin").read_bytes() == b"the same bytes"
        assert warmstart.cache(settings=s).verify().ok


def test_a_view_under_the_old_folder_name_is_rebuilt_and_removed(http_origin, ws_home):
    """A view made by an earlier version (folder name without the hash) keeps working: the next pull makes
    the view under the new name, ``rm`` removes both, and a rebuilt index names the source exactly."""
    import shutil

    from warmstart.cache.views import _legacy_folder

    http_origin.put("old/w.bin", b"weights")
    ref = http_origin.url("old/w.bin")
    s = _settings(ws_home)
    snap = warmstart.pull(ref, settings=s)
    key = warmstart.cache(settings=s).index.snapshots()[0].source
    old = snap.path.parent.with_name(_legacy_folder(key)) / snap.path.name
    old.parent.mkdir(parents=True)
    shutil.move(snap.path, old)  # as an earlier version left it
    shutil.rmtree(snap.path.parent)
    again = warmstart.pull(ref, settings=s)
    assert again.path == snap.path and (again.path / "w.bin").read_bytes() == b"weights"
    assert not old.parent.exists()  # replaced by the view under the new name
    warmstart.cache(settings=s).rebuild_index()
    assert [row.source for row in warmstart.cache(settings=s).index.snapshots()] == [key]
    shutil.copytree(snap.path, old, symlinks=True)  # an old view the pull did not replace
    warmstart.cache(settings=s).rm(ref)
    assert not old.exists() and not snap.path.exists()
    assert not any((ws_home / "snapshots").rglob("*.bin"))


@pytest.mark.parametrize("ref", ["hf://a--b/c", "hf://a/b--c", "a--b/c"])
def test_hub_repo_ids_with_double_dash_are_refused(ref, ws_home):
    from warmstart.errors import RefError

    with pytest.raises(RefError, match="no '--'"):
        warmstart.pull(ref, settings=_settings(ws_home))

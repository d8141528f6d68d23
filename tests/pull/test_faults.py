"""Bad input and origin faults: clear errors, nothing corrupt published, transient faults survived."""

from __future__ import annotations

import os
import shutil

import pytest

import warmstart
from tests.pull.conftest import (
    TINY,
    BlobWatcher,
    MiB,
    assert_blobs_sound,
    assert_snapshot_matches,
    blob_files,
    origin_files,
    sha256,
)
from warmstart.cache import home
from warmstart.errors import (
    CacheFullError,
    GatedRepoError,
    IntegrityError,
    NotFoundError,
    RefError,
    UnsafePathError,
)

HF_TEST_TOKEN = "hf_test_token"


def _tree(home):
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if not p.is_dir())


# -------------------------------------------------------------------------------------------- bad input


def test_unknown_repo_file_and_revision_are_not_found(ws_home, hub):
    with pytest.raises(NotFoundError, match="not found"):
        warmstart.pull("hf://test-org/no-such-model")
    with pytest.raises(NotFoundError, match="no-such-rev"):
        warmstart.pull(TINY, revision="no-such-rev")
    with pytest.raises(NotFoundError, match=r"nothing\*"):
        warmstart.pull(TINY, include="nothing*")
    with pytest.raises(FileNotFoundError):  # the builtin a caller would catch
        warmstart.pull(f"hf://{TINY}@{'0' * 40}")
    assert hub.counters.bytes_total == 0
    assert blob_files(ws_home) == {}


@pytest.mark.parametrize("repo", ["test-org/gated", "test-org/private"])
def test_gated_and_private_need_a_token(ws_home, hub, monkeypatch, repo):
    expected_error = GatedRepoError if repo.endswith("gated") else NotFoundError
    with pytest.raises(expected_error, match="HF_TOKEN") as exc:
        warmstart.pull(repo)
    assert "\n" not in str(exc.value)
    assert hub.counters.bytes_total == 0
    monkeypatch.setenv("HF_TOKEN", HF_TEST_TOKEN)
    snap = warmstart.pull(repo)
    assert_snapshot_matches(snap.path, origin_files(hub, repo))


def test_wrong_token_is_reported(ws_home, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    with pytest.raises((GatedRepoError, NotFoundError), match="HF_TOKEN"):
        warmstart.pull("test-org/gated")


@pytest.mark.parametrize("ref", ["", "   ", "hf://", "hf://org", "hf://org/name@", "hf://org/name@a..b",
                                 "org/na me", "hf://org/name\x00", "ftp://host/x", "hf://-org/name"])
def test_malformed_refs(ws_home, hub, ref):
    with pytest.raises(RefError, match="expected hf://ORG/NAME"):
        warmstart.pull(ref)
    with pytest.raises(ValueError):
        warmstart.pull(ref)
    assert hub.counters.requests_for("*") == 0


@pytest.mark.parametrize("bad", ["../escape.bin", "sub/../../escape.bin", "/etc/passwd", "a\x00b.bin",
                                 "..\\escape.bin", "C:\\windows.bin", "./x.bin", "a//b.bin"])
def test_listing_with_escaping_names_is_rejected_before_writing(ws_home, hub, monkeypatch, bad):
    real = hub.model_info_json

    def hostile(repo, sha, blobs):
        info = real(repo, sha, blobs)
        if repo.repo_id == TINY:
            info["siblings"].append({"rfilename": bad, "size": 4, "blobId": "0" * 40})
        return info

    monkeypatch.setattr(hub, "model_info_json", hostile)
    before = _tree(ws_home)
    with pytest.raises(UnsafePathError, match="escape the snapshot"):
        warmstart.pull(TINY)
    with pytest.raises(ValueError):
        warmstart.pull(f"hf://{TINY}", to=ws_home.parent / "out")
    assert _tree(ws_home) == before  # blobs/, hub/, tmp/ unchanged
    assert not (ws_home.parent / "out").exists() and not (ws_home.parent / "escape.bin").exists()
    assert hub.counters.requests_for("*/resolve/*") == 0 and hub.counters.bytes_total == 0


# ------------------------------------------------------------------------------------------- integrity


@pytest.fixture
def model(make_repo):
    files = {"model.safetensors": os.urandom(6 * MiB), "small.bin": os.urandom(300_000),
             "config.json": b'{"x": 1}' * 100}
    return make_repo(files), files


# LFS files are checked by sha256 (chunked and streamed); the others by their git blob id
CORRUPTIBLE = ["*/model.safetensors", "*/small.bin", "*/config.json"]


@pytest.mark.parametrize("glob", CORRUPTIBLE)
def test_corrupt_bytes_are_discarded_and_fetched_again(ws_home, hub, model, glob):
    repo_id, files = model
    hub.faults.add("corrupt", glob, times=1, after_bytes=100, nbytes=8)
    with BlobWatcher(ws_home) as watcher:
        snap = warmstart.pull(repo_id)
    assert [k for k, _ in hub.faults.history] == ["corrupt"]
    assert_snapshot_matches(snap.path, files)
    assert watcher.bad == []
    assert_blobs_sound(ws_home)


@pytest.mark.parametrize("glob", CORRUPTIBLE)
def test_always_corrupt_is_an_integrity_error(ws_home, hub, model, glob):
    repo_id, files = model
    name = glob.rsplit("/", 1)[1]
    hub.faults.add("corrupt", glob, times=None, after_bytes=0, nbytes=4)
    with BlobWatcher(ws_home) as watcher, pytest.raises(IntegrityError, match=name):
        warmstart.pull(repo_id)
    assert watcher.bad == []
    assert sha256(files[name]) not in blob_files(ws_home)
    assert_blobs_sound(ws_home)
    assert not list((ws_home / "hub").rglob(name))  # no view names the corrupt file
    # once the origin is healthy again the pull succeeds
    hub.faults.clear()
    assert_snapshot_matches(warmstart.pull(repo_id).path, files)


def test_not_enough_disk_fails_before_downloading(ws_home, hub, model, monkeypatch):
    repo_id, files = model
    real = shutil.disk_usage

    def tiny_disk(path):
        u = real(path)
        return type(u)(u.total, u.total - 1000, 1000)

    monkeypatch.setattr(home.shutil, "disk_usage", tiny_disk)
    with pytest.raises(CacheFullError, match="disk") as exc:
        warmstart.pull(repo_id)
    assert isinstance(exc.value, OSError)
    assert hub.counters.bytes_total == 0 and hub.counters.requests_for("*/resolve/*") == 0
    assert blob_files(ws_home) == {} and not list((ws_home / "tmp").glob("*.part"))
    monkeypatch.setattr(home.shutil, "disk_usage", real)
    assert_snapshot_matches(warmstart.pull(repo_id).path, files)


# --------------------------------------------------------------------------------------- transient faults


@pytest.mark.parametrize("kind, glob, kw", [
    ("status5xx", "*/model.safetensors", {"status": 503}),
    ("status5xx", "*/config.json", {"status": 500}),
    ("status5xx", "/blobs/*", {"status": 502, "method": "GET"}),
    ("reset", "/blobs/*", {"after_bytes": 512 * 1024}),
    ("reset", "*/config.json", {"after_bytes": 10}),
    ("truncate", "/blobs/*", {"after_bytes": 256 * 1024}),
    ("truncate", "*/config.json", {"after_bytes": 100}),
])
def test_transient_faults_are_retried(ws_home, hub, model, kind, glob, kw):
    repo_id, files = model
    hub.faults.add(kind, glob, times=2, **kw)
    with BlobWatcher(ws_home) as watcher:
        snap = warmstart.pull(repo_id)
    assert [k for k, _ in hub.faults.history] == [kind, kind]  # both fired, and were survived
    assert_snapshot_matches(snap.path, files)
    assert watcher.bad == []
    assert_blobs_sound(ws_home)


def test_faults_on_a_sharded_model(ws_home, hub):
    hub.faults.add("reset", "*model-00002*", times=1, after_bytes=1000)
    hub.faults.add("truncate", "*model-00003*", times=1, after_bytes=1000)
    hub.faults.add("status5xx", "*model-00004*", times=1, method="GET")
    hub.faults.add("corrupt", "*model-00001*", times=1, after_bytes=5000)
    snap = warmstart.pull(TINY)
    assert len(hub.faults.history) == 4 and not hub.faults.pending()
    assert_snapshot_matches(snap.path, origin_files(hub, TINY))
    assert_blobs_sound(ws_home)


def test_transient_5xx_on_metadata_is_retried(ws_home, hub, model):
    repo_id, files = model
    hub.faults.add("status5xx", "/api/models/*", times=1, status=503)
    snap = warmstart.pull(repo_id)
    assert hub.faults.history == [("status5xx", f"/api/models/{repo_id}/revision/main")]
    assert_snapshot_matches(snap.path, files)

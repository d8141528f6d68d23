"""The shared tier (two homes, one shared directory, origin bytes counted once) and the RAM tier."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

import warmstart
from warmstart.api import pull
from warmstart.cache.tiers.shared import SharedTier
from warmstart.errors import CacheFullError

MB = 1 << 20


def _origin_bytes(hub) -> int:
    return hub.counters.bytes_for("*/resolve/*") + hub.counters.bytes_for("/blobs/*")


@pytest.fixture
def two_homes(tmp_path, settings):
    shared = tmp_path / "shared"
    shared.mkdir()
    return shared, settings(home=tmp_path / "node-a", shared_dir=shared), settings(home=tmp_path / "node-b",
                                                                                   shared_dir=shared)


def test_two_nodes_share_one_directory_origin_counted_once(hub, two_homes, tiny_llama_files):
    from tests.servers.shaping import Link

    shared, a, b = two_homes
    hub.link = Link(per_conn_bps=50e6, total_bps=200e6, latency_s=0.005)
    ref = "hf://test-org/tiny-llama"
    first = pull(ref, settings=a)
    served = _origin_bytes(hub)
    assert served >= first.size
    second = pull(ref, settings=b)
    assert _origin_bytes(hub) == served  # node B read every byte from the shared tier
    assert [f.digest for f in first.files] == [f.digest for f in second.files]
    # the bytes node B read from the shared tier are the origin's files, compared independently
    assert {f.path: hashlib.sha256((second.path / f.path).read_bytes()).hexdigest() for f in second.files} == {
        path: hashlib.sha256(Path(src).read_bytes()).hexdigest() for path, src in tiny_llama_files.items()}
    assert warmstart.cache(settings=b).verify().ok


def test_corrupt_blob_in_shared_tier_falls_back_to_origin(hub, two_homes, make_model, caplog):
    shared, a, b = two_homes
    ref = make_model(MB)
    snap = pull(ref, settings=a)
    digest = next(f.digest for f in snap.files if f.path == "model.safetensors")
    blob = SharedTier(shared).blob(digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"garbage!")
    hub.counters.reset()
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        snap_b = pull(ref, settings=b)
    assert "corrupt" in caplog.text
    assert hub.counters.bytes_for("*/model.safetensors") == MB
    assert warmstart.cache(settings=b).verify().ok
    assert {f.digest for f in snap_b.files} == {f.digest for f in snap.files}


def test_read_only_shared_dir_is_logged_and_skipped(hub, make_model, unprivileged):
    """Run as an unprivileged user (root ignores directory permissions): the shared directory is
    readable but not writable, so the pull succeeds, logs why it cannot publish, and keeps its blobs."""
    shared = unprivileged.root / "shared"
    shared.mkdir(mode=0o755)  # owned by root: the unprivileged user may read, not write
    ref = make_model(MB)
    p = unprivileged.run(["pull", ref, "--json"], WARMSTART_SHARED_DIR=str(shared), HF_ENDPOINT=hub.endpoint)
    assert p.returncode == 0, p.stderr
    assert "cannot publish" in p.stderr and "Traceback" not in p.stderr
    snap = json.loads(p.stdout)
    assert os.listdir(shared) == []  # nothing was written there
    home = unprivileged.root / "home"
    for f in snap["files"]:
        blob = home / "blobs" / "sha256" / f["sha256"][:2] / f["sha256"]
        assert blob.stat().st_uid == unprivileged.uid and blob.stat().st_size == f["size"]


def test_unwritable_shared_dir_is_logged_and_skipped(hub, tmp_path, settings, make_model, caplog):
    bad = tmp_path / "not-a-dir"
    bad.write_text("a file where the shared directory should be")
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        snap = pull(make_model(MB), settings=settings(shared_dir=bad))
    assert "cannot publish" in caplog.text
    assert all(f.blob.exists() for f in snap.files)


def test_memory_tier_pull_and_lru_demotion(make_model, settings, tmp_path):
    mem = tmp_path / "shm"
    s = settings(memory_dir=mem, memory_max_size=int(2.5 * MB))
    refs = [make_model(MB) for _ in range(3)]
    snap = pull(refs[0], settings=s, tier="memory")
    assert str(snap.path).startswith(str(mem))
    assert (snap.path / "model.safetensors").read_bytes() == snap.files[1].blob.read_bytes()
    m = warmstart.cache(settings=s)
    assert [e.tier for e in m.ls()] == ["memory"]
    for r in refs[1:]:
        pull(r, settings=s, tier="memory")
    assert m.memory.used() <= 2.5 * MB
    tiers = {e.model: e.tier for e in m.ls()}
    assert tiers == {refs[0]: "disk", refs[1]: "memory", refs[2]: "memory"}  # the LRU was demoted
    assert all(m.store.has(f.digest) for f in snap.files)  # demotion keeps the disk copy
    with pytest.raises(CacheFullError, match="WARMSTART_MEMORY_MAX_SIZE"):
        pull(make_model(3 * MB), settings=s, tier="memory")


def test_load_reads_from_the_memory_tier(settings, tmp_path):
    pytest.importorskip("torch")
    from warmstart.weights import weight_paths

    mem = tmp_path / "shm"
    s = settings(memory_dir=mem, memory_max_size=64 * MB)
    paths = weight_paths("hf://test-org/tiny-llama", s, "memory")
    assert all(os.path.realpath(p).startswith(str(mem)) for p in paths)
    from warmstart.api import load

    tensors = load("hf://test-org/tiny-llama", settings=s, tier="memory")
    assert len(tensors) > 0

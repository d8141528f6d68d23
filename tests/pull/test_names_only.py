"""Pulls from a Hub whose listing gives file names only (as mirrors serve it): the files are probed at
the start, all at once, so large files still move by parallel ranged reads, the budget is checked
before a byte moves, and origins without HEAD or without Range are handled without a retry storm."""

from __future__ import annotations

import random

import pytest

import warmstart
from warmstart.errors import CacheFullError

from .conftest import MiB, assert_blobs_sound, assert_snapshot_matches

SHARD = 12 * MiB  # three requests of the engine's request size each


def shards(n: int = 3, size: int = SHARD) -> dict[str, bytes]:
    rng = random.Random(n * size)
    files = {f"model-{i:05d}-of-{n:05d}.safetensors": rng.randbytes(size) for i in range(1, n + 1)}
    return {**files, "config.json": b'{"hidden_size": 8}\n'}


class Totals:
    """A progress sink that remembers the total the engine announced."""

    def __init__(self) -> None:
        self.total: int | None = None

    def start(self, total_bytes: int, total_files: int) -> None:
        self.total = total_bytes

    def advance(self, n: int) -> None:
        pass

    def file_done(self) -> None:
        pass


def _cdn_gets(hub, name: str) -> int:
    return hub.counters.requests_for(f"/blobs/*/{name}", "GET")


def test_names_only_shards_are_fetched_by_ranged_reads(hub, ws_home, make_repo):
    files = shards()
    repo = make_repo(files)
    hub.names_only = True
    snap = warmstart.pull(repo)
    assert_snapshot_matches(snap.path, files)
    assert_blobs_sound(ws_home)
    for name, data in files.items():
        if len(data) > 4 * MiB:
            assert _cdn_gets(hub, name) >= 2, (name, hub.counters.requests)
    # exactly the files' bytes: the probes are HEADs, no byte of a shard comes twice
    assert hub.counters.bytes_for("/blobs/*") == sum(len(d) for n, d in files.items() if n != "config.json")
    assert hub.counters.bytes_for("*/resolve/*") == len(files["config.json"])


def test_names_only_without_head_is_probed_with_a_ranged_get(hub, ws_home, make_repo):
    files = shards()
    repo = make_repo(files)
    hub.names_only, hub.head = True, False
    snap = warmstart.pull(repo)
    assert_snapshot_matches(snap.path, files)
    for name, data in files.items():
        if len(data) > 4 * MiB:
            assert _cdn_gets(hub, name) >= 2, (name, hub.counters.requests)
            # every byte once, plus the probe's one byte
            assert hub.counters.bytes_for(f"/blobs/*/{name}") <= len(data) + 1
    assert hub.counters.requests_for("*", "HEAD") <= len(files)  # refused, then not asked again per file


def test_cdn_ignoring_range_streams_each_file_once(hub, ws_home, make_repo):
    files = shards()
    repo = make_repo(files)
    hub.names_only, hub.cdn_ranges = True, False
    totals = Totals()
    snap = warmstart.pull(repo, progress=totals)
    assert_snapshot_matches(snap.path, files)
    assert totals.total == sum(len(d) for d in files.values())  # every size probed before bytes moved
    for name, data in files.items():
        if len(data) > 4 * MiB:
            assert _cdn_gets(hub, name) == 1 and hub.counters.bytes_for(f"/blobs/*/{name}") == len(data)
    assert hub.counters.requests_for("*", "GET") <= 2 * len(files) + 1  # listing, then 302 + 200 per file


def test_names_only_budget_is_enforced_before_bytes_move(hub, ws_home, make_repo, monkeypatch):
    files = shards(3, 6 * MiB)
    repo = make_repo(files)
    hub.names_only = True
    monkeypatch.setenv("WARMSTART_MAX_SIZE", "10M")  # room for one shard, not three
    with pytest.raises(CacheFullError):
        warmstart.pull(repo)
    assert hub.counters.requests_for("/blobs/*", "GET") == 0, hub.counters.requests
    assert hub.counters.bytes_for("/blobs/*") == 0 and hub.counters.bytes_for("*/resolve/*") == 0
    assert not list((ws_home / "blobs").rglob("*.safetensors"))

"""Budgets, LRU eviction, pins, leases held by live processes, gc crashes and gc racing pulls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import warmstart
from warmstart.api import pull
from warmstart.cache import evict
from warmstart.cache.layout import scan_blobs
from warmstart.cache.views import hub_snapshot_dir
from warmstart.errors import CacheFullError, InUseError, NotFoundError

MB = 1 << 20


def _complete(m) -> None:
    """Every snapshot left in the index has all its blobs."""
    for row in m.index.snapshots():
        for f in m.index.snapshot_files(row.id):
            assert m.store.has(f.digest, f.size), (row.source, f.path)


def _models(m) -> set[str]:
    return {e.model for e in m.ls()}


def test_lru_order_and_pins(make_model, settings):
    a, b, c, d, e = (make_model(MB) for _ in range(5))
    s = settings(max_size=int(3.5 * MB))
    for ref in (a, b, c):
        pull(ref, settings=s)
        time.sleep(0.01)
    pull(a, settings=s)  # a is now the most recently used
    pull(d, settings=s)
    m = warmstart.cache(settings=s)
    assert _models(m) == {a, c, d}  # b was the least recently used
    m.pin(c)
    pull(e, settings=s)
    assert _models(m) == {c, d, e}  # c (the LRU) is pinned: a, used before d, goes
    _complete(m)


def test_budget_smaller_than_a_model_fails_before_downloading(make_model, settings, hub):
    ref = make_model(2 * MB)
    with pytest.raises(CacheFullError, match="budget"):
        pull(ref, settings=settings(max_size=MB))
    assert hub.counters.bytes_for("*/model.safetensors") == 0


def test_everything_pinned_gives_cache_full(make_model, settings):
    a, b = make_model(MB), make_model(MB)
    s = settings(max_size=int(1.5 * MB))
    pull(a, settings=s)
    warmstart.cache(settings=s).pin(a)
    with pytest.raises(CacheFullError, match="pinned or in use"):
        pull(b, settings=s)
    _complete(warmstart.cache(settings=s))


HOLDER = """
import sys, time
from warmstart.weights import weight_paths
paths = weight_paths(sys.argv[1], None)
print("ready", flush=True)
time.sleep(60)
"""


def test_live_process_lease_protects_then_kill9_releases(make_model, settings, ws_home):
    a, b, c = make_model(MB), make_model(MB), make_model(MB)
    s = settings(max_size=int(2.5 * MB))
    pull(a, settings=s)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, a], stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        assert proc.stdout.readline().strip() == b"ready"
        pull(b, settings=s)
        time.sleep(0.01)
        pull(c, settings=s)  # a is the LRU but leased: b goes
        m = warmstart.cache(settings=s)
        assert _models(m) == {a, c}
        assert any(proc.pid in e.in_use_by for e in m.ls() if e.model == a)
        with pytest.raises(InUseError, match=str(proc.pid)):
            m.rm(a)
        assert m.gc(max_size=MB).snapshots == 1  # c goes, a stays
        assert _models(m) == {a}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    m.rm(a)  # the kernel dropped the lock with the process
    assert _models(m) == set()
    assert not list(m.layout.blobs.rglob("*" * 1 + "?" * 63))


def test_rm_and_pin_unknown_ref(settings):
    m = warmstart.cache(settings=settings())
    with pytest.raises(NotFoundError, match="not in the cache"):
        m.rm("hf://nobody/nothing")
    with pytest.raises(NotFoundError, match="warmstart ls"):
        m.pin("hf://nobody/nothing")


def test_rm_keeps_blobs_other_snapshots_share(hub, make_model, settings):
    a = make_model(MB)
    repo_id = a.removeprefix("hf://")
    first = pull(a, settings=settings())
    hub.push(repo_id, {"config.json": b'{"v": 2}'})  # same weights, new commit
    second = pull(a, settings=settings())
    assert first.revision != second.revision
    m = warmstart.cache(settings=settings())
    assert all(e.shared >= MB for e in m.ls())
    m.rm(a, revision=first.revision)
    assert [e.revision for e in m.ls()] == [second.revision]
    _complete(m)
    assert not (hub_snapshot_dir(m.layout, repo_id, first.revision)).exists()


@pytest.mark.parametrize("crash_after", [0, 1, 2])
def test_crash_in_the_middle_of_gc(make_model, settings, monkeypatch, crash_after):
    refs = [make_model(MB // 2) for _ in range(4)]
    s = settings()
    for r in refs:
        pull(r, settings=s)
    m = warmstart.cache(settings=s)
    plan = m.plan_gc(max_size=MB)  # evicts 3 of 4
    assert len([a for a in plan.actions if a.kind == "snapshot"]) >= 2
    real = type(m.store).remove
    calls = []

    def crashing(self, digest):
        if len(calls) >= crash_after:
            raise KeyboardInterrupt("crash")
        calls.append(digest)
        return real(self, digest)

    monkeypatch.setattr(type(m.store), "remove", crashing)
    with pytest.raises(KeyboardInterrupt):
        plan.execute()
    monkeypatch.setattr(type(m.store), "remove", real)
    _complete(m)  # every remaining snapshot is intact; orphans may remain
    monkeypatch.setattr(evict, "ORPHAN_GRACE_S", 0.0)
    m.gc()
    referenced = m.index.referenced_digests()
    assert {d for d, _ in scan_blobs(m.layout.blobs)} == referenced
    _complete(m)


def test_pulls_while_gc_runs(make_model, settings):
    refs = [make_model(MB // 2) for _ in range(4)]
    s = settings()
    stop = threading.Event()
    errors: list[BaseException] = []

    def collector() -> None:
        m = warmstart.cache(settings=s)
        while not stop.is_set():
            try:
                m.gc(max_size=MB)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    t = threading.Thread(target=collector)
    t.start()
    try:
        for _ in range(3):
            for r in refs:
                snap = pull(r, settings=s)
                # gc may evict the whole snapshot as soon as the pull returns (the budget holds two
                # models of four), but it must never delete a blob that a recorded snapshot still
                # names: it drops the index rows first. Blobs checked first, then the index, so a
                # snapshot still recorded after a blob was seen missing is a lost blob.
                missing = [f.path for f in snap.files if not f.blob.exists()]
                if missing:
                    try:
                        still = warmstart.cache(settings=s).find(r, snap.revision)
                    except warmstart.NotFoundError:
                        still = []
                    assert not still, f"{r}: blobs {missing} deleted while the snapshot is recorded"
    finally:
        stop.set()
        t.join()
    assert not errors
    _complete(warmstart.cache(settings=s))


def test_gc_dry_run_prints_a_plan_and_removes_nothing(make_model, settings):
    a, b = make_model(MB), make_model(MB)
    s = settings()
    pull(a, settings=s)
    pull(b, settings=s)
    m = warmstart.cache(settings=s)
    plan = m.gc(max_size=MB, dry_run=True)
    text = plan.describe()
    assert a in text and "over the budget" in text and "frees" in text
    assert _models(m) == {a, b}
    assert plan.to_json()["bytes_to_free"] >= MB

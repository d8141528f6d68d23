"""Warm pulls cost one metadata request (a branch) or none (a commit); offline and unreachable
origins are served from the cache with a one-line notice; new commits are picked up."""

from __future__ import annotations

import logging

import pytest

import warmstart
from tests.pull.conftest import TINY, assert_snapshot_matches, origin_files, run_cli
from warmstart.errors import OfflineError


@pytest.fixture
def warnings_from_warmstart(caplog, monkeypatch):
    """caplog sees warmstart's records even after an in-process CLI run turned propagation off."""
    monkeypatch.setattr(logging.getLogger("warmstart"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="warmstart")
    return caplog


def test_warm_branch_pull_makes_one_metadata_request(ws_home, hub):
    first = warmstart.pull(TINY)
    hub.counters.reset()
    again = warmstart.pull(TINY)
    assert again.revision == first.revision and again.downloaded == 0
    assert hub.counters.requests_for("*") == 1
    assert hub.counters.requests_for(f"/api/models/{TINY}*", "GET") == 1
    assert hub.counters.bytes_total == 0


def test_warm_commit_pull_makes_no_request(ws_home, hub, cli_env):
    commit = warmstart.pull(TINY).revision
    hub.counters.reset()
    snap = warmstart.pull(f"hf://{TINY}@{commit}")
    assert snap.revision == commit and snap.downloaded == 0
    snap = warmstart.pull(TINY, revision=commit, include="*.json")
    assert {f.path for f in snap.files} == {"config.json", "model.safetensors.index.json"}
    r = run_cli(["pull", f"hf://{TINY}@{commit}"], cli_env)
    assert r.returncode == 0 and r.stdout.strip().endswith(commit)
    assert hub.counters.requests_for("*") == 0


@pytest.mark.parametrize("var", ["WARMSTART_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_serves_from_cache_with_a_notice(ws_home, hub, monkeypatch, warnings_from_warmstart, var):
    online = warmstart.pull(TINY)
    monkeypatch.setenv(var, "1")
    hub.counters.reset()
    warnings_from_warmstart.clear()
    snap = warmstart.pull(TINY)
    assert snap.path == online.path and snap.revision == online.revision
    assert hub.counters.requests_for("*") == 0
    notices = [r.getMessage() for r in warnings_from_warmstart.records]
    assert len(notices) == 1 and "offline" in notices[0] and "\n" not in notices[0]
    assert_snapshot_matches(snap.path, origin_files(hub, TINY))


@pytest.mark.parametrize("var", ["WARMSTART_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_and_not_cached_fails_clearly(ws_home, hub, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    with pytest.raises(OfflineError, match="offline") as exc:
        warmstart.pull(TINY)
    assert var in str(exc.value) or "WARMSTART_OFFLINE" in str(exc.value)
    assert hub.counters.requests_for("*") == 0
    # a cached model but a file subset that was never pulled is not in the cache either
    monkeypatch.delenv(var)
    warmstart.pull(TINY, include="*.json")
    monkeypatch.setenv(var, "1")
    with pytest.raises(OfflineError):
        warmstart.pull(TINY, include="*.safetensors")
    assert warmstart.pull(TINY, include="config.json").files[0].path == "config.json"


def test_offline_cli_notice_is_one_line(ws_home, hub, cli_env):
    assert run_cli(["pull", TINY], cli_env).returncode == 0
    r = run_cli(["pull", TINY], {**cli_env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith(hub.repo(TINY).branches["main"])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "offline" in lines[0], r.stderr
    r = run_cli(["pull", "hf://test-org/never-pulled"], {**cli_env, "WARMSTART_OFFLINE": "1"})
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_unreachable_origin_serves_from_cache(ws_home, hub, monkeypatch, closed_endpoint, warnings_from_warmstart,
                                              cli_env):
    online = warmstart.pull(TINY)
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint)
    warnings_from_warmstart.clear()
    snap = warmstart.pull(TINY)
    assert snap.path == online.path and snap.revision == online.revision
    notices = [r.getMessage() for r in warnings_from_warmstart.records]
    assert len(notices) == 1 and "unreachable" in notices[0], notices
    with pytest.raises(OfflineError, match="HF_ENDPOINT"):
        warmstart.pull("test-org/gated")
    r = run_cli(["pull", TINY], {**cli_env, "HF_ENDPOINT": closed_endpoint})
    assert r.returncode == 0 and r.stdout.strip().endswith(online.revision)
    assert len(r.stderr.strip().splitlines()) == 1 and "unreachable" in r.stderr


def test_a_new_commit_is_picked_up(ws_home, hub, make_repo, monkeypatch):
    repo_id = make_repo({"model.safetensors": b"w" * 5000, "config.json": b'{"v": 1}'})
    first = warmstart.pull(repo_id)
    second_commit = hub.push(repo_id, {"config.json": b'{"v": 2}', "new.txt": b"new"})
    hub.counters.reset()
    second = warmstart.pull(repo_id)
    assert second.revision == second_commit != first.revision
    assert (second.path / "config.json").read_bytes() == b'{"v": 2}'
    assert (second.path / "new.txt").read_bytes() == b"new"
    assert second.downloaded == len(b'{"v": 2}') + 3
    assert hub.counters.bytes_for("*model.safetensors") == 0
    refs_main = ws_home / "hub" / ("models--" + repo_id.replace("/", "--")) / "refs" / "main"
    assert refs_main.read_text().strip() == second_commit
    # offline now answers the new commit, and the old one is still there by hash
    monkeypatch.setenv("WARMSTART_OFFLINE", "1")
    assert warmstart.pull(repo_id).revision == second_commit
    old = warmstart.pull(repo_id, revision=first.revision)
    assert (old.path / "config.json").read_bytes() == b'{"v": 1}'

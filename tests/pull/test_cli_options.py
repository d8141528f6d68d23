"""Every documented CLI option and ``WARMSTART_*`` variable, exercised through the ``warmstart``
command as a user runs it (a subprocess with its environment), checked against the origin's own byte
counters, ``hashlib`` and the files on disk rather than against warmstart's own report."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file as st_load
from safetensors.numpy import save_file

from tests.pull.conftest import run_cli
from tests.servers.hub import HubRepo

MB = 1 << 20


@pytest.fixture
def repo(hub):
    """``repo(nbytes)``: a fresh Hub repo with a random ``model.safetensors`` and a config; returns
    ``(ref, {path: bytes})``."""

    def make(nbytes: int = MB, commits: int = 1):
        repo_id = f"opt-test/{uuid.uuid4().hex[:10]}"
        files = {"model.safetensors": os.urandom(nbytes), "config.json": b'{"v": 1}'}
        r = hub.add_repo(HubRepo(repo_id, files))
        for i in range(1, commits):
            files = {"model.safetensors": os.urandom(nbytes), "config.json": b'{"v": %d}' % (i + 1)}
            r.commit(files)
        return f"hf://{repo_id}", files

    return make


def _json(p) -> object:
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_pull_max_size_refuses_before_downloading(cli_env, hub, repo):
    ref, _ = repo(2 * MB)
    hub.counters.reset()
    p = run_cli(["pull", ref, "--max-size", "1M"], cli_env)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "budget" in p.stderr.lower() or "room" in p.stderr.lower(), p.stderr
    assert hub.counters.bytes_for("*model.safetensors*") == 0  # refused before the weights moved
    assert _json(run_cli(["pull", ref, "--max-size", "10M", "--json"], cli_env))["bytes_downloaded"] >= 2 * MB


def test_warmstart_max_size_from_the_environment(cli_env, hub, repo):
    ref, _ = repo(2 * MB)
    p = run_cli(["pull", ref], dict(cli_env, WARMSTART_MAX_SIZE="1M"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    # the flag overrides the variable
    assert run_cli(["pull", ref, "--max-size", "10M"], dict(cli_env, WARMSTART_MAX_SIZE="1M")).returncode == 0


def test_pull_tier_memory_and_promote(cli_env, hub, repo, tmp_path):
    ref, files = repo(MB)
    env = dict(cli_env, WARMSTART_MEMORY_DIR=str(tmp_path / "ram"))
    out = _json(run_cli(["pull", ref, "--tier", "memory", "--json"], env))
    view = Path(out["path"])
    assert view.is_relative_to(tmp_path / "ram")
    assert (view / "model.safetensors").read_bytes() == files["model.safetensors"]
    p = run_cli(["pull", ref, "--tier", "memory"], dict(cli_env))  # no RAM tier configured
    assert p.returncode == 2 and "WARMSTART_MEMORY_DIR" in p.stderr  # a configuration error


def test_cache_promote_du_and_adopt_api(ws_home, hub, repo, tmp_path, monkeypatch):
    import warmstart

    ref, files = repo(MB)
    warmstart.pull(ref, quiet=True)
    monkeypatch.setenv("WARMSTART_MEMORY_DIR", str(tmp_path / "ram"))
    c = warmstart.cache()
    view = c.promote(ref)
    assert (view / "model.safetensors").read_bytes() == files["model.safetensors"]
    du = c.du()
    blob_bytes = sum(p.stat().st_size for p in (Path(ws_home) / "blobs").rglob("*") if p.is_file())
    assert du["blob_bytes"] == blob_bytes and du["blobs"] == 2 and du["snapshots"] == 1
    assert du["memory_bytes"] == sum(len(b) for b in files.values())
    # adopt(): a huggingface_hub cache elsewhere comes under management; dry-run changes nothing
    from huggingface_hub import snapshot_download

    hf = tmp_path / "hf-cache"
    other, other_files = repo(MB // 2)
    snapshot_download(other.removeprefix("hf://"), cache_dir=str(hf), endpoint=hub.endpoint)
    before = len(c.ls())
    dry = c.adopt(hf, dry_run=True)
    assert dry.adopted and len(c.ls()) == before
    c.adopt(hf)
    assert len(c.ls()) == before + 1
    hub.counters.reset()
    snap = warmstart.pull(other, quiet=True)
    assert hub.counters.bytes_for("*model.safetensors*") == 0
    got = next(f for f in snap.files if f.path == "model.safetensors")
    assert got.digest == hashlib.sha256(other_files["model.safetensors"]).hexdigest()


def test_pull_in_place_indexes_without_copying(cli_env, tmp_path):
    src = tmp_path / "local-model"
    src.mkdir()
    data = os.urandom(MB)
    (src / "w.bin").write_bytes(data)
    out = _json(run_cli(["pull", str(src), "--in-place", "--json"], cli_env))
    view = Path(out["path"]) / "w.bin"
    assert view.read_bytes() == data
    blob = view.resolve()
    assert os.stat(blob).st_ino == os.stat(src / "w.bin").st_ino or blob == (src / "w.bin").resolve()


def test_pull_hardlink_copy_and_symlink_to(cli_env, repo, tmp_path):
    ref, files = repo(MB)
    home = Path(cli_env["WARMSTART_HOME"])
    for mode in ("--hardlink", "--copy", "--symlink"):
        dest = tmp_path / mode.strip("-")
        assert run_cli(["pull", ref, "--to", str(dest), mode, "-q"], cli_env).returncode == 0
        f = dest / "model.safetensors"
        assert f.read_bytes() == files["model.safetensors"]
        digest = hashlib.sha256(files["model.safetensors"]).hexdigest()
        blob = home / "blobs" / "sha256" / digest[:2] / digest
        same_inode = os.stat(f).st_ino == os.stat(blob).st_ino
        assert f.is_symlink() == (mode == "--symlink"), mode
        assert same_inode == (mode in ("--hardlink", "--symlink")), mode


def test_rm_revision_and_dry_run(cli_env, hub, repo):
    ref, _ = repo(MB // 4, commits=2)
    old = _commits(hub, ref.removeprefix("hf://"))[0]
    assert run_cli(["pull", f"{ref}@{old}", "-q"], cli_env).returncode == 0
    assert run_cli(["pull", ref, "-q"], cli_env).returncode == 0
    assert len(_json(run_cli(["ls", "--json"], cli_env))) == 2
    dry = _json(run_cli(["rm", ref, "--revision", old, "--dry-run", "--json"], cli_env))
    assert dry["actions"] and all(old[:12] in a["what"] for a in dry["actions"] if a["kind"] == "snapshot")
    assert len(_json(run_cli(["ls", "--json"], cli_env))) == 2  # nothing removed
    assert run_cli(["rm", ref, "--revision", old], cli_env).returncode == 0
    left = _json(run_cli(["ls", "--json"], cli_env))
    assert len(left) == 1 and old not in json.dumps(left)


def test_verify_and_pin_revision(cli_env, hub, repo):
    ref, _ = repo(MB // 4, commits=2)
    main_rev = _json(run_cli(["pull", ref, "--json"], cli_env))["revision"]
    repo_id = ref.removeprefix("hf://")
    old = next(c for c in _commits(hub, repo_id) if c != main_rev)
    old_snap = _json(run_cli(["pull", f"{ref}@{old}", "--json"], cli_env))
    v = _json(run_cli(["verify", ref, "--revision", old, "--json"], cli_env))
    assert v["checked"] == len(old_snap["files"])
    pinned = _json(run_cli(["pin", ref, "--revision", old, "--json"], cli_env))
    assert [p["revision"] for p in pinned] == [old]
    gc = _json(run_cli(["gc", "--max-size", "1", "--json"], cli_env))
    assert gc["result"]["snapshots_removed"] == 1  # main went; the pinned old revision stayed
    left = _json(run_cli(["ls", "--json"], cli_env))
    assert old in json.dumps(left) and main_rev not in json.dumps(left)


def _commits(hub, repo_id: str) -> list[str]:
    """The repo's commits, oldest first."""
    return list(hub.repo(repo_id).commits)


def test_adopt_cli_dry_run(cli_env, hub, repo, tmp_path):
    from huggingface_hub import snapshot_download

    ref, _ = repo(MB // 4)
    hf = tmp_path / "hf-cache"
    snapshot_download(ref.removeprefix("hf://"), cache_dir=str(hf), endpoint=hub.endpoint)
    p = run_cli(["adopt", str(hf), "--dry-run"], cli_env)
    assert p.returncode == 0 and "would adopt" in p.stdout, p.stderr
    assert _json(run_cli(["ls", "--json"], cli_env)) == []
    assert run_cli(["adopt", str(hf)], cli_env).returncode == 0
    assert len(_json(run_cli(["ls", "--json"], cli_env))) == 1


def test_convert_world_size_shard_size_force(cli_env, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "model"
    src.mkdir()
    tensors = {f"layers.{i}.w": rng.standard_normal((64, 256), dtype=np.float32) for i in range(4)}
    save_file(tensors, str(src / "model.safetensors"))
    recipe = tmp_path / "tp.yaml"
    recipe.write_text("steps:\n  - split: {match: 'layers', style: column}\n")
    out = _json(run_cli(["convert", str(src), "--recipe", str(recipe), "--world-size", "2",
                         "--shard-size", "64KB", "--json"], cli_env))
    assert out["world_size"] == 2 and out["converted"] is True
    sizes = [os.path.getsize(Path(out["path"]) / f["path"]) for f in out["files"] if f["path"].endswith(".safetensors")]
    assert len(sizes) >= 4 and max(sizes) <= 64 * 1000 + 4096  # each rank's part split into small shards
    got: dict[str, list] = {}
    for f in out["files"]:
        if f["path"].endswith(".safetensors"):
            for k, v in st_load(str(Path(out["path"]) / f["path"])).items():
                got.setdefault(k, []).append(v)
    for k, v in tensors.items():  # the two ranks' halves together are the original, bit for bit
        assert np.array_equal(np.concatenate(sorted(got[k], key=lambda a: a[0, 0] != v[0, 0]), axis=0), v)
    again = _json(run_cli(["convert", str(src), "--recipe", str(recipe), "--world-size", "2",
                           "--shard-size", "64KB", "--json"], cli_env))
    assert again["converted"] is False and again["key"] == out["key"]
    forced = _json(run_cli(["convert", str(src), "--recipe", str(recipe), "--world-size", "2",
                            "--shard-size", "64KB", "--force", "--json"], cli_env))
    assert forced["converted"] is True and forced["key"] == out["key"]


def test_shared_dir_memory_max_size_and_chunk_size_from_the_environment(cli_env, hub, repo, tmp_path):
    ref, files = repo(24 * MB)
    shared = tmp_path / "shared"
    env_a = dict(cli_env, WARMSTART_SHARED_DIR=str(shared), WARMSTART_CHUNK_SIZE="2M",
                 WARMSTART_MIN_CONNECTIONS="1", WARMSTART_MAX_CONNECTIONS="1")
    hub.counters.reset()
    assert run_cli(["pull", ref, "-q"], env_a).returncode == 0
    # WARMSTART_CHUNK_SIZE=2M over one connection: the 24 MiB file moved as 12 ranged reads (16 MiB: 2)
    assert hub.counters.requests_for("/blobs/*model.safetensors", "GET") >= 12
    assert hub.counters.bytes_for("*model.safetensors*") == 24 * MB
    # WARMSTART_SHARED_DIR: a second node (its own home) gets the weights from the shared directory
    env_b = dict(env_a, WARMSTART_HOME=str(tmp_path / "node-b"))
    hub.counters.reset()
    out = _json(run_cli(["pull", ref, "--json"], env_b))
    assert hub.counters.bytes_for("*model.safetensors*") == 0
    got = Path(out["path"]) / "model.safetensors"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(files["model.safetensors"]).hexdigest()
    # WARMSTART_MEMORY_MAX_SIZE: a RAM tier smaller than the model refuses it with the variable's name
    env_c = dict(env_b, WARMSTART_MEMORY_DIR=str(tmp_path / "ram"), WARMSTART_MEMORY_MAX_SIZE="1M")
    p = run_cli(["pull", ref, "--tier", "memory"], env_c)
    assert p.returncode == 1 and "WARMSTART_MEMORY_MAX_SIZE" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "ram").rglob("*.safetensors"))

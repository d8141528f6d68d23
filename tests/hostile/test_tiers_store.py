"""Hostile shared directories and damaged caches (issue 14, findings 7, 10 and 11).

* A writer of the shared directory cannot get its bytes published for a file the origin names by git
  blob id (``config.json``, ``*.py``): ``keys/`` is only a hint, the copy must hash to the listed id.
* A truncated or corrupt blob is replaced by the verified copy a later pull downloads.
* Every SQLite failure is one line on stderr with exit 1 (no traceback), and a read-only home still
  serves what it has cached (run as an unprivileged user: root ignores mode bits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import warmstart
from tests.servers.hub import HubRepo, HubServer
from warmstart.cache.index import Index
from warmstart.cache.tiers.shared import SharedTier
from warmstart.config import Settings
from warmstart.errors import CacheFullError, CacheIndexError

MiB = 1 << 20
CONFIG = b'{"architectures": ["TinyModel"], "hidden_size": 8}\n'


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weights() -> bytes:
    """A small valid safetensors file of seeded random data."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(14)
    return save({"a.weight": rng.standard_normal((64, 32)).astype(np.float32),
                 "b.bias": rng.standard_normal(512).astype(np.float32)})


@pytest.fixture
def repo(hub: HubServer) -> tuple[str, dict[str, bytes]]:
    """A fresh repo: ``model.safetensors`` (LFS, sha256 listed) and ``config.json`` (git blob id only)."""
    files = {"model.safetensors": _weights(), "config.json": CONFIG}
    repo_id = f"hostile-tiers/r-{uuid.uuid4().hex[:10]}"
    hub.add_repo(HubRepo(repo_id, files))
    return f"hf://{repo_id}", files


def _settings(home: Path, **kw) -> Settings:
    return dataclasses.replace(Settings.from_env(), quiet=True, home=home, **kw)


def _cli(args: list[str], env: dict[str, str] | None = None, user: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "warmstart.cli", *args]
    return _run(cmd, env, user, timeout)


def _run(cmd: list[str], env: dict[str, str] | None, user: str | None, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------- finding 7: shared tier


@pytest.fixture
def shared_homes(tmp_path: Path, ws_home: Path) -> tuple[Path, Settings, Settings]:
    shared = tmp_path / "shared"
    shared.mkdir()
    return shared, _settings(tmp_path / "node-a", shared_dir=shared), _settings(tmp_path / "node-b", shared_dir=shared)


def _poison_key(shared: Path, bad: bytes) -> str:
    """Point the only ``keys/`` entry (config.json's) at a blob of ``bad`` bytes, validly named."""
    keys = [p for p in (shared / "keys").iterdir() if not p.name.startswith(".")]
    assert len(keys) == 1, keys  # only config.json has no sha256
    blob = SharedTier(shared).blob(_sha(bad))
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(bad)
    keys[0].write_text(_sha(bad))
    return _sha(bad)


def _poison_blob(shared: Path, good: bytes, bad: bytes) -> str:
    """Overwrite the shared blob named by config.json's real sha256 with ``bad`` bytes."""
    blob = SharedTier(shared).blob(_sha(good))
    os.chmod(blob, 0o644)
    blob.write_bytes(bad)
    return _sha(bad)


@pytest.mark.parametrize("how", ["key", "blob", "same-size-key"])
def test_shared_writer_cannot_publish_a_config(hub, repo, shared_homes, caplog, how):
    ref, files = repo
    shared, a, b = shared_homes
    warmstart.pull(ref, settings=a)
    bad = b'{"auto_map": {"AutoModel": "evil.Model"}, "pwned": 1}\n'
    if how == "same-size-key":
        bad = bad[: len(CONFIG)].ljust(len(CONFIG), b" ")
    bad_digest = _poison_blob(shared, CONFIG, bad) if how == "blob" else _poison_key(shared, bad)
    hub.counters.reset()
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        snap = warmstart.pull(ref, settings=b)
    got = (snap.path / "config.json").read_bytes()
    assert got == files["config.json"]
    assert hub.counters.bytes_for("*/config.json") == len(CONFIG)  # fetched from the origin
    assert not (b.home / "blobs" / "sha256" / bad_digest[:2] / bad_digest).exists()  # never published
    assert "shared tier: " in caplog.text  # one warning line names the rejected copy
    assert warmstart.cache(settings=b).verify().ok
    assert warmstart.load(ref, settings=b)["a.weight"].shape == (64, 32)


def test_shared_key_still_serves_the_right_config(hub, repo, shared_homes):
    """The git blob id check keeps the shared tier useful: a true key serves config.json with no origin bytes."""
    ref, files = repo
    _, a, b = shared_homes
    warmstart.pull(ref, settings=a)
    hub.counters.reset()
    snap = warmstart.pull(ref, settings=b)
    assert hub.counters.bytes_for("*/config.json") == 0
    assert (snap.path / "config.json").read_bytes() == files["config.json"]


def test_file_without_sha256_or_git_id_never_comes_from_shared(http_origin, tmp_path, ws_home):
    """An HTTP file (no sha256, no git blob id) is fetched from the origin even when keys/ names a blob."""
    shared = tmp_path / "shared"
    shared.mkdir()
    good = os.urandom(4096)
    http_origin.put("w.bin", good)
    ref = http_origin.url("w.bin")
    warmstart.pull(ref, settings=_settings(tmp_path / "node-a", shared_dir=shared))
    bad = b"x" * len(good)
    blob = SharedTier(shared).blob(_sha(bad))
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(bad)
    (shared / "keys").mkdir(exist_ok=True)
    from warmstart.sources.registry import parse, source_for

    b = _settings(tmp_path / "node-b", shared_dir=shared)
    key = source_for(parse(ref), b).resolve(parse(ref)).files[0].key
    SharedTier(shared).key_path(key).write_text(_sha(bad))
    snap = warmstart.pull(ref, settings=b)
    assert snap.files[0].blob.read_bytes() == good


def test_verify_catches_a_blob_that_is_not_the_listed_git_blob(repo, ws_home):
    """A cache poisoned before this fix (config.json recorded with other bytes) fails verify."""
    ref, _ = repo
    s = _settings(ws_home)
    warmstart.pull(ref, settings=s)
    m = warmstart.cache(settings=s)
    bad = m.store.put_bytes(b'{"pwned": true}\n')
    with sqlite3.connect(m.layout.index_path) as db:  # the record of a cache poisoned before the fix
        db.execute("UPDATE files SET digest=? WHERE path='config.json'", (bad,))
    report = m.verify()
    assert not report.ok and bad in report.corrupt


# ------------------------------------------------ review: odd files and links in the shared directory


def _limited_pull(ref: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``warmstart pull ref`` in a child limited to 2 GiB of address space and 60 s: a FIFO that blocks
    the pull or ``/dev/zero`` read to its end fails the test instead of hanging it or the machine."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = dict(env, PYTHONDONTWRITEBYTECODE="1")
    try:
        return subprocess.run([sys.executable, "-m", "warmstart.cli", "pull", ref], env=env, capture_output=True,
                              text=True, timeout=60, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail("the pull hung on an odd file in the shared directory")


@pytest.fixture
def odd_repo(hub: HubServer) -> tuple[str, dict[str, bytes]]:
    """``config.json`` and an empty ``empty.txt`` (git blob ids only): both go through ``keys/``."""
    files = {"config.json": CONFIG, "empty.txt": b""}
    repo_id = f"hostile-tiers/odd-{uuid.uuid4().hex[:10]}"
    hub.add_repo(HubRepo(repo_id, files))
    return f"hf://{repo_id}", files


@pytest.mark.parametrize("kind", ["fifo-key", "devzero-key", "dir-key", "fifo-blob", "devzero-blob"])
def test_odd_files_in_the_shared_directory_never_hang_or_flood_a_pull(hub, odd_repo, tmp_path, ws_home, kind):
    ref, files = odd_repo
    seed = tmp_path / "seed-shared"
    seed.mkdir()
    warmstart.pull(ref, settings=_settings(tmp_path / "node-a", shared_dir=seed))
    shared = tmp_path / "shared"
    shutil.copytree(seed, shared, symlinks=True)
    tier = SharedTier(shared)
    keys = sorted(p for p in (shared / "keys").iterdir() if not p.name.startswith("."))
    assert len(keys) == 2
    for key in keys:
        if kind.endswith("-key"):
            key.unlink()
            {"fifo": os.mkfifo, "devzero": lambda p: os.symlink("/dev/zero", p), "dir": os.mkdir}[
                kind.removesuffix("-key")](key)
    if kind.endswith("-blob"):
        empty = tier.blob(_sha(b""))
        os.chmod(empty, 0o644)
        empty.unlink()
        os.mkfifo(empty) if kind == "fifo-blob" else os.symlink("/dev/zero", empty)
    hub.counters.reset()
    env = dict(os.environ, WARMSTART_HOME=str(tmp_path / "node-b"), WARMSTART_SHARED_DIR=str(shared))
    r = _limited_pull(ref, env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "shared tier: " in r.stderr  # a warning names what was ignored
    snap = Path(r.stdout.splitlines()[-1])
    for name, data in files.items():
        assert (snap / name).read_bytes() == data


def _dir_state(root: Path) -> dict[str, tuple]:
    from tests.hostile.conftest import tree_state

    return tree_state(root)


def test_shared_publish_never_writes_through_links_out_of_the_shared_directory(repo, tmp_path, ws_home, caplog):
    """``blobs`` and ``keys`` (or a fan-out directory below them) being links out of the shared directory:
    nothing is written there; publishing is skipped with a warning and the pull succeeds."""
    ref, files = repo
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "blobs").mkdir(parents=True)
    (elsewhere / "keys").mkdir()
    (elsewhere / "fan").mkdir()
    shared = tmp_path / "shared"
    (shared / "blobs" / "sha256").mkdir(parents=True)
    for data in files.values():  # one fan-out directory per blob, each a link out
        os.symlink(elsewhere / "fan", shared / "blobs" / "sha256" / _sha(data)[:2])
    os.symlink(elsewhere / "keys", shared / "keys")
    before = _dir_state(elsewhere)
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        snap = warmstart.pull(ref, settings=_settings(tmp_path / "node-a", shared_dir=shared))
    assert _dir_state(elsewhere) == before
    assert "not inside" in caplog.text
    for name, data in files.items():
        assert (snap.path / name).read_bytes() == data
    shutil.rmtree(shared)
    shared.mkdir()
    os.symlink(elsewhere / "blobs", shared / "blobs")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        warmstart.pull(ref, settings=_settings(tmp_path / "node-b", shared_dir=shared))
    assert _dir_state(elsewhere) == before
    assert "not inside" in caplog.text


def test_corrupt_shared_blob_under_a_link_out_is_skipped_not_fatal(hub, repo, tmp_path, ws_home, caplog):
    """A corrupt shared blob whose directory links out of the shared directory: it is not removed (it is
    not the tier's to remove), the warning does not claim it was, and the pull goes to the origin."""
    ref, files = repo
    data = files["model.safetensors"]
    digest = _sha(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / digest).write_bytes(b"X" * len(data))
    shared = tmp_path / "shared"
    (shared / "blobs" / "sha256").mkdir(parents=True)
    os.symlink(elsewhere, shared / "blobs" / "sha256" / digest[:2])
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        snap = warmstart.pull(ref, settings=_settings(tmp_path / "node-a", shared_dir=shared))
    assert (snap.path / "model.safetensors").read_bytes() == data
    assert (elsewhere / digest).read_bytes() == b"X" * len(data)
    assert "is corrupt" in caplog.text and "could not remove it" in caplog.text
    assert "removed it" not in caplog.text.replace("could not remove it", "")


# ------------------------------------------------------------------------- review: the RAM tier


def _tamper(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_ram_copy_changed_after_promotion_is_never_served(repo, tmp_path, ws_home, caplog):
    """A RAM copy rewritten in place (same size, other bytes) is re-hashed, dropped and copied again from
    the verified disk blob; ``verify`` reports (and drops) such a copy too."""
    ref, files = repo
    s = _settings(ws_home, memory_dir=tmp_path / "mem")
    snap = warmstart.pull(ref, settings=s, tier="memory")
    cfg = next(f for f in snap.files if f.path == "config.json")
    ram_blob = tmp_path / "mem" / "blobs" / "sha256" / cfg.digest[:2] / cfg.digest
    assert (snap.path / "config.json").resolve() == ram_blob.resolve()
    bad = b'{"EVIL": 1}'.ljust(len(CONFIG), b" ")
    _tamper(ram_blob, bad)
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        snap = warmstart.pull(ref, settings=s, tier="memory")
    assert (snap.path / "config.json").read_bytes() == CONFIG
    assert warmstart.load(ref, settings=s)["a.weight"].shape == (64, 32)
    assert "does not hash to its digest" in caplog.text
    _tamper(ram_blob, bad)
    report = warmstart.cache(settings=s).verify()
    assert not report.ok and report.memory_corrupt == (cfg.digest,)
    assert not ram_blob.exists()


def test_ram_tier_never_writes_through_a_link_out_of_its_root(repo, tmp_path, ws_home):
    ref, _ = repo
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mem = tmp_path / "mem"
    (mem / "blobs").mkdir(parents=True)
    os.symlink(elsewhere, mem / "blobs" / "sha256")
    s = _settings(ws_home, memory_dir=mem)
    warmstart.pull(ref, settings=s)
    with pytest.raises(warmstart.errors.ConfigError, match="symbolic link"):
        warmstart.pull(ref, settings=s, tier="memory")
    assert list(elsewhere.iterdir()) == []
    from warmstart.cache.tiers.memory import MemoryTier

    tier = MemoryTier(mem, disk=warmstart.cache(settings=s).layout)
    with pytest.raises(warmstart.errors.UnsafePathError):  # below the root check: each directory is checked
        tier._make_dirs(mem / "blobs" / "sha256" / "ab")
    assert list(elsewhere.iterdir()) == []


def test_ram_root_writable_by_others_is_refused_unless_sticky_and_yours(repo, tmp_path, ws_home):
    ref, files = repo
    mem = tmp_path / "mem"
    mem.mkdir()
    s = _settings(ws_home, memory_dir=mem)
    warmstart.pull(ref, settings=s)
    os.chmod(mem, 0o777)
    with pytest.raises(warmstart.errors.ConfigError, match="writable by other users"):
        warmstart.pull(ref, settings=s, tier="memory")
    os.chmod(mem, 0o1777)  # like /tmp, and owned by this user: others cannot replace this user's files
    snap = warmstart.pull(ref, settings=s, tier="memory")
    assert (snap.path / "config.json").read_bytes() == files["config.json"]


# ------------------------------------------------------------------- finding 10: publish replaces


def test_truncated_blob_is_repaired_by_a_pull(repo, ws_home):
    ref, files = repo
    snap = warmstart.pull(ref, settings=_settings(ws_home))
    blob = next(f.blob for f in snap.files if f.path == "model.safetensors")
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.truncate(100)
    os.chmod(blob, 0o444)
    r = _cli(["pull", f"{ref}@{snap.revision}"])
    assert r.returncode == 0, r.stderr
    assert blob.read_bytes() == files["model.safetensors"]
    assert stat.S_IMODE(blob.stat().st_mode) & 0o222 == 0
    from safetensors.numpy import load

    expected = load(files["model.safetensors"])
    got = warmstart.load(f"{ref}@{snap.revision}", settings=_settings(ws_home))
    assert set(got) == set(expected)
    for name, t in got.items():
        assert t.numpy().tobytes() == expected[name].tobytes()


def test_publish_replaces_a_corrupt_blob_of_the_same_size(tmp_path):
    from warmstart.cache.layout import Layout
    from warmstart.cache.store import BlobStore

    store = BlobStore(Layout(tmp_path))
    data = os.urandom(10000)
    d = store.put_bytes(data)
    p = store.path(d)
    os.chmod(p, 0o644)
    p.write_bytes(b"\0" * len(data))
    os.chmod(p, 0o444)
    tmp = tmp_path / "tmp" / "verified"
    tmp.write_bytes(data)
    store.publish(tmp, d)
    assert p.read_bytes() == data and not tmp.exists()
    assert stat.S_IMODE(p.stat().st_mode) == 0o444
    tmp.write_bytes(data)  # a sound blob is kept, the copy dropped
    ino = p.stat().st_ino
    store.publish(tmp, d)
    assert p.stat().st_ino == ino and not tmp.exists()


# ---------------------------------------------------------------- finding 11: a damaged index.db


def test_garbage_index_is_one_line_everywhere_and_rebuild_recovers(repo, ws_home):
    ref, files = repo
    snap = warmstart.pull(ref, settings=_settings(ws_home))
    index = ws_home / "index.db"
    for extra in ("index.db-wal", "index.db-shm"):
        (ws_home / extra).unlink(missing_ok=True)
    index.write_bytes(os.urandom(8192))
    for args in (["ls"], ["gc"], ["rm", ref], ["pull", ref], ["pull", f"{ref}@{snap.revision}"], ["du"],
                 ["pin", ref], ["verify"]):
        _one_line_error(_cli(args), "index.db", "corrupt", "--rebuild-index")
    r = _cli(["verify", "--rebuild-index"])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert list(ws_home.glob("index.db.damaged-*"))
    r = _cli(["ls", "--json"])
    assert r.returncode == 0, r.stderr
    [entry] = json.loads(r.stdout)
    assert (entry["model"], entry["revision"]) == (ref, snap.revision)
    env = dict(os.environ, WARMSTART_OFFLINE="1")
    r = _cli(["pull", ref], env)  # the ref recorded again from hub/…/refs/main
    assert r.returncode == 0, r.stderr
    assert (Path(r.stdout.splitlines()[-1]) / "config.json").read_bytes() == files["config.json"]


class _FullDisk:
    """Stands in for the index's SQLite connection: reads pass, writes fail as on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


def test_full_disk_during_an_index_write_is_a_cache_full_error(repo, ws_home):
    ref, _ = repo
    m = warmstart.cache(settings=_settings(ws_home))
    warmstart.pull(ref, settings=_settings(ws_home))
    m.index._db = _FullDisk(m.index._db)
    with pytest.raises(CacheFullError, match="is full.*free space"):
        m.pin(ref)


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="ws-full-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def test_full_disk_for_real_is_one_line(repo, ws_home, small_tmpfs, monkeypatch):
    ref, _ = repo
    home = small_tmpfs / "home"
    from warmstart.cache import home as cache_home  # `warmstart.cache` itself is the API function

    monkeypatch.setattr(cache_home, "DISK_RESERVE", 0)
    warmstart.pull(ref, settings=_settings(home))
    with open(small_tmpfs / "filler", "wb") as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    env = dict(os.environ, WARMSTART_HOME=str(home))
    _one_line_error(_cli(["pin", ref], env), "full", "free space")
    r = _cli(["ls"], env)  # reading still works
    assert r.returncode == 0, r.stderr
    (small_tmpfs / "filler").unlink()
    r = _cli(["pin", ref], env)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------ read-only cache home


@pytest.fixture
def nobody() -> str | None:
    """The user to run the CLI as so that mode bits apply: ``nobody`` under root, else ourselves."""
    if os.geteuid() != 0:
        return None
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop root")
    return "nobody"


@pytest.fixture
def ro_home(repo, ws_home, monkeypatch) -> Iterator[tuple[Path, str]]:
    """A cache home holding ``repo`` at its commit, readable by everyone and writable by no one."""
    ref, _ = repo
    top = Path(tempfile.mkdtemp(prefix="ws-ro-"))
    home = top / "home"
    snap = warmstart.pull(ref, settings=_settings(home))
    Index(home / "index.db").close()
    for p in [top, *top.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
    monkeypatch.setenv("WARMSTART_HOME", str(home))
    try:
        yield home, snap.revision
    finally:
        for p in [top, *top.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(top)


def _snapshot_of(home: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in home.rglob("*")}


def test_read_only_home_serves_cached_commits(hub, repo, ro_home, nobody):
    ref, files = repo
    home, commit = ro_home
    before = _snapshot_of(home)
    r = _cli(["pull", f"{ref}@{commit}"], user=nobody)
    assert r.returncode == 0, r.stderr
    assert (Path(r.stdout.splitlines()[-1]) / "config.json").read_bytes() == files["config.json"]
    r = _cli(["pull", ref], user=nobody)  # a branch: resolved online, served from the cache
    assert r.returncode == 0, r.stderr
    r = _cli(["ls", "--json"], user=nobody)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["revision"] == commit
    script = ("import json, sys, warmstart\n"
              f"t = warmstart.load({f'{ref}@{commit}'!r})\n"
              "json.dump({k: v.numpy().tobytes().hex() for k, v in t.items()}, sys.stdout)\n")
    r = _run([sys.executable, "-c", script], None, nobody, 120)
    assert r.returncode == 0, r.stderr
    from safetensors.numpy import load

    expected = {k: v.tobytes().hex() for k, v in load(files["model.safetensors"]).items()}
    assert json.loads(r.stdout) == expected
    assert _snapshot_of(home) == before


def test_read_only_home_uncached_pull_is_one_line(hub, ro_home, nobody):
    home, _ = ro_home
    other = f"hostile-tiers/other-{uuid.uuid4().hex[:8]}"
    hub.add_repo(HubRepo(other, {"config.json": CONFIG}))
    line = _one_line_error(_cli(["pull", f"hf://{other}"], user=nobody), "read-only", "WARMSTART_HOME")
    assert str(home) in line


def test_index_error_translation_is_a_warmstart_error(tmp_path):
    (tmp_path / "index.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(CacheIndexError, match="corrupt.*--rebuild-index"):
        Index(tmp_path / "index.db")

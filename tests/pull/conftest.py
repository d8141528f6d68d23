"""Helpers for the pull tests: fresh repos on the session Hub, the CLI as a subprocess, blob checks."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers.hub import HubRepo, HubServer

MiB = 1 << 20
TINY = "test-org/tiny-llama"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def origin_files(hub: HubServer, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    """``{path: bytes}`` of a repo at a revision, as the origin serves it."""
    out = {}
    for path, f in hub.repo(repo_id).tree(revision).items():
        out[path] = f.source.read_bytes() if isinstance(f.source, Path) else bytes(f.source)
    return out


def blob_files(home: Path) -> dict[str, Path]:
    """``{name: path}`` of every file under ``blobs/sha256/*/``."""
    root = home / "blobs" / "sha256"
    return {p.name: p for p in root.glob("*/*") if p.is_file()} if root.is_dir() else {}


def assert_blobs_sound(home: Path) -> dict[str, Path]:
    """Every blob sits at ``blobs/sha256/<2 hex>/<64 hex>``, is read-only and holds what its name says."""
    blobs = blob_files(home)
    for name, p in blobs.items():
        assert len(name) == 64 and all(c in "0123456789abcdef" for c in name), p
        assert p.parent.name == name[:2], p
        assert p.stat().st_mode & 0o222 == 0, f"{p} is writable"
        assert file_sha256(p) == name, f"{p} does not hold the bytes its name says"
    return blobs


def assert_snapshot_matches(snap_dir: Path, expected: dict[str, bytes]) -> None:
    """``snap_dir`` holds exactly ``expected`` (path -> bytes), byte for byte."""
    got = {p.relative_to(snap_dir).as_posix() for p in snap_dir.rglob("*") if not p.is_dir()}
    assert got == set(expected)
    for path, data in expected.items():
        assert (snap_dir / path).read_bytes() == data, path


class BlobWatcher:
    """Polls ``blobs/`` on a thread while a pull runs and records any blob whose bytes do not match its
    name (a partial or unverified file published at any moment)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.bad: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _check(self) -> None:
        for name, p in blob_files(self.home).items():
            if name in self.seen:
                continue
            self.seen.add(name)
            try:
                if file_sha256(p) != name:
                    self.bad.append(name)
            except FileNotFoundError:
                self.seen.discard(name)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._check()

    def __enter__(self) -> BlobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._check()


@pytest.fixture
def make_repo(hub: HubServer) -> Callable[..., str]:
    """``make_repo({path: bytes}, **HubRepo kwargs)`` adds a fresh repo to the test Hub; returns its id."""

    def make(files: dict[str, bytes], **kwargs) -> str:
        repo_id = f"pull-test/r-{uuid.uuid4().hex[:10]}"
        hub.add_repo(HubRepo(repo_id, files, **kwargs))
        return repo_id

    return make


@pytest.fixture
def cli_env(ws_home: Path) -> dict[str, str]:
    """The environment of a ``warmstart`` subprocess: this test's home and Hub, no token, not offline."""
    env = dict(os.environ)
    env.pop("WARMSTART_QUIET", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warmstart.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def closed_endpoint() -> Iterator[str]:
    """An http endpoint on loopback where nothing listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield f"http://127.0.0.1:{port}"

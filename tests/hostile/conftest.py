"""The hostile suite's fixtures: a scriptable malicious Hub-compatible origin on loopback, and guards
that prove nothing outside the cache home changed.

::

    evil = EvilHub().start()                       # or the ``evil_hub`` fixture
    info = evil.model("evil/model", {"config.json": b"{}"})   # a truthful answer to start from...
    info["sha"] = "../../../../outside"            # ...then make it lie
    evil.serve("evil/model", "config.json", b"x", headers={"ETag": '"../x"'})
    evil.set_info("evil/model", b"not json")       # any JSON value, or raw bytes

    GET  /api/models/{org}/{name}/revision/{rev}   the info set for the repo (any rev)
    GET  /api/models/{org}/{name}/tree/{rev}[/..]  the tree set for the repo (default: [])
    HEAD/GET /{org}/{name}/resolve/{rev}/{path}    the bytes and headers served for (repo, path)

``outside`` snapshots a sentinel tree and the test's ``tmp_path`` (minus the cache home) before the
test and compares it after: ``outside.assert_unchanged()`` (also run at teardown).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.servers.hub import git_blob_sha1
from tests.servers.shaping import OriginHandler, OriginServer

LFS_SUFFIXES = (".safetensors", ".bin")


def random_commit() -> str:
    return hashlib.sha1(uuid.uuid4().bytes).hexdigest()


class _EvilHandler(OriginHandler):
    server: _EvilServer

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self.begin():
            return
        evil = self.server.evil
        raw = urlsplit(self.path).path
        if raw.startswith("/api/models/"):
            segs = raw[len("/api/models/"):].split("/")
            repo_id, kind = unquote("/".join(segs[:2])), segs[2] if len(segs) > 2 else "revision"
            with evil.lock:
                answer = (evil.trees if kind == "tree" else evil.infos).get(repo_id)
            if answer is None:
                self.send_json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        repo_id, sep, rest = raw.lstrip("/").partition("/resolve/")
        path = unquote(rest.partition("/")[2]) if sep else ""
        with evil.lock:
            found = evil.bodies.get((unquote(repo_id), path))
        if found is None:
            self.send_json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            return
        data, headers = found
        self.send_resource(data, len(data), {"Content-Type": "application/octet-stream", **headers})


class _EvilServer(OriginServer):
    evil: EvilHub


class EvilHub:
    """A Hub-compatible origin that answers whatever the test scripts (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.infos: dict[str, object] = {}
        self.trees: dict[str, object] = {}
        self.bodies: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self._server = _EvilServer((host, 0), _EvilHandler)
        self._server.evil = self

    def start(self) -> EvilHub:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def endpoint(self) -> str:
        return self._server.endpoint

    @property
    def counters(self):
        return self._server.counters

    def reset(self) -> None:
        with self.lock:
            self.infos.clear()
            self.trees.clear()
            self.bodies.clear()
        self._server.counters.reset()
        self._server.faults.clear()

    # -- scripting -------------------------------------------------------------------------------------
    def set_info(self, repo_id: str, answer: object) -> None:
        """What ``/api/models/{repo}/revision/{rev}`` answers: any JSON value, or raw bytes."""
        with self.lock:
            self.infos[repo_id] = answer

    def set_tree(self, repo_id: str, answer: object) -> None:
        with self.lock:
            self.trees[repo_id] = answer

    def serve(self, repo_id: str, path: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """The bytes (and extra headers) ``/{repo}/resolve/{any rev}/{path}`` answers."""
        with self.lock:
            self.bodies[(repo_id, path)] = (bytes(data), dict(headers or {}))

    def model(self, repo_id: str, files: dict[str, bytes], *, commit: str | None = None) -> dict:
        """Serve ``files`` truthfully (sizes, git blob ids, LFS sha256 for weights) and return the revision
        answer, which the test may change in place before pulling (it is served as it is then)."""
        sha = commit or random_commit()
        siblings = []
        for path, data in files.items():
            s: dict = {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
            if path.endswith(LFS_SUFFIXES):
                s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(s)
            self.serve(repo_id, path, data, {"X-Repo-Commit": sha})
        info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "siblings": siblings}
        self.set_info(repo_id, info)
        self.set_tree(repo_id, [{"type": "file", "path": s["rfilename"], "size": s["size"], "oid": s["blobId"]}
                                for s in siblings])
        return info


@pytest.fixture(scope="session")
def _evil_session() -> Iterator[EvilHub]:
    evil = EvilHub().start()
    try:
        yield evil
    finally:
        evil.stop()


@pytest.fixture
def evil_hub(_evil_session: EvilHub) -> Iterator[EvilHub]:
    """The malicious origin, emptied before and after the test."""
    _evil_session.reset()
    yield _evil_session
    _evil_session.reset()


# ------------------------------------------------------------------------------- the world outside


def tree_state(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed) as ``{relative path: (kind, detail)}``: a file's
    mode, size and sha256, a link's target, a directory's mode."""
    out: dict[str, tuple] = {}
    skipped = {os.path.abspath(p) for p in skip}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if p in skipped:
                continue
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, digest)
    return out


class Outside:
    """The file system a test may not change: ``sentinel`` (a tree of files, a nested directory and a
    link, planted for attacks to aim at) and the rest of ``tmp_path``, the cache home excepted."""

    def __init__(self, tmp_path: Path, home: Path) -> None:
        self.root = tmp_path
        self.home = home
        self.allowed: list[Path] = [home]
        self.sentinel = tmp_path / "outside"
        victim = self.sentinel / "victim"
        (victim / "deep").mkdir(parents=True)
        (victim / "keep.txt").write_bytes(b"the user's file\n")
        (victim / "deep" / "data.bin").write_bytes(os.urandom(256))
        (self.sentinel / "config.json").write_bytes(b'{"user": true}\n')
        os.symlink("victim/keep.txt", self.sentinel / "link-to-keep")
        self.before = self.state()

    def allow(self, path: Path) -> None:
        """A path the test lets warmstart change (a ``--to`` directory)."""
        self.allowed.append(Path(path))

    def state(self) -> dict[str, tuple]:
        return tree_state(self.root, skip=tuple(self.allowed))

    def changes(self) -> list[str]:
        after = self.state()
        out = []
        for k in sorted(set(self.before) | set(after)):
            if self.before.get(k) != after.get(k):
                out.append(f"{k}: {self.before.get(k)} -> {after.get(k)}")
        return out

    def assert_unchanged(self) -> None:
        changed = self.changes()
        assert not changed, "files outside the cache home changed:\n" + "\n".join(changed[:20])


@pytest.fixture
def hostile_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evil_hub: EvilHub) -> Path:
    """A fresh ``WARMSTART_HOME`` under ``tmp_path``; ``HF_ENDPOINT`` is the malicious origin."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("WARMSTART_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", evil_hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("WARMSTART_QUIET", "1")
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "WARMSTART_OFFLINE", "HF_HUB_CACHE", "WARMSTART_MAX_SIZE",
                 "WARMSTART_SHARED_DIR", "WARMSTART_MEMORY_DIR"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def outside(tmp_path: Path, hostile_home: Path) -> Iterator[Outside]:
    """The sentinel tree and ``tmp_path`` minus the home, compared before and after the test."""
    guard = Outside(tmp_path, hostile_home)
    yield guard
    guard.assert_unchanged()

"""A Hugging Face Hub-compatible origin on loopback, with a second loopback host as its LFS "CDN".

::

    http://127.0.0.1:P  (the Hub)                       http://127.0.0.2:Q  (the CDN)
      GET  /api/models/{repo}[/revision/{rev}]           GET/HEAD /blobs/{sha256}/{path}
      GET  /api/models/{repo}/tree/{rev}[/{path}]          Range, keep-alive, no auth
      GET  /api/models/{repo}/refs
      HEAD/GET /{repo}/resolve/{rev}/{path}
        small files: 200 + bytes (Range)
        LFS files:   302 -> CDN, with X-Linked-Etag / X-Linked-Size

Example::

    repo = HubRepo("test-org/tiny", {"config.json": b"{}", "model.safetensors": Path(...)})
    with HubServer(repos=[repo], link=Link(20e6, 320e6, 0.02)) as hub:
        snapshot_download("test-org/tiny", endpoint=hub.endpoint, cache_dir=...)
        sha = hub.push("test-org/tiny", {"config.json": b'{"v": 2}'})

Reduced modes, as mirrors and proxies behave (attributes you may change while it runs):
``names_only`` (the listing ignores ``?blobs=true`` and the tree endpoint answers 404: file names
only, no sizes, no sha256, no git oids), ``head`` (False: HEAD answers 405, on both hosts),
``cdn_ranges`` (False: the CDN ignores ``Range`` and always answers 200 with the whole file).

Auth: a private repo answers 401 ``RepoNotFound`` without a valid ``Authorization: Bearer <token>``;
a gated repo answers 403 ``GatedRepo``; an unknown token answers 401 "Invalid credentials in
Authorization header" as the Hub does. Shaping, faults and counters come from :mod:`.shaping` and
cover both hosts (one shared ``Link``, ``Faults`` and ``Counters``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .shaping import Counters, Faults, Link, OriginHandler, OriginServer, Source

LFS_THRESHOLD = 1 << 20
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf")
DIGEST_SIDECAR = ".digests.json"
_digest_cache: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached in-process and read from a ``.digests.json`` sidecar when one is fresh."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _digest_lock:
        if key in _digest_cache:
            return _digest_cache[key]
    sidecar = path.parent / DIGEST_SIDECAR
    if sidecar.is_file():
        entry = json.loads(sidecar.read_text()).get(path.name)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            digest = entry["sha256"]
            with _digest_lock:
                _digest_cache[key] = digest
            return digest
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    with _digest_lock:
        _digest_cache[key] = h.hexdigest()
    return h.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file in one commit. ``oid`` is the git blob sha1 (of the LFS pointer for LFS files)."""

    path: str
    source: Source
    size: int
    oid: str
    sha256: str | None = None  # set for LFS files only
    pointer_size: int | None = None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def etag(self) -> str:
        return self.sha256 or self.oid

    @classmethod
    def build(cls, path: str, source: bytes | str | os.PathLike, lfs: bool | None = None) -> HubFile:
        if isinstance(source, (str, os.PathLike)):
            src: Source = Path(source)
            size = src.stat().st_size
        else:
            src = bytes(source)
            size = len(src)
        if lfs is None:
            lfs = size > LFS_THRESHOLD or any(fnmatch.fnmatch(path, p) for p in LFS_PATTERNS)
        if not lfs:
            data = src.read_bytes() if isinstance(src, Path) else src
            return cls(path, src, size, git_blob_sha1(data))
        sha = file_sha256(src) if isinstance(src, Path) else hashlib.sha256(src).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
        return cls(path, src, size, git_blob_sha1(pointer), sha, len(pointer))


@dataclass
class HubRepo:
    """A model repo: commits (sha1 -> files), branches and tags. The first commit goes on ``main``.

    ``files`` maps repo paths to bytes or to files on disk. ``lfs`` forces (True/False) or decides per
    file (None: over 1 MiB or a weights extension, like the Hub's default .gitattributes).
    """

    repo_id: str
    files: Mapping[str, bytes | str | os.PathLike] = field(default_factory=dict)
    private: bool = False
    gated: bool = False
    lfs: bool | None = None
    branch: str = "main"
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict, init=False)
    branches: dict[str, str] = field(default_factory=dict, init=False)
    tags: dict[str, str] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.commit(self.files, branch=self.branch, message="initial commit")

    @classmethod
    def from_dir(cls, repo_id: str, directory: str | os.PathLike, **kwargs) -> HubRepo:
        root = Path(directory)
        files = {
            p.relative_to(root).as_posix(): p
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != DIGEST_SIDECAR and ".cache" not in p.relative_to(root).parts
        }
        return cls(repo_id, files, **kwargs)

    def commit(
        self,
        files: Mapping[str, bytes | str | os.PathLike | None],
        *,
        branch: str = "main",
        message: str = "",
        replace: bool = False,
    ) -> str:
        """Add a commit on ``branch`` (created if missing) that adds/overwrites ``files`` (None deletes)."""
        built = {p: HubFile.build(p, s, self.lfs) for p, s in files.items() if s is not None}
        with self._lock:
            parent = self.branches.get(branch)
            tree = {} if replace or parent is None else dict(self.commits[parent])
            for p, s in files.items():
                if s is None:
                    tree.pop(p, None)
            tree.update(built)
            seed = f"{self.repo_id}\n{parent}\n{len(self.commits)}\n{message}\n" + "\n".join(
                f"{p} {f.etag}" for p, f in sorted(tree.items())
            )
            sha = hashlib.sha1(seed.encode()).hexdigest()
            self.commits[sha] = tree
            self.branches[branch] = sha
            return sha

    def tag(self, name: str, revision: str = "main") -> str:
        sha = self.resolve(revision)
        if sha is None:
            raise KeyError(revision)
        self.tags[name] = sha
        return sha

    def create_branch(self, name: str, revision: str = "main") -> str:
        sha = self.resolve(revision)
        if sha is None:
            raise KeyError(revision)
        self.branches[name] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        """Commit sha for a branch, a tag or a full commit sha; None when unknown."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        return revision if revision in self.commits else None

    def tree(self, revision: str = "main") -> dict[str, HubFile]:
        sha = self.resolve(revision)
        if sha is None:
            raise KeyError(revision)
        return self.commits[sha]


# ------------------------------------------------------------------------------------------- handlers


def _error_headers(code: str, message: str) -> dict[str, str]:
    return {"X-Error-Code": code, "X-Error-Message": message}


class HubHandler(OriginHandler):
    server: _HubHTTPServer

    def do_HEAD(self) -> None:
        if not self.server.hub.head:
            self._refuse_head()
            return
        self.do_GET()

    def _refuse_head(self) -> None:
        if self.begin():
            self.send_json(405, {"error": "Method Not Allowed"}, {"Allow": "GET"})

    def do_GET(self) -> None:
        if not self.begin():
            return
        parts = urlsplit(self.path)
        raw = parts.path
        query = parse_qs(parts.query)
        if raw.startswith("/api/models/"):
            self._api(raw[len("/api/models/") :], query)
        elif "/resolve/" in raw:
            repo_id, _, rest = raw.lstrip("/").partition("/resolve/")
            rev, _, path = rest.partition("/")
            self._resolve(unquote(repo_id), unquote(rev), unquote(path))
        else:
            self._fail(404, "", "Not Found")

    # -- errors and auth -------------------------------------------------------------------------
    def _fail(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = _error_headers(code, message) if code else {"X-Error-Message": message}
        self.send_json(status, {"error": message}, {**headers, **(extra or {})})

    def _lookup(self, repo_id: str) -> HubRepo | None:
        """The repo if the caller may see it; otherwise answers the error and returns None."""
        hub = self.server.hub
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token is not None and token not in hub.tokens:
            self._fail(401, "", "Invalid credentials in Authorization header")
            return None
        repo = hub.repos.get(repo_id)
        if repo is None or (repo.private and token is None):
            status = 401 if token is None else 404
            self._fail(status, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and token is None:
            self._fail(403, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                       "and be authenticated to access it. Please log in.")
            return None
        return repo

    def _commit(self, repo: HubRepo, rev: str) -> str | None:
        sha = repo.resolve(rev)
        if sha is None:
            self._fail(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    # -- /api/models -----------------------------------------------------------------------------
    def _api(self, rest: str, query: dict[str, list[str]]) -> None:
        segs = rest.split("/")
        # repo ids are "name" or "org/name": prefer the reading that names a known repo
        known = self.server.hub.repos
        n = 2 if len(segs) >= 2 and (unquote("/".join(segs[:2])) in known or segs[0] not in known) else 1
        repo_id = unquote("/".join(segs[:n]))
        tail = segs[n:]
        repo = self._lookup(repo_id)
        if repo is None:
            return
        if not tail or (tail[0] == "revision" and len(tail) >= 2):
            rev = unquote("/".join(tail[1:])) if tail else "main"
            sha = self._commit(repo, rev)
            if sha is not None:
                blobs = _flag(query, "blobs") and not self.server.hub.names_only
                self.send_json(200, self.server.hub.model_info_json(repo, sha, blobs))
        elif tail[0] == "tree" and len(tail) >= 2 and not self.server.hub.names_only:
            sha = self._commit(repo, unquote(tail[1]))
            if sha is not None:
                self._tree(repo, sha, unquote("/".join(tail[2:])).strip("/"), query)
        elif tail[0] == "refs":
            self.send_json(200, {
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in repo.tags.items()],
                "converts": [],
            })
        else:
            self._fail(404, "", "Not Found")

    def _tree(self, repo: HubRepo, sha: str, prefix: str, query: dict[str, list[str]]) -> None:
        files = repo.commits[sha]
        recursive = _flag(query, "recursive")
        under = [f for p, f in sorted(files.items()) if not prefix or p.startswith(prefix + "/")]
        if prefix and not under:
            self._fail(404, "EntryNotFound", f"{prefix} does not exist on {sha}")
            return
        entries: dict[str, dict] = {}
        base = len(prefix) + 1 if prefix else 0
        for f in under:
            rel = f.path[base:].split("/")
            # directories on the way (all of them when recursive, the first level otherwise)
            for depth in range(1, len(rel) if recursive else min(2, len(rel))):
                d = f.path[:base] + "/".join(rel[:depth])
                entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                                       "size": 0, "path": d})
            if recursive or len(rel) == 1:
                entries[f.path] = _file_entry(f)
        items = sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))
        page = self.server.hub.tree_page_size
        start = int(query.get("cursor", ["0"])[0] or 0)
        chunk = items[start : start + page]
        headers = {}
        if start + page < len(items):
            qs = "&".join(f"{k}={quote(v[0])}" for k, v in query.items() if k != "cursor")
            url = f"{self.server.hub.endpoint}{urlsplit(self.path).path}?{qs}&cursor={start + page}"
            headers["Link"] = f'<{url}>; rel="next"'
        self.send_json(200, chunk, headers)

    # -- /resolve ----------------------------------------------------------------------------------
    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._lookup(repo_id)
        if repo is None:
            return
        sha = self._commit(repo, rev)
        if sha is None:
            return
        f = repo.commits[sha].get(path)
        if f is None:
            self._fail(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"", {"X-Repo-Commit": sha})
            return
        headers = {"X-Repo-Commit": sha, "ETag": f'"{f.etag}"', "Content-Type": "application/octet-stream"}
        if f.lfs:
            hub = self.server.hub
            headers.update({
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
                "Location": f"{hub.cdn_endpoint}/blobs/{f.sha256}/{quote(path)}",
            })
            self.send_empty(302, headers)
            return
        self.send_resource(f.source, f.size, headers)


class CdnHandler(OriginHandler):
    server: _HubHTTPServer

    def do_HEAD(self) -> None:
        if not self.server.hub.head:
            if self.begin():
                self.send_json(405, {"error": "Method Not Allowed"}, {"Allow": "GET"})
            return
        self.do_GET()

    def do_GET(self) -> None:
        if not self.begin():
            return
        segs = urlsplit(self.path).path.strip("/").split("/")
        f = self.server.hub.blob(segs[1]) if len(segs) >= 2 and segs[0] == "blobs" else None
        if f is None:
            self.send_json(404, {"error": "NoSuchKey"})
            return
        self.send_resource(f.source, f.size, {"ETag": f'"{f.sha256}"', "Content-Type": "application/octet-stream"},
                           ranges=self.server.hub.cdn_ranges)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("1", "true", "yes")


def _file_entry(f: HubFile) -> dict:
    entry = {"type": "file", "oid": f.oid, "size": f.size, "path": f.path}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
    return entry


class _HubHTTPServer(OriginServer):
    hub: HubServer


# --------------------------------------------------------------------------------------------- server


class HubServer:
    """The Hub on ``host`` and its CDN on ``cdn_host``; see the module docstring.

    Attributes you may change while it runs: ``link`` (shared by both hosts), ``tokens``,
    ``tree_page_size``; ``faults`` and ``counters`` are shared by both hosts.
    """

    def __init__(
        self,
        repos: Iterable[HubRepo] = (),
        *,
        link: Link | None = None,
        host: str = "127.0.0.1",
        cdn_host: str = "127.0.0.2",
        tokens: Iterable[str] = ("hf_test_token",),
        tree_page_size: int = 1000,
        names_only: bool = False,
        head: bool = True,
        cdn_ranges: bool = True,
    ) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.names_only, self.head, self.cdn_ranges = names_only, head, cdn_ranges
        self.tokens = set(tokens)
        self.tree_page_size = tree_page_size
        self.faults = Faults()
        self.counters = Counters()
        self._blobs: dict[str, HubFile] = {}
        self._api = _HubHTTPServer((host, 0), HubHandler, faults=self.faults, counters=self.counters)
        self._cdn = _HubHTTPServer((cdn_host, 0), CdnHandler, faults=self.faults, counters=self.counters)
        self._api.hub = self._cdn.hub = self
        self.link = link
        for repo in repos:
            self.add_repo(repo)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> HubServer:
        self._api.start()
        self._cdn.start()
        return self

    def stop(self) -> None:
        self._api.stop()
        self._cdn.stop()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self._api.endpoint

    @property
    def cdn_endpoint(self) -> str:
        return self._cdn.endpoint

    @property
    def link(self) -> Link | None:
        return self._api.link

    @link.setter
    def link(self, link: Link | None) -> None:
        self._api.link = self._cdn.link = link

    def reset(self) -> None:
        """Between tests: zero the counters, drop pending faults, unshape the link, full API again."""
        self.counters.reset()
        self.faults.clear()
        self.link = None
        self.names_only, self.head, self.cdn_ranges = False, True, True

    def add_repo(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def repo(self, repo_id: str) -> HubRepo:
        return self.repos[repo_id]

    def push(self, repo_id: str, files: Mapping[str, bytes | str | os.PathLike | None], branch: str = "main",
             message: str = "push", replace: bool = False) -> str:
        """A new commit on ``branch`` of ``repo_id``; returns its sha."""
        return self.repos[repo_id].commit(files, branch=branch, message=message, replace=replace)

    def url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def blob(self, sha256: str) -> HubFile | None:
        f = self._blobs.get(sha256)
        if f is None:  # rebuild the index: repos and commits may have been added since
            self._blobs = {
                f.sha256: f
                for repo in list(self.repos.values())
                for tree in list(repo.commits.values())
                for f in tree.values()
                if f.sha256
            }
            f = self._blobs.get(sha256)
        return f

    def model_info_json(self, repo: HubRepo, sha: str, blobs: bool) -> dict:
        siblings = []
        for p, f in sorted(repo.commits[sha].items()):
            s: dict = {"rfilename": p}
            if blobs:
                s.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(s)
        org = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": org,
            "sha": sha,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers",
            "siblings": siblings,
            "usedStorage": sum(f.size for f in repo.commits[sha].values()),
        }

"""Local or network paths: ``file:///PATH`` or a plain path (a directory or one file).

Two ways in, chosen by ``PullOptions.in_place`` (``warmstart pull PATH --in-place``):

* import (default): each file is hashed and put into the blob store by hardlink when the path is on
  the cache's filesystem, else by ``copy_file_range`` (a reflink on CoW filesystems such as XFS or
  btrfs, an in-kernel copy elsewhere). The copy and the hash read the file concurrently, so it is
  read from disk once; files are imported in parallel.
* in place: the files are hashed and indexed where they are; the blob is a symlink to the original
  (for NFS mounts that operators do not want duplicated). Changing an original afterwards makes
  ``warmstart verify`` report it.

Each file's digest is remembered by (path, size, mtime, inode), so pulling the same path again
hashes nothing.

>>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("x")
>>> [f.path for f in LocalSource(None).resolve(Ref("file", str(d))).files]
['a.txt']
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .._fs import reflink_file
from ..errors import GatedRepoError, NotFoundError
from ..refs import Ref
from .base import Listing, RemoteFile, Source, safe_relpath

log = logging.getLogger(__name__)

SKIP_DIRS = {".git", ".cache", ".hg", "__pycache__"}
WORKERS = 8


class LocalSource(Source):
    """A directory (every regular file under it, symlinks followed) or one file."""

    schemes = ("file",)
    default_revision = "latest"

    def resolve(self, ref: Ref) -> Listing:
        root = Path(ref.location)
        try:
            st = root.stat()
        except FileNotFoundError:
            raise NotFoundError(f"{ref}: no such file or directory; check the path (or the mount)") from None
        if root.is_dir():
            found = list(_walk(root, self._own_dirs(root)))
            if not found:
                raise NotFoundError(f"{ref}: the directory holds no files")
        else:
            found = [(root.name, root, st)]
        files = []
        h = hashlib.sha256()
        for rel, path, fst in sorted(found, key=lambda x: x[0]):
            tag = f"{fst.st_size}-{fst.st_mtime_ns}-{fst.st_ino}"
            h.update(f"{rel}\0{tag}\n".encode())
            files.append(RemoteFile(safe_relpath(rel), fst.st_size, path.as_uri(), etag=tag, ranges=False))
        return Listing(ref, h.hexdigest()[:40], tuple(files))

    def _own_dirs(self, root: Path) -> set[str]:
        """warmstart's own directories (cache home, tiers) that lie under ``root``: never imported, or
        the import would copy the cache into itself while it writes there."""
        top = os.path.realpath(root)
        s = self.settings
        dirs = [s.home, s.memory_dir, s.shared_dir] if s is not None else []
        return {d for d in (os.path.realpath(x) for x in dirs if x) if d.startswith(top + os.sep)}

    def materialize(self, listing, files, cache, settings, opts):
        """Import (or index in place) ``files``; see the module docstring."""
        from ..cache.index import FileEntry

        in_place = bool(getattr(opts, "in_place", False))
        todo, entries = [], []
        for f in files:
            digest = cache.digest_for_key(_key(f, in_place))
            if digest and cache.store.has(digest, f.size):
                entries.append(FileEntry(f.path, digest, f.size or 0, f.etag))
            else:
                todo.append(f)
        if todo and not in_place:
            cache.ensure_room(sum(f.size or 0 for f in todo), protect={e.digest for e in entries})
        progress = getattr(opts, "progress", None)
        if progress is not None:
            progress.start(sum(f.size or 0 for f in todo), len(todo))
        lock = threading.Lock()

        def one(f: RemoteFile) -> FileEntry:
            src = Path(f.url[len("file://"):]) if f.url.startswith("file://") else Path(f.url)
            digest = _index_in_place(cache, src) if in_place else _import(cache, src)
            with lock:
                cache.index.add_blob(digest, f.size or 0)
                cache.index.set_key(_key(f, in_place), digest, f.size or 0)
            if progress is not None:
                progress.advance(f.size or 0)
                progress.file_done()
            return FileEntry(f.path, digest, f.size or 0, f.etag)

        with ThreadPoolExecutor(max(1, min(WORKERS, len(todo)))) as pool:
            entries.extend(pool.map(one, todo))
        return entries, 0 if in_place else sum(f.size or 0 for f in todo)


def _key(f: RemoteFile, in_place: bool) -> str:
    return ("inplace-" if in_place else "") + f.key


def _denied(exc: OSError) -> None:
    """``os.walk`` error hook: an unreadable directory is an error the user must see, not an empty one."""
    if isinstance(exc, PermissionError):
        raise GatedRepoError(f"{exc.filename}: permission denied; pull it as a user who can read it") from None


def _walk(root: Path, skip: set[str] = frozenset()):
    for dirpath, dirnames, filenames in os.walk(root, onerror=_denied, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                             and not (skip and os.path.realpath(os.path.join(dirpath, d)) in skip))
        for name in filenames:
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue  # a dangling symlink
            if os.path.isfile(path):
                if not os.access(path, os.R_OK):
                    raise GatedRepoError(f"{path}: permission denied; pull it as a user who can read it")
                yield path.relative_to(root).as_posix(), path, st


def _import(cache, src: Path) -> str:
    """Hash ``src`` while copying (or linking) it into a temporary file; publish it under its digest."""
    from ..cache.store import _copy, sha256_file

    tmp = cache.layout.tmp / f"import-{uuid.uuid4().hex}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if reflink_file(src, tmp) or _hardlink(src, tmp):  # no bytes move; one read for the hash
        digest = sha256_file(src).hexdigest()
    else:
        err: list[BaseException] = []

        def copy() -> None:
            try:
                _copy(src, tmp)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                err.append(exc)

        t = threading.Thread(target=copy, daemon=True)
        t.start()  # the copy and the hash read the same pages: one read from disk
        digest = sha256_file(src).hexdigest()
        t.join()
        if err:
            tmp.unlink(missing_ok=True)
            raise err[0]
    if cache.store.has(digest):
        tmp.unlink(missing_ok=True)
        return digest
    cache.store.publish(tmp, digest)  # a hardlinked original becomes read-only, which protects the blob
    return digest


def _hardlink(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
        return True
    except OSError:
        return False


def _index_in_place(cache, src: Path) -> str:
    """Hash ``src`` and make its blob a symlink to it (no copy)."""
    from ..cache.store import sha256_file

    digest = sha256_file(src).hexdigest()
    if cache.store.has(digest):
        return digest
    dest = cache.store.path(digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(os.path.abspath(src), tmp)
    os.replace(tmp, dest)
    return digest

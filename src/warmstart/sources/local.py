"""Local or network paths: ``file:///PATH`` or a plain path (a directory or one file).

The source only lists the files (``file://`` URLs); the pull pipeline reads them (``warmstart.ingest``).
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
>>> [f.path for f in LocalSource(None).resolve(LocalSource.make_ref("file", str(d))).files]
['a.txt']
>>> r = LocalSource.parse_ref("file", "/models//llama/", "file:///models//llama/", False)
>>> str(r), r.key, r.pinned
('file:///models/llama', 'file:///models/llama', False)
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..errors import GatedRepoError, NotFoundError
from ..refs import Malformed, Ref
from .base import Listing, RemoteFile, Source, safe_relpath

log = logging.getLogger(__name__)

SKIP_DIRS = {".git", ".cache", ".hg", "__pycache__"}


class LocalSource(Source):
    """A directory (every regular file under it, symlinks followed) or one file."""

    schemes = ("file",)
    forms = ("file:///PATH", "a local path")
    default_revision = "latest"

    @classmethod
    def parse_ref(cls, scheme: str, body: str, text: str, bare: bool) -> Ref:
        """``file:///PATH``, or a bare path (already made absolute by :func:`warmstart.refs.split`)."""
        if not body.startswith("/"):
            raise Malformed("file:// needs an absolute path (file:///PATH)")
        return cls.make_ref("file", body if bare else os.path.normpath(body))

    @classmethod
    def format_ref(cls, ref: Ref) -> str:
        return f"file://{ref.location}"  # a path has no revision to write

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

"""Bytes the pull pipeline brings into the cache without the transfer engine: local files (imported or
indexed in place) and the files a source's unpack hook finds in a fetched blob. Each lands in a
temporary file that is hashed (and, when unpacked, capped) here; the pipeline publishes it.

* import: each file is hashed and put into ``tmp/`` by reflink or hardlink when it can, else by
  ``copy_file_range`` (an in-kernel copy); the copy and the hash read the file concurrently, so it is
  read from disk once; files are imported in parallel.
* in place: the file is hashed where it is and its blob is a symlink to it (no copy).
* unpack: the hook streams each file it finds into :class:`Sink`, which writes it to ``tmp/``, never
  more than the entry's declared size nor the total the hook counted first.

>>> local_path("file:///data/model/w.bin")
PosixPath('/data/model/w.bin')
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from .cache.home import DISK_RESERVE, Cache
from .cache.index import IndexedFile
from .cache.store import copy_file, sha256_file
from .config import format_size
from .errors import CacheFullError


def is_local(f) -> bool:
    """Whether a listed file is read from the filesystem (``file://``) rather than fetched."""
    return f.url.startswith("file://")


def local_key(f, *, in_place: bool) -> str:
    """The transfer key a local file's digest is recorded under (imported and in-place ones apart)."""
    return ("inplace-" if in_place else "") + f.key


def known_digest(cache: Cache, f, *, in_place: bool) -> str | None:
    """The digest the cache would reuse for listed file ``f``, if it knows one."""
    if is_local(f):
        return cache.digest_for_key(local_key(f, in_place=in_place))
    return f.sha256 or cache.digest_for_key(f.key)


def present(cache: Cache, f, *, in_place: bool) -> IndexedFile | None:
    """The cache's entry for listed file ``f`` when its blob is there (the caller leased it first)."""
    digest = known_digest(cache, f, in_place=in_place)
    if not digest or not cache.store.has(digest, f.size):
        return None
    if is_local(f):
        return IndexedFile(f.path, digest, f.size or 0, f.etag)
    return IndexedFile(f.path, digest, cache.store.path(digest).stat().st_size, f.etag, f.git_oid)


def drop(cache: Cache, digests: set[str]) -> None:
    """Remove blobs that no snapshot records and no process leases (a blob files were unpacked from,
    once they are recorded; one the unpack hook refused)."""
    from .cache.evict import Action, Plan

    Plan(cache, (Action("blob", "unpacked", "not a file of the snapshot", 0, None, tuple(sorted(digests))),),
         0).execute()


def local_path(url: str) -> Path:
    """The path a ``file://`` URL of a listing names."""
    return Path(url[len("file://"):]) if url.startswith("file://") else Path(url)


#: local files imported at once
IMPORT_WORKERS = 8


def import_all(cache: Cache, files: list, *, in_place: bool, progress,
               publish: Callable[[object, Path | None, str], None]) -> None:
    """Import (or index in place) listed local files in parallel; ``publish(file, tmp, digest)`` gets
    each one's temporary file (None when there is nothing to move) as soon as it is hashed."""
    if progress is not None:
        progress.start(sum(f.size or 0 for f in files), len(files))

    def one(f) -> None:
        src = local_path(f.url)
        if in_place:
            publish(f, None, index_in_place(cache, src))
        else:
            publish(f, *import_file(cache, src))
        if progress is not None:
            progress.advance(f.size or 0)
            progress.file_done()

    with ThreadPoolExecutor(max(1, min(IMPORT_WORKERS, len(files)))) as pool:
        list(pool.map(one, files))


def import_file(cache: Cache, src: Path) -> tuple[Path | None, str]:
    """Hash ``src`` while copying (or linking) it into a temporary file. Returns ``(tmp, digest)``;
    ``tmp`` is None when the blob is already in the cache."""
    tmp = cache.layout.tmp / f"import-{uuid.uuid4().hex}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if _reflink(src, tmp) or _hardlink(src, tmp):  # no bytes move; one read for the hash
        digest = sha256_file(src).hexdigest()
    else:
        err: list[BaseException] = []

        def copy() -> None:
            try:
                copy_file(src, tmp)
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
        return None, digest
    return tmp, digest  # publishing a hardlinked original makes it read-only, which protects the blob


def _reflink(src: Path, dst: Path) -> bool:
    """Clone ``src`` into a new ``dst`` (FICLONE: btrfs, XFS, bcachefs); False where unsupported."""
    import fcntl

    try:
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            fcntl.ioctl(fo.fileno(), 0x40049409, fi.fileno())  # FICLONE
        return True
    except OSError:
        dst.unlink(missing_ok=True)
        return False


def _hardlink(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
        return True
    except OSError:
        return False


def index_in_place(cache: Cache, src: Path) -> str:
    """Hash ``src`` and make its blob a symlink to it (no copy); returns the digest."""
    digest = sha256_file(src).hexdigest()
    if cache.store.has(digest):
        return digest
    dest = cache.store.path(digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(os.path.abspath(src), tmp)
    os.replace(tmp, dest)
    return digest


def room(cache: Cache) -> int:
    """The most bytes one blob may unpack to: the budget, else the free disk above the reserve."""
    if cache.max_size is not None:
        return cache.max_size
    return max(0, shutil.disk_usage(cache.layout.home).free - DISK_RESERVE)


class Sink:
    """Where an unpack hook puts the files it finds (``sink(path, declared size, reader)``): each is
    written to ``tmp_dir`` and hashed, every write checked against the entry's declared size and the
    ``allowed`` total; :attr:`written` lists ``(path, tmp, digest, size)``. :meth:`discard` removes
    whatever is still in ``tmp_dir``."""

    def __init__(self, tmp_dir: Path, label: str, allowed: int) -> None:
        self.tmp_dir, self.label, self.allowed = tmp_dir, label, allowed
        self.total = 0
        self.written: list[tuple[str, Path, str, int]] = []

    def __call__(self, path: str, size: int, reader: BinaryIO) -> int:
        tmp = self.tmp_dir / f"untar-{uuid.uuid4().hex}"
        h, got = hashlib.sha256(), 0
        self.written.append((path, tmp, "", 0))
        with open(tmp, "wb") as dst:
            while chunk := reader.read(8 << 20):
                got += len(chunk)
                if got > size or self.total + got > self.allowed:
                    raise CacheFullError(
                        f"{self.label}: entry {path!r} unpacks to more bytes than the layer declares "
                        f"({format_size(self.allowed)} in all); stopped, nothing was kept")
                h.update(chunk)
                dst.write(chunk)
        self.total += got
        self.written[-1] = (path, tmp, h.hexdigest(), got)
        return got

    def discard(self) -> None:
        for _, tmp, _, _ in self.written:
            tmp.unlink(missing_ok=True)

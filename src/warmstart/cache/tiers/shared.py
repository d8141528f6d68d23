"""The shared tier: a directory many nodes mount (CephFS, NFS, JuiceFS…) holding verified blobs, read
before the origin and written after a download.

It needs no locks: a writer copies to a unique temporary name and renames; a reader verifies the sha256
of everything it reads, so a torn or corrupt file is ignored (and removed), never served.

Anyone who can write the shared directory is untrusted for content: a file is taken from it only when
the origin's listing says what the file must be. A file with a sha256 is looked up by it; a file with
only a git blob id (the Hub's non-LFS files) is looked up through ``keys/`` and its copy must hash to
that git blob id too before it is published; a file with neither comes from the origin.

>>> tier = SharedTier(Path("/mnt/models"))
>>> tier.blob("ab" + "0" * 62).as_posix()
'/mnt/models/blobs/sha256/ab/ab00000000000000000000000000000000000000000000000000000000000000'
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from ..._fs import read_regular
from ...errors import UnsafePathError
from ..layout import check_digest
from ..paths import inside
from ..store import copy_file, fsync_file, git_hasher
from . import verified_copy

log = logging.getLogger(__name__)
#: the most bytes read from a ``keys/`` file: it holds one digest line (64 hex, maybe a newline)
KEY_FILE_MAX = 128


@dataclasses.dataclass(frozen=True)
class Wanted:
    """A blob to copy in from the shared tier: its size as listed, the transfer key to record its digest
    under (a file the origin names without a sha256), and the git blob id its copy must hash to."""

    size: int | None
    key: str | None
    git_oid: str | None


class SharedTier:
    """Blobs under ``root/blobs/sha256/`` and digest hints under ``root/keys/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest[:2] / check_digest(digest)

    def key_path(self, key: str) -> Path:
        """Where the digest of a file without an origin sha256 is recorded (``keys/<key>``)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:200]
        return self.root / "keys" / safe

    def _digest_of_key(self, key: str) -> str | None:
        """The digest ``keys/<key>`` names; None (a warning for anything but a missing file) when it is not
        a plain file of one digest line: a FIFO, a device or a link there is never waited on or read."""
        path = self.key_path(key)
        try:
            text = read_regular(path, KEY_FILE_MAX).decode("ascii")
            return check_digest(text.strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("shared tier: ignoring %s (%s); fetching from the origin", path,
                        getattr(exc, "strerror", None) or exc)
            return None

    def wanted(self, files: Iterable, *, have: Callable[[str, int | None], bool],
               digest_for_key: Callable[[str], str | None]) -> dict[str, Wanted]:
        """The blobs this tier holds that a download of ``files`` (``RemoteFile``-like) needs and the
        cache lacks (``have(digest, size)``): a file with a sha256 is checked against it; one with only a
        git blob id against that (its digest comes from the cache's keys, else from ``keys/``); one with
        neither is left to the origin."""
        todo: dict[str, Wanted] = {}
        for f in files:
            git_oid = None
            if f.sha256:
                digest = f.sha256
            elif git_hasher(f.git_oid, 0) is not None:
                git_oid = f.git_oid
                digest = digest_for_key(f.key) or self._digest_of_key(f.key)
            else:
                continue  # nothing the origin said to check a shared copy against
            if not digest or have(digest, f.size):
                continue
            if digest in todo and todo[digest].git_oid != git_oid:
                continue  # two files claim one blob: at most one can match; the other goes to the origin
            if os.path.exists(self.blob(digest)):
                todo[digest] = Wanted(f.size, None if f.sha256 else f.key, git_oid)
        return todo

    def fetch(self, digest: str, size: int | None, tmp_dir: Path,
              git_oid: str | None = None) -> tuple[Path, int] | None:
        """Copy blob ``digest`` into a new file under ``tmp_dir``, verifying it; returns ``(that file,
        its size)`` for the caller to publish, or None if the blob is not here (or is corrupt: then it is
        removed from the tier and the caller goes to the origin).

        ``git_oid``: the git blob id the origin lists for the file wanted (found through ``keys/``, which
        any writer of the shared directory may have written): the copy must also hash to it, else it is
        discarded, never published, and the caller goes to the origin."""
        src = self.blob(digest)
        try:
            st = os.stat(src)
        except OSError:
            return None
        if size is not None and st.st_size != size:
            log.warning("shared tier: %s has %d bytes, expected %d; ignoring it", src, st.st_size, size)
            return None
        git = git_hasher(git_oid, st.st_size) if git_oid is not None else None
        if git_oid is not None and git is None:
            return None  # not a git blob id: nothing to check the copy against
        tmp = tmp_dir / f"shared-{digest[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            got = verified_copy.copy_verified(src, tmp, st.st_size, git)
        except OSError as exc:
            log.warning("shared tier: reading %s failed (%s); fetching from the origin", src, exc)
            _rm(tmp)
            return None
        if got != digest:
            _rm(tmp)
            try:
                removed = _rm(inside(self.root, src, what="shared blob"))
            except UnsafePathError:
                removed = False
            log.warning("shared tier: %s is corrupt (sha256 %s); %s, fetching from the origin", src, got[:12],
                        "removed it" if removed else "could not remove it")
            return None
        if git is not None and git.hexdigest() != git_oid:
            log.warning("shared tier: %s is not the file the origin lists (git blob id %s, expected %s); ignoring "
                        "it, fetching from the origin", src, git.hexdigest()[:12], git_oid[:12])
            _rm(tmp)
            return None
        return tmp, st.st_size

    def publish(self, blob_path: Path, digest: str) -> bool:
        """Publish a verified blob to the tier (unique temporary name, then rename; no locks). A read-only,
        full or missing shared directory is logged and skipped; returns True if published."""
        dest = self.blob(digest)
        try:
            if dest.stat().st_size == os.stat(blob_path).st_size:
                return True
        except OSError:
            pass
        tmp = dest.with_name(f".{digest}.{uuid.uuid4().hex}.tmp")
        try:
            self._make_dirs(dest.parent)
            self._inside(tmp, dest)
            copy_file(Path(blob_path), tmp)
            fsync_file(tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            return True
        except UnsafePathError as exc:
            log.warning("shared tier %s: not publishing %s: %s", self.root, digest[:12], exc)
            return False
        except OSError as exc:
            _rm(tmp)
            log.warning("shared tier %s: cannot publish %s (%s); continuing without it", self.root, digest[:12],
                        exc.strerror or exc)
            return False

    def publish_key(self, key: str, digest: str) -> None:
        """Record which digest a file without an origin sha256 turned out to have (rename, no locks). Only
        a hint: a reader checks the copy against the git blob id its own listing gives."""
        dest = self.key_path(key)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            self._make_dirs(dest.parent)
            self._inside(tmp, dest)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, digest.encode())
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except UnsafePathError as exc:
            log.warning("shared tier %s: not recording key %s: %s", self.root, key[:80], exc)
        except OSError as exc:
            _rm(tmp)
            log.debug("shared tier: cannot record key %s (%s)", key, exc)

    def _inside(self, *paths: Path) -> None:
        """UnsafePathError unless each of ``paths`` lies inside the shared directory (parents resolved): a
        ``blobs``, ``keys`` or fan-out directory that is a link out of it is never written through."""
        for p in paths:
            inside(self.root, p, what="shared tier path")

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents below the shared root, each checked to lie inside
        it before it is created (and after: a link there must not lead out)."""
        rel = directory.relative_to(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        here = self.root
        for part in rel.parts:
            here = here / part
            self._inside(here)
            here.mkdir(exist_ok=True)
        self._inside(directory / "x")


def _rm(path: Path) -> bool:
    """Remove ``path``; True when it was removed."""
    try:
        os.unlink(path)
        return True
    except OSError:
        return False

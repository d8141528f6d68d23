"""Where the parts of a cache home live; no I/O beyond ``mkdir`` and listing blobs. The paths inside
the view directories (``hub/``, ``snapshots/``) belong to :mod:`warmstart.cache.views`.

::

    $WARMSTART_HOME/                         (default ~/.cache/warmstart)
    ├── index.db                             SQLite (WAL): blobs, snapshots, refs, pins, access times
    ├── blobs/sha256/ab/ab12…(64 hex)        immutable, read-only content; one copy per digest
    ├── tmp/                                 partial downloads: <key>.part + <key>.part.json (done ranges)
    ├── locks/                               flock files: single flight per blob, index maintenance
    ├── leases/                              one file per process that has a model open (fcntl-locked)
    ├── hub/models--ORG--NAME/               a Hugging Face cache view (HF_HUB_CACHE=<home>/hub)
    │   ├── refs/main                        commit sha of the branch
    │   ├── blobs/<etag> -> ../../../blobs/sha256/ab/<digest>
    │   └── snapshots/<commit>/<file> -> ../../blobs/<etag>
    └── snapshots/<scheme>/<name>/<revision>/<file> -> …/blobs/sha256/…   (views of non-Hub sources)

>>> lay = Layout(Path("/c"))
>>> lay.blob("ab" + "0" * 62).as_posix()
'/c/blobs/sha256/ab/ab00000000000000000000000000000000000000000000000000000000000000'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """``digest`` if it is a sha256 hex digest (the only name a blob may have), else ValueError."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


class Layout:
    """Where everything lives under one cache home."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)

    @property
    def blobs(self) -> Path:
        return self.home / "blobs" / "sha256"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    @property
    def leases(self) -> Path:
        return self.home / "leases"

    @property
    def hub(self) -> Path:
        return self.home / "hub"

    @property
    def snapshots(self) -> Path:
        return self.home / "snapshots"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def index_path(self) -> Path:
        return self.home / "index.db"

    def blob(self, digest: str) -> Path:
        check_digest(digest)
        return self.blobs / digest[:2] / digest

    def lock(self, name: str) -> Path:
        return self.locks / f"{name}.lock"

    def ensure(self) -> None:
        for d in (self.blobs, self.tmp, self.locks, self.leases, self.hub):
            d.mkdir(parents=True, exist_ok=True)


def scan_blobs(blobs: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every blob file under a ``blobs/sha256`` directory as ``(digest, stat)``; temporary names and
    files that vanish meanwhile are skipped."""
    try:
        prefixes = os.listdir(blobs)
    except FileNotFoundError:
        return
    for p in prefixes:
        try:
            with os.scandir(blobs / p) as it:
                for e in it:
                    if len(e.name) == 64:
                        try:
                            yield e.name, e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
        except (NotADirectoryError, FileNotFoundError):
            continue

"""What a pull returns.

>>> s = Snapshot("hf://o/n@" + "a" * 40, "a" * 40, Path("/c/x"), (), 0, 0, 0.0)
>>> s.to_json()["revision"] == "a" * 40
True
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class SnapshotFile:
    """One file of a snapshot: its path in the model, its sha256, size and the blob that holds it."""

    path: str
    digest: str
    size: int
    blob: Path


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A model at one revision, complete in the cache.

    ``path`` is the directory to hand to tools (the Hub-layout snapshot, or the ``--to`` directory);
    ``cache_path`` is always the view inside the cache home.
    """

    ref: str
    revision: str
    path: Path
    files: tuple[SnapshotFile, ...]
    downloaded: int
    from_cache: int
    seconds: float
    cache_path: Path | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict:
        return {
            "ref": self.ref,
            "revision": self.revision,
            "path": str(self.path),
            "files": [{"path": f.path, "sha256": f.digest, "size": f.size} for f in self.files],
            "bytes": self.size,
            "bytes_downloaded": self.downloaded,
            "bytes_from_cache": self.from_cache,
            "seconds": round(self.seconds, 4),
        }

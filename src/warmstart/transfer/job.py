"""What the engine is asked to fetch and what it hands back: :class:`FileJob`, :class:`FileResult`,
the pull's :class:`Stats`, and the :class:`Progress` sink it reports to."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol


@dataclasses.dataclass
class FileJob:
    """One file to fetch. ``key`` names its partial and lock files (filesystem-safe, stable across
    runs); ``sha256`` is the expected digest when the origin gives one."""

    name: str
    url: str
    key: str
    size: int | None
    sha256: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    ranges: bool = True
    probe: bool = True  # False: size and Range support are known, skip the HEAD (presigned S3 GET URLs)
    git_oid: str | None = None  # the git blob id the origin gives for files without a sha256 (Hub, non-LFS)
    etag: str | None = None  # the origin's validator (ETag); a partial file resumes only under the same one


@dataclasses.dataclass
class FileResult:
    job: FileJob
    digest: str
    size: int
    path: Path | None  # the verified temporary file to publish; None when another process did
    downloaded: int = 0
    resumed: int = 0


@dataclasses.dataclass
class Stats:
    downloaded: int = 0
    resumed: int = 0
    files: int = 0
    seconds: float = 0.0
    connections: int = 0


class Progress(Protocol):
    def start(self, total_bytes: int, total_files: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self) -> None: ...


class NoProgress:
    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self) -> None:
        pass

"""A partial download on disk: the bytes, the ranges known to be written, and the running hashes.

::

    tmp/<key>.part          the file, preallocated to its full size, written in place at offsets
    tmp/<key>.part.json     {"version", "url", "size", "sha256", "etag", "done": [[start, end], ...]}

The state is saved (atomically: write, then rename) by the engine every 0.25 s, with the progress of
chunks still in flight, so after ``kill -9`` at most ~0.25 s of transfer is fetched again. A state
that does not match the job (another size, digest or validator) is ignored and the file starts afresh,
and so is any state of a file with nothing to validate it by (no sha256, git blob id nor ETag): bytes
of another version of it could not be told from this one's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

from .._fs import atomic_write
from .._urls import redact
from ..errors import CacheFullError
from .job import FileJob
from .plan import Span, SpanPlan

STATE_VERSION = 1  # cache/tmpdir.py reads it too (gc keeps resumable partials)


class PartialFile:
    """Mutable state of one file being fetched; the engine guards it with its lock."""

    def __init__(self, job: FileJob, part: Path) -> None:
        self.job = job
        self.part = part
        self.state_path = part.with_name(part.name + ".json")
        self.size = job.size
        self.fd = -1
        self.lock_fd = -1
        self.resolved = False
        self.resolving = False
        self.stream = False
        self.url = job.url
        self.headers = dict(job.headers)
        self.plan = SpanPlan(0)  # the ranges of a ranged download (see open_resumable)
        self.hasher = hashlib.sha256()
        self.git = git_hasher(job)
        self.hashed = 0
        self.hash_busy = False
        self.integrity_retries = 0
        self.downloaded = 0
        self.resumed = 0
        self.room = 0  # bytes of the budget's room a file of unknown size has taken (see stream.take_room)
        self.dirty = False
        self.finished = False

    def hash_update(self, data: memoryview) -> None:
        self.hasher.update(data)
        if self.git is not None:
            self.git.update(data)

    def restart_hashes(self) -> None:
        self.hasher, self.git, self.hashed = hashlib.sha256(), git_hasher(self.job), 0

    def contiguous(self) -> int:
        """End of the written prefix [0, n), counting the progress of chunks still in flight."""
        return self.plan.contiguous()

    @property
    def on_disk(self) -> bool:
        """A ranged download with every byte written (only the hash may be left to do)."""
        return not self.stream and self.plan.settled

    def state(self) -> dict:
        return {"version": STATE_VERSION, "url": redact(self.job.url), "size": self.size,
                "sha256": self.job.sha256, "etag": self.job.etag, "done": [[s.start, s.end] for s in self.plan.written()]}

    def open_resumable(self) -> None:
        """Open the partial file, keeping the ranges a previous run saved (if they match this job)."""
        size = self.size or 0
        done: list[Span] = []
        try:
            state = json.loads(self.state_path.read_text())
            st = os.stat(self.part)
            job = self.job
            if (state.get("version") == STATE_VERSION and state.get("size") == size and st.st_size == size
                    and state.get("sha256") == job.sha256 and state.get("etag") == job.etag
                    and (job.sha256 or job.git_oid or job.etag)):
                done = [Span(int(a), int(b)) for a, b in state["done"] if 0 <= a < b <= size]
        except (OSError, ValueError, KeyError, TypeError):
            done = []
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        if not done:
            os.ftruncate(self.fd, 0)
            preallocate(self.fd, size, self.part)
        self.plan = SpanPlan(size, done)
        self.resumed = sum(s.size for s in self.plan.done)

    def reopen_empty(self) -> None:
        """Start the ranged download over: an empty, preallocated file, every byte wanted."""
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        preallocate(self.fd, self.size or 0, self.part)
        self.plan.restart()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Close and delete the partial file and its state."""
        self.close()
        for p in (self.part, self.state_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def save(self) -> None:
        atomic_write(self.state_path, json.dumps(self.state()))


def git_hasher(job: FileJob):
    """git's blob id is sha1(b"blob <size>\\0" + content) (sha256 in a sha256 repository, 64 hex digits):
    checks files the origin gives no sha256 for. Every id is checked: one of any other form never matches."""
    if not job.git_oid or job.size is None:
        return None
    h = hashlib.sha256() if len(job.git_oid) == 64 else hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % job.size)
    return h


def preallocate(fd: int, size: int, path: Path) -> None:
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFullError(f"not enough disk space for {path.name} ({size} bytes): free space "
                                 "or set WARMSTART_HOME to a larger disk") from None
        os.ftruncate(fd, size)  # filesystems without fallocate



"""Single flight across processes: one ``flock`` per file (``locks/<key>.lock``). A process that finds
the lock held waits for the other and then takes the published blob, or resumes if the other died."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def try_lock(fd: int, lock_dir: Path) -> bool:
    """Take the lock without waiting; False when another process holds it. A filesystem without
    working locks counts as taken (correctness does not need them: a blob is published atomically)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        log.warning("locks do not work under %s (%s); concurrent pulls may download twice", lock_dir, exc)
    return True


def wait_lock(fd: int) -> None:
    """Block until the other process lets the lock go (it finished, or died)."""
    fcntl.flock(fd, fcntl.LOCK_EX)


def release_lock(fd: int) -> int:
    """Close the lock file (closing drops the flock); returns the closed marker, -1."""
    if fd >= 0:
        os.close(fd)
    return -1

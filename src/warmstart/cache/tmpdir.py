"""Housekeeping of ``tmp/``: which temporary files ``gc`` may remove, and removing a partial download
only under its download lock, so that a download starting meanwhile is never cut short.

``tmp/<key>.part`` is a partial download and ``tmp/<key>.part.json`` its resume state (written by the
transfer engine, which holds ``locks/<key>.lock`` while it works); any other name there (``import-*``,
``put-*``, ``adopt-*``, ``shared-*``…) is a temporary file of a process that may have died.

>>> part_key("0a1b.part"), part_key("0a1b.part.json"), part_key("import-x")
('0a1b', '0a1b', None)
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os

from .layout import Layout

#: partial downloads that can resume (``<key>.part`` with a sidecar that matches it) are removed by gc
#: once untouched for this long
STALE_TMP_S = 7 * 86400.0
#: partial downloads that can never resume (a stream's, one without a usable sidecar) are removed once
#: untouched for this long, and never while a download holds their lock (``locks/<key>.lock``)
DEAD_PART_GRACE_S = 60.0
#: other files in tmp/ (``import-*``, ``put-*``, ``adopt-*``… of a killed process) once untouched this long
TMP_GRACE_S = 600.0
#: the version of the sidecar ``tmp/<key>.part.json`` (the transfer engine's, which cache/ may not import)
_PART_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Stale:
    """A file of tmp/ that gc may remove: its path, the bytes it frees, why, and for how long untouched."""

    path: str
    bytes: int
    why: str
    age: float


def entries(layout: Layout) -> list[tuple[str, int, float]]:
    """Every plain file in tmp/ as ``(path, size, mtime)``."""
    out = []
    try:
        with os.scandir(layout.tmp) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if e.is_file(follow_symlinks=False):
                    out.append((e.path, st.st_size, st.st_mtime))
    except FileNotFoundError:
        pass
    return out


def stale(layout: Layout, now: float) -> list[Stale]:
    """What gc removes from tmp/: partial downloads that can resume once untouched for STALE_TMP_S;
    those that never can (no sidecar, a sidecar that does not match, a stream's file) after
    DEAD_PART_GRACE_S unless a download holds their lock; any other file after TMP_GRACE_S."""
    found = {os.path.basename(p): (p, size, mtime) for p, size, mtime in entries(layout)}
    out = []
    for name, (path, size, mtime) in sorted(found.items()):
        age = now - mtime
        key = part_key(name)
        if key is None:
            why, grace = "temporary file of a process that is gone", TMP_GRACE_S
        elif name.endswith(".json") and f"{key}.part" in found:
            continue  # removed with its partial file
        else:
            if name.endswith(".json"):  # a sidecar without its partial file
                why, grace = "resume state of a partial download that is gone", DEAD_PART_GRACE_S
            elif _resumable(path, found.get(f"{key}.part.json")):
                why, grace = "partial download", STALE_TMP_S
            else:
                why, grace = "partial download that can never resume", DEAD_PART_GRACE_S
                side = found.get(f"{key}.part.json")
                size += side[1] if side else 0
            if age > grace and _lock_held(layout, key):
                continue  # a live download: never touched
        if age > grace:
            out.append(Stale(path, size, why, age))
    return out


def part_key(name: str) -> str | None:
    """``<key>`` of ``<key>.part`` / ``<key>.part.json``; None for any other name."""
    for suffix in (".part", ".part.json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _resumable(part: str, sidecar: tuple[str, int, float] | None) -> bool:
    """A later pull can resume ``part``: its sidecar parses, has this version, and names its size."""
    if sidecar is None:
        return False
    try:
        with open(sidecar[0], "rb") as fh:
            state = json.loads(fh.read(1 << 24))
        size = state["size"]
        return (isinstance(state, dict) and state.get("version") == _PART_STATE_VERSION and isinstance(size, int)
                and size > 0 and isinstance(state.get("done"), list) and os.stat(part).st_size == size)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False


def _lock_fd(layout: Layout, key: str) -> int | None:
    """The download lock of ``key``, taken (an fd to close; -1: there are no locks here), or None when a
    download holds it."""
    try:
        fd = os.open(layout.locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return -1  # no lock directory: no download either
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:  # a filesystem without working locks: the age alone decides
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            return None
    return fd


def _lock_held(layout: Layout, key: str) -> bool:
    fd = _lock_fd(layout, key)
    if fd is None:
        return True
    if fd >= 0:
        os.close(fd)
    return False


def _unlink(path: os.PathLike | str) -> int:
    """Remove a file; returns its size (0 when it was already gone)."""
    try:
        size = os.lstat(path).st_size
        os.unlink(path)
        return size
    except FileNotFoundError:
        return 0


def remove(layout: Layout, path: os.PathLike) -> int:
    """Remove a file of tmp/; a partial download only under its lock (with its sidecar). Returns bytes freed."""
    key = part_key(os.path.basename(path))
    if key is None:
        return _unlink(path)
    fd = _lock_fd(layout, key)
    if fd is None:
        return 0
    try:
        part = layout.tmp / f"{key}.part"
        return _unlink(part) + _unlink(part.with_name(part.name + ".json"))
    finally:
        if fd >= 0:
            os.close(fd)

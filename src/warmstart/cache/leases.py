"""Leases: which running processes hold which blobs, released by the kernel when a process dies.

A lease is a small JSON file ``<home>/leases/<pid>-<random>.lease`` naming the snapshots and blobs a
process has open, held with an exclusive ``flock`` for as long as the lease lives. The kernel drops
that lock when the process exits, however it exits (``kill -9`` included), so a lease is live iff its
lock cannot be taken. Eviction, ``gc`` and ``rm`` read the live leases and never remove a leased blob.

The file is written under a temporary name, locked, then renamed into place: a reader never sees an
unlocked lease that is still alive. Stale lease files (lock free) are removed by whoever finds them.

On a filesystem without working locks (``flock`` fails with ENOLCK/EOPNOTSUPP) a lease falls back to
process liveness: it is live while the process named in its file exists on this host (logged once).

Lifetime: a lease lives until :meth:`Lease.release` or the end of the process. ``warmstart.load()``,
``open()`` and ``load_into()`` take one lease per process per snapshot and keep it for the life of the
process (the tensors they return may map the blobs at any later time).

>>> import tempfile; from pathlib import Path
>>> from warmstart.cache.layout import Layout
>>> lay = Layout(Path(tempfile.mkdtemp())); lay.ensure()
>>> lease = acquire(lay, ["a" * 64], snapshots=["hf://org/name@" + "0" * 40])
>>> sorted(leased_digests(lay))[0] == "a" * 64
True
>>> lease.release(); leased_digests(lay)
{}
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from .layout import Layout

log = logging.getLogger(__name__)

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: a home this process may not write: no lease can be recorded (see :func:`acquire`)
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}
_warned_no_locks = False
#: leases held by this process, by (home, key): one lease per process per snapshot
_held: dict[tuple[str, str], Lease] = {}
_held_lock = threading.Lock()


class Lease:
    """A held lease. Release it explicitly, or let the process end."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lease up: remove its file and drop the lock."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        with _held_lock:
            for k, v in list(_held.items()):
                if v is self:
                    del _held[k]

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # an unreferenced lease closes its fd; the lock goes with it
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def _try_lock(fd: int) -> bool | None:
    """True if the lock was taken, False if another holder has it, None if locks do not work here."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in _NO_LOCKS:
            _warn_no_locks()
            return None
        raise


def _warn_no_locks() -> None:
    global _warned_no_locks
    if not _warned_no_locks:
        _warned_no_locks = True
        log.warning("the cache's filesystem does not support file locks; leases fall back to checking "
                    "whether their process is alive (same host only)")


def acquire(layout: Layout, digests: Iterable[str], *, snapshots: Iterable[str] = ()) -> Lease:
    """Take a lease on ``digests`` for this process; the lock lives as long as the returned object's fd.

    >>> lease = acquire(layout, snap_digests, snapshots=["hf://org/name@abc"])   # doctest: +SKIP
    """
    digests = frozenset(digests)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    final = layout.leases / f"{name}.lease"
    try:
        layout.leases.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.leases / f".{name}.tmp", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        # A read-only home: no lease can be recorded. This process cannot evict anything, but one that
        # may write the home can still evict these blobs meanwhile (docs/cache.md, "Read-only home").
        log.debug("cache home %s is read-only (%s); using its blobs without a lease", layout.home, exc.strerror)
        return Lease(final, None)
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "snapshots": list(snapshots),
                       "digests": sorted(digests)}).encode()
    tmp = layout.leases / f".{name}.tmp"
    try:
        _try_lock(fd)  # None (no locks) is fine: liveness falls back to the pid
        os.write(fd, body)
        os.replace(tmp, final)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return Lease(final, fd)


def hold(layout: Layout, key: str, digests: Iterable[str]) -> Lease:
    """The process-wide lease for ``key`` (e.g. a snapshot ref), taken once and kept for the process's life.

    >>> hold(layout, "hf://org/name@abc", digests)   # doctest: +SKIP
    """
    k = (str(layout.home), key)
    with _held_lock:
        lease = _held.get(k)
        if lease is not None and lease.held:
            return lease
        lease = acquire(layout, digests, snapshots=[key])
        _held[k] = lease
        return lease


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_leases(layout: Layout) -> Iterator[tuple[int, list[str]]]:
    """``(pid, digests)`` of every live lease under ``layout``; stale lease files are removed."""
    try:
        names = os.listdir(layout.leases)
    except FileNotFoundError:
        return
    mine = {str(v.path) for v in _held.values() if v.held}
    for name in names:
        if not name.endswith(".lease"):
            continue
        path = layout.leases / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            data = _read(fd)
            if str(path) in mine:
                live = True
            else:
                got = _try_lock(fd)  # None: no working locks here, fall back to the pid
                live = (data is None or _pid_alive(int(data.get("pid", 0)))) if got is None else not got
            if not live:
                try:
                    os.unlink(path)
                except OSError:  # gone already, or a read-only home
                    pass
                continue
        finally:
            os.close(fd)
        if data is not None:  # live but unreadable: treat it as holding nothing we can name
            yield int(data.get("pid", 0)), list(data.get("digests", ()))


def _read(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 1 << 24, 0)
        return json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None


def leased_digests(layout: Layout) -> dict[str, list[int]]:
    """``{digest: [pid, ...]}`` for every blob held by a live lease."""
    out: dict[str, list[int]] = {}
    for pid, digests in _live_leases(layout):
        for d in digests:
            out.setdefault(d, []).append(pid)
    return out

"""Filesystem primitives every layer shares: replace a file atomically, make it durable, clone it.

A file is never written in place where a reader could see it half done: it is written under a unique
temporary name in the destination's own directory (so the rename stays on one filesystem, hence atomic),
optionally fsynced, then renamed onto the destination. A crash leaves the old file or the new one, plus at
worst a ``.NAME.<random>.tmp`` beside it.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> atomic_write(d / "config.json", '{"a": 1}')
>>> with atomic_path(d / "config.json") as tmp:    # any writer: here, a plain open
...     _ = tmp.write_text('{"a": 2}')
>>> (d / "config.json").read_text(), [p.name for p in d.iterdir()]
('{"a": 2}', ['config.json'])
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "fsync_dir", "fsync_file", "open_regular", "read_regular", "reflink",
           "reflink_file", "temp_name"]

#: ioctl FICLONE: share the extents of a file on the same CoW filesystem (btrfs, XFS, bcachefs) instead of copying
_FICLONE = 0x40049409


def temp_name(dest: Path) -> Path:
    """A unique temporary name beside ``dest``: ``.NAME.<12 hex>.tmp`` in the same directory."""
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, fsync: bool = False, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``dest`` for the block to create (a file, a link); when the block ends without
    an error it is fsynced (``fsync``, the directory too), given ``mode`` and renamed onto ``dest``, replacing
    what was there; on an error it is removed and ``dest`` is left as it was."""
    dest = Path(dest)
    tmp = temp_name(dest)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(dest.parent)


def atomic_write(dest: str | os.PathLike, data: bytes | str, *, fsync: bool = False, mode: int | None = None) -> None:
    """Replace ``dest`` with ``data`` (bytes, or text written as UTF-8) atomically; see :func:`atomic_path`."""
    with atomic_path(dest, fsync=fsync, mode=mode) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())


def open_regular(path: str | os.PathLike, *, max_size: int | None = None) -> int:
    """Open ``path`` for reading only if it is a plain file (no FIFO, device, directory or symlink as its last
    component) of at most ``max_size`` bytes; returns the fd (the caller closes it), else OSError.

    Opened with ``O_NONBLOCK | O_NOFOLLOW``: a FIFO or a device a writer of a shared directory put in a
    file's place can neither block the open nor be read without end (``/dev/zero``).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); os.mkfifo(d / "fifo")
    >>> open_regular(d / "fifo")
    Traceback (most recent call last):
    ...
    OSError: [Errno 22] not a regular file: ...
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if max_size is not None and st.st_size > max_size:
            raise OSError(errno.EFBIG, f"larger than {max_size} bytes", os.fspath(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, max_size: int) -> bytes:
    """The bytes of plain file ``path`` (see :func:`open_regular`), at most ``max_size`` of them: a file that
    is or grows larger is an OSError, never read to its end."""
    fd = open_regular(path, max_size=max_size)
    try:
        chunks, left = [], max_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_size:
        raise OSError(errno.EFBIG, f"larger than {max_size} bytes", os.fspath(path))
    return data


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in directory ``path`` durable; best effort (some filesystems refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def reflink(fd_in: int, fd_out: int) -> bool:
    """Clone open file ``fd_in`` into ``fd_out`` (FICLONE) when both lie on one CoW filesystem; False
    where it cannot (another filesystem, no CoW support, not Linux): the caller copies instead."""
    try:
        if os.fstat(fd_in).st_dev != os.fstat(fd_out).st_dev:
            return False
        import fcntl

        fcntl.ioctl(fd_out, _FICLONE, fd_in)
        return True
    except (OSError, ImportError):
        return False


def reflink_file(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Clone ``src`` into a new file ``dst`` with :func:`reflink`; False (and no ``dst``) where it cannot."""
    try:
        with open(src, "rb") as fi, open(dst, "xb") as fo:
            if reflink(fi.fileno(), fo.fileno()):
                return True
    except OSError:
        return False
    Path(dst).unlink(missing_ok=True)
    return False

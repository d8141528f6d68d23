"""Small Linux I/O helpers shared by the transfer engine and the cache tiers.

``start_writeback`` asks the kernel to begin writing a just-written range to disk now
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``, asynchronous), so that the fsync before a blob is
published finds little left to do. Python's ``os`` module has no binding for it, hence ctypes.

>>> start_writeback(-1, 0, 0)     # harmless when unavailable or on a bad fd
"""

from __future__ import annotations

import ctypes


def _sync_file_range():
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``[offset, offset + nbytes)`` of ``fd`` to disk; errors surface at fsync."""
    if _SYNC_FILE_RANGE is not None and fd >= 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)

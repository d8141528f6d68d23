"""A file fetched as one GET (small files, unknown sizes, origins without ranges), bounded: never more
bytes than the listed (or probed) size, else than the answer's Content-Length, else than the room
left in the cache budget and on disk (``CacheFullError`` before the disk fills). A stream that fails
leaves nothing in ``tmp/``: it could never resume."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading

from .._http import Client, HTTPStatusError, drain, headers_of
from ..config import format_size
from ..errors import CacheFullError, IntegrityError
from .partial import PartialFile, git_hasher
from .shared import Shared
from .verify import Verifier
from .watchdog import Beat, fill


class TruncatedError(Exception):
    """A response body that ended early or did not match what was asked."""


def stream(shared: Shared, verifier: Verifier, client: Client, f: PartialFile, buf: memoryview,
           beat: Beat) -> None:
    """Fetch ``f`` with one GET, hashing as it arrives, and hand it to ``verifier``."""
    url, resp = client.follow("GET", f.job.url, f.job.headers)
    if resp.status != 200:
        raise HTTPStatusError(resp.status, url, headers_of(resp), drain(resp))
    expected, announced = f.job.size, resp.length  # resp.length: None when unknown or invalid
    if expected is not None and announced is not None and announced != expected:
        client.drop(url)
        raise IntegrityError(f"{f.job.name}: the origin sends {announced} bytes, the listing said {expected}; "
                             "the file changed upstream or the origin is faulty; nothing was kept, pull again")
    cap = expected if expected is not None else announced
    with shared.cv:
        shared.receiving.add(threading.get_ident())  # a streamed body counts for the pool's ramp too
        f.hasher, f.git = hashlib.sha256(), git_hasher(f.job)
    f.close()
    pos = 0
    try:
        if expected is None:
            take_room(shared, f, announced or 0, 0)  # a Content-Length beyond the room: fail before a byte
        f.fd = os.open(f.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        # one byte more than the cap is asked for: an origin that sends it is caught, not believed
        while n := fill(resp, buf if cap is None else buf[: min(len(buf), cap + 1 - pos)], beat):
            if cap is not None and pos + n > cap:
                said = "the listing said" if expected is not None else "its Content-Length said"
                raise IntegrityError(f"{f.job.name}: the origin sent more than the {cap} bytes {said}; "
                                     "nothing was kept. The origin is faulty or hostile: check it")
            if cap is None:
                take_room(shared, f, n, pos)
            os.pwrite(f.fd, buf[:n], pos)
            f.hash_update(buf[:n])
            pos += n
            with shared.cv:
                shared.net_bytes += n
                f.downloaded += n
            shared.progress.advance(n)
        if resp.length or (expected is not None and pos != expected):
            raise TruncatedError(f"got {pos} bytes, expected {expected if expected is not None else resp.length}")
    except BaseException:
        client.drop(url)
        shared.progress.advance(-pos)
        with shared.cv:
            f.downloaded -= pos
        drop_stream(shared, f)
        raise
    beat.stop()  # publishing is not the origin's time
    with shared.cv:
        f.size = pos
        f.hashed = pos
        f.hash_busy = True
    verifier.finish(f)


def take_room(shared: Shared, f: PartialFile, n: int, pos: int) -> None:
    """Reserve ``n`` more bytes for a file of unknown size: within the budget's room, and leaving
    ``disk_reserve`` free on disk. CacheFullError otherwise (nothing is kept)."""
    s = shared.settings
    with shared.cv:
        if s.stream_room is not None and shared.room_used + n > s.stream_room:
            raise CacheFullError(
                f"{f.job.name}: the origin sends more than the {format_size(s.stream_room)} left in the cache "
                f"budget (the file's size is unknown; {format_size(pos + n)} so far); raise WARMSTART_MAX_SIZE "
                "or make room with `warmstart gc`; nothing was kept")
        shared.room_used += n
        f.room += n
    free = shutil.disk_usage(s.tmp_dir).free
    if free < n + s.disk_reserve:
        raise CacheFullError(
            f"{f.job.name}: not enough disk space under {s.tmp_dir} for a file of unknown size "
            f"({format_size(pos + n)} so far, {format_size(free)} free); free space or set WARMSTART_HOME to a "
            "larger disk; nothing was kept")


def drop_stream(shared: Shared, f: PartialFile) -> None:
    """A failed stream can never resume: close and remove its partial file, give its room back."""
    f.close()
    with shared.cv:
        shared.room_used -= f.room
        f.room = 0
    f.remove()



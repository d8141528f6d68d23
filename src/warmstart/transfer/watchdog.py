"""The watchdog: every request is watched, and one that delivers no byte for the stall timeout, or
fewer than ``min_rate`` bytes/s averaged over that window, has its connection shut down; its worker
then fails the attempt with that reason and retries from the byte it reached."""

from __future__ import annotations

import logging
import time

from .._http import Client, readinto_some

log = logging.getLogger(__name__)


class Beat:
    """The request a worker has in progress, as the supervisor's watchdog sees it: when it began,
    when its last byte came, bytes since a mark. Written by the worker, read by the supervisor; the
    GIL keeps each field whole, and ``seq`` tells one request from the next."""

    __slots__ = ("client", "seq", "active", "last", "bytes", "mark_t", "mark_b", "reason")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seq = 0
        self.active = False
        self.last = self.mark_t = time.monotonic()
        self.bytes = self.mark_b = 0
        self.reason: str | None = None

    def start(self) -> None:
        now = time.monotonic()
        self.reason = None
        self.last = self.mark_t = now
        self.mark_b = self.bytes
        self.seq += 1
        self.active = True

    def stop(self) -> None:
        self.active = False

    def got(self, n: int) -> None:
        self.bytes += n
        self.last = time.monotonic()


def watch(beats: list[Beat], now: float, timeout: float, min_rate: int) -> None:
    """Shut down the connection of a request that received no byte for ``timeout`` seconds, or fewer
    than ``min_rate`` bytes/s over that window (headers included: they count as no byte)."""
    for beat in beats:
        if not beat.active or beat.reason is not None:
            continue
        seq, idle, span = beat.seq, now - beat.last, now - beat.mark_t
        if idle >= timeout:
            why = f"no byte for {idle:.0f} s"
        elif span >= timeout:
            got = beat.bytes - beat.mark_b
            if got >= min_rate * span:
                beat.mark_t, beat.mark_b = now, beat.bytes
                continue
            why = f"{got} bytes in {span:.0f} s, below the minimum rate of {min_rate} bytes/s"
        else:
            continue
        if beat.seq == seq and beat.active:
            beat.reason = why
            log.debug("dropping a connection: %s", why)
            beat.client.abort()


def fill(resp, view: memoryview, beat: Beat) -> int:
    """Fill ``view`` from the body (fewer bytes only at its end), telling ``beat`` of every byte as it
    arrives, so that a slow body is seen while the buffer fills."""
    got = 0
    while got < len(view):
        n = readinto_some(resp, view[got:])
        if not n:
            break
        got += n
        beat.got(n)
    return got

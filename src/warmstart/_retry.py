"""The one retry policy: how many attempts, how long to wait between them, and which failures are
worth retrying at all.

Every request loop (the Hub's metadata, S3, a registry, the transfer engine) uses :class:`Retry`;
the differences that matter are its parameters. Failures that retrying cannot fix within a pull
(connection refused, a name that does not resolve, no route to the host) are *permanent*: a loop
gives up at once instead of backing off against a dead origin, so a cached model is served without
waiting.

>>> r = Retry(attempts=3, base_s=0.0)
>>> [a for a in r.attempts_left()]
[0, 1, 2]
>>> r.delay(0, retry_after=2.5)
2.5
>>> Retry.permanent(ConnectionRefusedError())
True

A connection that is not answered within the connect timeout (``WARMSTART_CONNECT_TIMEOUT``: a
blackholed origin) is final for metadata requests, which then serve the cache; the transfer engine,
whose origin answered a moment ago, tries again:

>>> blackholed = TimeoutError(errno.ETIMEDOUT, "no answer within 5 s")
>>> METADATA.gives_up(blackholed), TRANSFER.gives_up(blackholed), METADATA.gives_up(TimeoutError("timed out"))
(True, False, False)
"""

from __future__ import annotations

import dataclasses
import errno
import random
import socket
from collections.abc import Iterator

#: errno values that say the origin cannot be reached now: retrying in the next seconds will not help
_DEAD = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
         errno.EADDRNOTAVAIL}


@dataclasses.dataclass(frozen=True)
class Retry:
    """``attempts`` tries in all; between them ``base_s * 2**n`` seconds, at most ``cap_s``, with
    ``jitter`` (0.5 means a random 50-100 % of that), or the server's ``Retry-After`` when it gives one
    (at most ``cap_s``)."""

    attempts: int = 4
    base_s: float = 0.2
    cap_s: float = 8.0
    jitter: float = 0.5
    #: a connection not answered within the connect timeout (errno ETIMEDOUT) is final, not retried
    connect_timeout_is_final: bool = False

    def attempts_left(self) -> Iterator[int]:
        """``0 .. attempts-1``; the caller stops early on success or on a permanent failure."""
        return iter(range(self.attempts))

    def last(self, attempt: int) -> bool:
        return attempt >= self.attempts - 1

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (0-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(self.cap_s, retry_after)
        d = min(self.cap_s, self.base_s * 2**attempt)
        return d * (1 - self.jitter + self.jitter * random.random()) if self.jitter else d

    def gives_up(self, exc: BaseException) -> bool:
        """True when ``exc`` ends the loop at once: :meth:`permanent`, or (with
        ``connect_timeout_is_final``) a connection the origin did not answer in time."""
        if self.permanent(exc):
            return True
        return (self.connect_timeout_is_final and isinstance(exc, TimeoutError)
                and exc.errno == errno.ETIMEDOUT)

    @staticmethod
    def permanent(exc: BaseException) -> bool:
        """True for failures that retrying within a pull cannot fix: refused, unresolvable, unroutable."""
        if isinstance(exc, socket.gaierror):
            return exc.errno not in (socket.EAI_AGAIN,)
        if isinstance(exc, ConnectionRefusedError):
            return True
        return isinstance(exc, OSError) and exc.errno in _DEAD


#: metadata requests (the Hub's revision answer, S3 listings, registry manifests)
METADATA = Retry(attempts=4, base_s=0.2, cap_s=8.0, connect_timeout_is_final=True)
#: byte ranges in the transfer engine (more patient: a resumable download is worth waiting for)
TRANSFER = Retry(attempts=7, base_s=0.2, cap_s=8.0)

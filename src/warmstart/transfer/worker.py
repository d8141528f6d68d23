"""One connection's request loop: a worker thread owns one keep-alive connection per host and takes
task after task from the scheduler until the pull ends:

* ``resolve``: a HEAD that follows redirects, for files whose size or Range support is unknown;
* ``chunk``: a claim on a range of a file, fetched as ranged GETs of at most the request size whose
  bodies are ``readinto`` a reusable buffer and ``pwrite`` straight into the partial file, at their
  offset (hashed from memory when they land at the hash frontier);
* ``stream``: one GET for small files, unknown sizes and origins without ranges (:mod:`.stream`).

Every request is watched (:mod:`.watchdog`) and retried from the byte it reached, with the back-off of
:data:`warmstart._retry.TRANSFER`."""

from __future__ import annotations

import dataclasses
import errno
import functools
import http.client
import logging
import os
import threading
import time
from collections.abc import Callable

from .._http import Client, HTTPStatusError, content_length, drain, headers_of, parse_content_range
from .._io import start_writeback
from .._urls import host_key, printable
from ..errors import CacheFullError, IntegrityError, NotFoundError, TransferError, WarmstartError
from .partial import PartialFile
from .plan import Claim, MiB
from .shared import Shared
from .stream import TruncatedError, stream
from .verify import Verifier
from .watchdog import Beat, fill

#: the smallest request a file of a few MiB is split into (engine.REQUEST_SIZE is the largest)
MIN_REQUEST = 4 * MiB

log = logging.getLogger(__name__)

BUFFER = 2**20


@dataclasses.dataclass
class Task:
    """What a worker does next: ``kind`` is "resolve", "stream" or "chunk" (with its ``claim``)."""

    kind: str
    file: PartialFile
    claim: Claim | None = None


class Worker:
    """One connection (per host) and the loop that runs tasks on it."""

    def __init__(self, shared: Shared, verifier: Verifier, next_task: Callable[[], Task | None]) -> None:
        self.shared, self.verifier, self.next_task = shared, verifier, next_task
        s = shared.settings
        self.client = Client(timeout=s.timeout + 1.0, connect_timeout=s.connect_timeout)
        self.beat = Beat(self.client)
        self.buf = memoryview(bytearray(BUFFER))

    def run(self) -> None:
        with self.shared.cv:
            self.shared.clients.append(self.client)
            self.shared.beats.append(self.beat)
        try:
            while (task := self.next_task()) is not None:
                f = task.file
                try:
                    if task.kind == "resolve":
                        self._with_retries(f, functools.partial(self._resolve, f))
                    elif task.kind == "stream":
                        self._with_retries(f, functools.partial(stream, self.shared, self.verifier, self.client,
                                                                f, self.buf, self.beat))
                    else:
                        assert task.claim is not None
                        self._chunk(f, task.claim)
                except BaseException as exc:
                    self.shared.fail(exc)
                    return
        finally:
            self.client.close()

    def _with_retries(self, f: PartialFile, fn: Callable[[], None]) -> None:
        policy, beat, shared = self.shared.settings.retry, self.beat, self.shared
        retries = policy.attempts - 1
        for attempt in policy.attempts_left():
            beat.start()
            try:
                fn()
                return
            except WarmstartError:
                raise  # permanent: a refused redirect, a size or budget overrun, a digest mismatch
            except HTTPStatusError as exc:
                if shared.stop:
                    return
                if not exc.retryable or policy.last(attempt):
                    raise _status_error(f, exc) from None
                delay = exc.retry_after or policy.delay(attempt)  # Retry-After as the answer bounds it
                log.info("%s: %s; retrying in %.1fs", f.job.name, exc, delay)
            except (OSError, http.client.HTTPException, TruncatedError) as exc:
                if shared.stop:
                    return  # halted: the socket was shut down under us
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise CacheFullError(f"disk full while writing {f.part}: free space and pull again "
                                         "(the partial download is kept and will resume)") from None
                timeout = shared.settings.timeout
                why = beat.reason or (f"no byte for {timeout:.0f} s" if isinstance(exc, TimeoutError)
                                      else printable(str(exc) or type(exc).__name__))
                if beat.reason is not None:
                    beat.client.drop()  # the watchdog shut its sockets down
                if policy.last(attempt):
                    raise TransferError(f"{f.job.name}: {why} (after {retries} retries); "
                                        "check the connection and pull again to resume") from None
                delay = policy.delay(attempt)
                log.info("%s: %s; retrying in %.1fs", f.job.name, why, delay)
            finally:
                beat.stop()
            if shared.stop_evt.wait(delay):
                return

    def _resolve(self, f: PartialFile) -> None:
        url, resp = self.client.follow("HEAD", f.job.url, f.job.headers)
        drain(resp)
        cv = self.shared.cv
        if resp.status == 405:  # no HEAD: fetch it as one stream
            with cv:
                f.stream, f.resolved, f.resolving = True, True, False
                cv.notify_all()
            return
        if resp.status != 200:
            raise HTTPStatusError(resp.status, url, headers_of(resp))
        length = content_length(resp.getheader("Content-Length"))
        if length is not None and f.size is not None and length != f.size:
            raise IntegrityError(f"{f.job.name}: the origin now serves {length} bytes, the listing said "
                                 f"{f.size}; the file changed upstream, pull again")
        ranges = (resp.getheader("Accept-Ranges") or "").lower() == "bytes"
        with cv:
            f.url = url
            f.headers = f.job.headers if host_key(url) == host_key(f.job.url) else {
                k: v for k, v in f.job.headers.items() if k.lower() != "authorization"}
            f.resolved, f.resolving = True, False
            if not ranges:
                f.stream = True
                f.close()
            cv.notify_all()
            everything_on_disk = f.on_disk
        if everything_on_disk:  # a resumed file with no byte missing: only the hash is left to do
            self.verifier.poke(f)

    def _chunk(self, f: PartialFile, claim: Claim) -> None:
        """Fetch ``claim`` request by request; each request is retried on its own."""
        while True:
            with self.shared.cv:
                if self.shared.stop:
                    return
                if claim.pos >= claim.end:
                    break
            self._with_retries(f, functools.partial(self._request, f, claim))
        start_writeback(f.fd, claim.start, claim.end - claim.start)  # so the fsync before publishing is short
        with self.shared.cv:
            span = f.plan.finish(claim)
            f.dirty = True
        if self.shared.on_range is not None:
            self.shared.on_range(f.job, span.start, span.end)
        self.verifier.poke(f)

    def _request(self, f: PartialFile, claim: Claim) -> None:
        """One ranged GET for the claim's next bytes (from where they stopped), read to its end."""
        shared, s = self.shared, self.shared.settings
        with shared.cv:
            req = f.plan.request(claim, min(s.request_size, max(MIN_REQUEST, f.plan.size // 8)))
            url, headers = f.url, dict(f.headers)
        if req is None:
            return
        headers["Range"] = f"bytes={req.start}-{req.end - 1}"
        t_sent = time.monotonic()
        resp = self._open_range(f, url, headers, req.start, req.end)
        t_head = time.monotonic()
        me = threading.get_ident()
        if me not in shared.receiving:
            with shared.cv:
                shared.receiving.add(me)
        pos = self._read_range(f, claim, resp, req.start, req.end)
        if pos < req.end or resp.length:
            self.client.drop(f.url)  # unread body left (stopping)
        else:
            shared.observe(t_head - t_sent, pos - req.start, time.monotonic() - t_head)

    def _open_range(self, f: PartialFile, url: str, headers: dict[str, str], start: int, end: int):
        # follow(): a file's first requests go through the Hub's 302 (no HEAD round trips before the
        # first byte); later ones go straight to where it pointed.
        got_url, resp = self.client.follow("GET", url, headers)
        cv = self.shared.cv
        if got_url != url:
            with cv:
                if f.url == url:
                    f.url = got_url
                    if host_key(got_url) != host_key(url):
                        f.headers = {k: v for k, v in f.headers.items() if k.lower() != "authorization"}
        if resp.status != 206:
            body = drain(resp)
            if resp.status in (401, 403, 404, 410) and got_url != f.job.url:  # e.g. an expired CDN link
                with cv:
                    f.url, f.headers = f.job.url, dict(f.job.headers)
                raise TruncatedError(f"HTTP {resp.status} from the redirect target; resolving again")
            if resp.status == 200:
                self.client.drop(got_url)
                raise TruncatedError("origin ignored the Range header")
            raise HTTPStatusError(resp.status, got_url, headers_of(resp), body)
        cr = parse_content_range(resp.getheader("Content-Range"))
        if cr is None or cr[0] != start or cr[1] != end or (cr[2] is not None and cr[2] != f.size):
            self.client.drop(got_url)
            raise TruncatedError(f"unexpected Content-Range {resp.getheader('Content-Range')!r}")
        return resp

    def _read_range(self, f: PartialFile, claim: Claim, resp, start: int, end: int) -> int:
        """Read the body into the file at its offset; returns where it stopped."""
        shared, buf, cv = self.shared, self.buf, self.shared.cv
        pos = start
        try:
            while pos < end:
                if shared.stop:
                    break
                n = fill(resp, buf[: min(len(buf), end - pos)], self.beat)
                if not n:
                    raise TruncatedError(f"body ended at byte {pos}, expected {end}")
                os.pwrite(f.fd, buf[:n], pos)
                with cv:  # at the hash frontier: hash from memory, no read-back later
                    live = f.hashed == pos and not f.hash_busy and not f.finished
                    if live:
                        f.hash_busy = True
                if live:
                    f.hash_update(buf[:n])
                pos += n
                with cv:
                    if live:
                        f.hashed, f.hash_busy = pos, False
                    f.plan.received(claim, n)
                    f.downloaded += n
                    shared.net_bytes += n
                    f.dirty = True
                shared.progress.advance(n)
        except BaseException:
            self.client.drop(f.url)
            raise
        return pos


def _status_error(f: PartialFile, exc: HTTPStatusError) -> Exception:
    if exc.status == 404:
        return NotFoundError(f"{f.job.name}: not found at the origin (HTTP 404); check the name and revision")
    if exc.status == 412:
        return IntegrityError(f"{f.job.name}: the object changed at the origin after it was listed "
                              "(HTTP 412, ETag mismatch); nothing was published, pull again")
    if exc.status in (401, 403):
        return TransferError(f"{f.job.name}: access denied (HTTP {exc.status}); check your credentials")
    return TransferError(f"{f.job.name}: {exc}; pull again later to resume")

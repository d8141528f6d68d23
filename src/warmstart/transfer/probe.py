"""Probing files the listing gives no size for (mirrors that list names only), all in parallel at the
start of a pull, so that the budget is checked before a file byte moves and every large file is
fetched by parallel ranged reads, as when the listing gives sizes.

One request per file, following redirects: a HEAD (size from ``X-Linked-Size`` on a redirect, else
``Content-Length``; Range support from ``Accept-Ranges: bytes``; the validator from ``X-Linked-Etag``,
else a strong ``ETag``). A host that refuses HEAD (405/501) is probed with ``Range: bytes=0-0``
instead, and remembered, so its other files go straight to the ranged GET: 206 and its
``Content-Range`` give the size and Range support; 200 means the origin (or the redirect target)
ignores Range: its files are streamed, and that answer's body is never read. A probe that fails
leaves the file unknown (the engine then streams it within the budget's room and reports any error
itself): probing never fails a pull.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from .._http import CONNECT_TIMEOUT, STALL_TIMEOUT, Client, content_length, drain, parse_content_range
from .._urls import host_key

log = logging.getLogger(__name__)

#: probes in flight at once (each on its own keep-alive connection)
PARALLEL = 32


@dataclasses.dataclass(frozen=True)
class Target:
    """What to probe: the file's URL and the headers its requests carry (credentials)."""

    url: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Probed:
    """What a probe learnt: ``size`` (None: unknown), whether ranged reads work, the validator."""

    size: int | None
    ranges: bool = False
    etag: str | None = None


UNKNOWN = Probed(None)


class _Hosts:
    """Hosts known to refuse HEAD, shared by the probing threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.no_head: set[tuple[str, str]] = set()

    def refuses_head(self, url: str) -> bool:
        with self.lock:
            return host_key(url) in self.no_head

    def refused_head(self, url: str) -> None:
        with self.lock:
            self.no_head.add(host_key(url))


def probe_all(targets: list[Target], *, timeout: float = STALL_TIMEOUT,
              connect_timeout: float = CONNECT_TIMEOUT, parallel: int = PARALLEL) -> list[Probed]:
    """Probe every target (in parallel, one keep-alive connection per thread); results in order."""
    if not targets:
        return []
    out: list[Probed] = [UNKNOWN] * len(targets)
    hosts = _Hosts()
    n = max(1, min(parallel, len(targets)))

    def run(lane: int) -> None:
        client = Client(timeout=timeout, connect_timeout=connect_timeout)
        try:
            for i in range(lane, len(targets), n):
                out[i] = _probe_one(client, hosts, targets[i])
        finally:
            client.close()

    with ThreadPoolExecutor(n, thread_name_prefix="warmstart-probe") as pool:
        list(pool.map(run, range(n)))
    log.debug("probed %d files: %d sizes, %d with ranges", len(targets), sum(p.size is not None for p in out),
              sum(p.ranges for p in out))
    return out


def probe_unsized(files, *, timeout: float = STALL_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT) -> dict:
    """``{path: Probed}`` for the listed files (``.path``, ``.url``, ``.headers``, ``.size``,
    ``.probe``) that have no size and may be probed, all probed in parallel; failed probes are left out."""
    unknown = [f for f in files if f.size is None and f.probe]
    got = probe_all([Target(f.url, dict(f.headers)) for f in unknown], timeout=timeout,
                    connect_timeout=connect_timeout)
    return {f.path: p for f, p in zip(unknown, got, strict=True) if p.size is not None}


def _probe_one(client: Client, hosts: _Hosts, t: Target) -> Probed:
    for attempt in (0, 1):  # one retry for a dropped connection; anything else leaves it unknown
        try:
            if not hosts.refuses_head(t.url):
                got = _head(client, t)
                if got is not None:
                    return got
                hosts.refused_head(t.url)
            return _ranged_get(client, t)
        except (OSError, http.client.HTTPException) as exc:
            client.drop()
            if attempt:
                log.debug("probe of %s failed: %s", t.url.split("?", 1)[0], exc)
        except Exception as exc:  # a refused redirect and the like: the engine meets it and says so
            client.drop()
            log.debug("probe of %s failed: %s", t.url.split("?", 1)[0], exc)
            break
    return UNKNOWN


def _linked(hops: list[http.client.HTTPResponse], name: str) -> str | None:
    for resp in reversed(hops):
        value = resp.getheader(name)
        if value:
            return value
    return None


def _validator(hops: list[http.client.HTTPResponse], resp: http.client.HTTPResponse) -> str | None:
    """``X-Linked-Etag`` of a redirect, else the answer's strong ``ETag`` (a weak one validates nothing)."""
    etag = _linked(hops, "X-Linked-Etag") or resp.getheader("ETag")
    return etag if etag and not etag.startswith("W/") else None


def _head(client: Client, t: Target) -> Probed | None:
    """A HEAD's answer; None when the host refuses HEAD."""
    hops: list[http.client.HTTPResponse] = []
    _, resp = client.follow("HEAD", t.url, t.headers, hops=hops)
    drain(resp)
    if resp.status in (405, 501):
        return None
    if resp.status != 200:
        return UNKNOWN
    size = content_length(_linked(hops, "X-Linked-Size")) or content_length(resp.getheader("Content-Length"))
    ranges = (resp.getheader("Accept-Ranges") or "").strip().lower() == "bytes"
    return Probed(size, ranges and size is not None, _validator(hops, resp))


def _ranged_get(client: Client, t: Target) -> Probed:
    """``Range: bytes=0-0``: 206 gives the size from Content-Range; 200 says Range is ignored."""
    hops: list[http.client.HTTPResponse] = []
    url, resp = client.follow("GET", t.url, {**t.headers, "Range": "bytes=0-0"}, hops=hops)
    linked = content_length(_linked(hops, "X-Linked-Size"))
    if resp.status == 206:
        drain(resp)
        cr = parse_content_range(resp.getheader("Content-Range"))
        size = cr[2] if cr is not None and cr[2] is not None else linked
        return Probed(size, size is not None, _validator(hops, resp))
    if resp.status == 416:  # an empty file: "bytes */0"
        drain(resp)
        total = (resp.getheader("Content-Range") or "").rpartition("/")[2]
        return Probed(content_length(total) if total != "*" else None, False, _validator(hops, resp))
    if resp.status == 200:  # the whole file is coming: Range is ignored; never read it here
        client.drop(url)
        size = linked if linked is not None else content_length(resp.getheader("Content-Length"))
        log.info("%s ignores Range: its files are streamed", host_key(url)[1])
        return Probed(size, False, _validator(hops, resp))
    drain(resp)
    return UNKNOWN

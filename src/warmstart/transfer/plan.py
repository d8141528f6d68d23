"""The plan of one file's bytes: which ranges are unassigned, in flight, done; how a chunk is handed
out; how an idle worker takes part of a chunk in flight. Pure bookkeeping: no sockets, no threads
(the engine holds its lock around every call).

A chunk in flight is a :class:`Claim`. Its worker fetches it as one or more ranged requests of at
most the engine's request size, one after another on its connection; an idle worker may take only
bytes the claim has not *requested* yet. So a split never cuts a response short: no connection is
dropped and no byte comes from the origin twice.

>>> plan = SpanPlan(10 * MiB)
>>> a = plan.take(8 * MiB)
>>> plan.request(a, 2 * MiB)
Span(start=0, end=2097152)
>>> plan.received(a, 2 * MiB)
>>> b = plan.take_from_others(min_part=MiB)                  # half of what ``a`` has left, unrequested
>>> (a.end, b.start, b.end) == (5 * MiB, 5 * MiB, 8 * MiB)
True
>>> merge([Span(0, 4), Span(4, 8), Span(10, 12)])
[Span(start=0, end=8), Span(start=10, end=12)]
>>> missing([Span(0, 8), Span(10, 12)], 16)
[Span(start=8, end=10), Span(start=12, end=16)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

MiB = 2**20
MIN_CHUNK = 1 * MiB
#: split points are rounded up to this (whole pages for the writes on both sides)
ALIGN = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Span:
    """The bytes ``[start, end)`` of a file."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclasses.dataclass(eq=False)
class Claim:
    """A chunk handed to one worker, ``[start, end)``: ``[start, pos)`` has arrived, ``[pos, asked)``
    is requested and on its way, ``[asked, end)`` is not requested yet (another worker may take it)."""

    start: int
    pos: int
    asked: int
    end: int

    @property
    def left(self) -> int:
        return self.end - self.pos

    def split_point(self) -> int:
        """Where an idle worker would start: the middle of what is left (both then end together),
        rounded up to :data:`ALIGN`, never before the bytes already requested."""
        mid = -(-((self.pos + self.end) // 2) // ALIGN) * ALIGN
        return max(self.asked, mid)

    def stealable(self) -> int:
        """Bytes an idle worker would take from this claim (0: none)."""
        return max(0, self.end - self.split_point())


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-empty, non-overlapping spans covering the same bytes."""
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, s.end)):
        if s.end <= s.start:
            continue
        if out and s.start <= out[-1].end:
            out[-1] = Span(out[-1].start, max(out[-1].end, s.end))
        else:
            out.append(s)
    return out


def missing(done: list[Span], size: int) -> list[Span]:
    """The gaps of merged ``done`` in ``[0, size)``."""
    gaps, pos = [], 0
    for s in done:
        if s.start > pos:
            gaps.append(Span(pos, s.start))
        pos = max(pos, s.end)
    if pos < size:
        gaps.append(Span(pos, size))
    return gaps


def chunk_size(left: int, workers: int, full: int) -> int:
    """The size of the next chunk: ``full`` while more than a round of them is ``left`` (each request
    costs a round trip and origin work); the last round is split evenly across the workers so that
    they end together."""
    return full if left > full * workers else max(2 * MIN_CHUNK, left // max(1, workers))


class SpanPlan:
    """One file's bytes: ``pending`` (unassigned), ``inflight`` (claims) and ``done`` (written)."""

    def __init__(self, size: int, done: Iterable[Span] = ()) -> None:
        self.size = size
        self.done = merge(done)
        self.pending = missing(self.done, size)
        self.inflight: list[Claim] = []

    @property
    def unassigned(self) -> int:
        return sum(s.size for s in self.pending)

    @property
    def settled(self) -> bool:
        """Nothing left to hand out and nothing in flight."""
        return not self.pending and not self.inflight

    def restart(self) -> None:
        """Every byte is wanted again (the file failed its digest check)."""
        self.done, self.pending, self.inflight = [], missing([], self.size), []

    def take(self, size: int) -> Claim | None:
        """A claim on the first ``size`` unassigned bytes (the whole gap when less than half a
        :data:`MIN_CHUNK` would be left behind); None when nothing is unassigned."""
        if not self.pending:
            return None
        gap = self.pending[0]
        end = min(gap.end, gap.start + max(1, size))
        if gap.end - end < MIN_CHUNK // 2:
            end = gap.end
        if end == gap.end:
            self.pending.pop(0)
        else:
            self.pending[0] = Span(end, gap.end)
        claim = Claim(gap.start, gap.start, gap.start, end)
        self.inflight.append(claim)
        return claim

    def request(self, claim: Claim, limit: int) -> Span | None:
        """The next request for ``claim``: from where its bytes stopped, at most ``limit`` bytes (the
        rest of the claim when less than half a :data:`MIN_CHUNK` would be left); None once complete."""
        if claim.pos >= claim.end:
            return None
        end = min(claim.end, claim.pos + max(1, limit))
        if claim.end - end < MIN_CHUNK // 2:
            end = claim.end
        claim.asked = end
        return Span(claim.pos, end)

    @staticmethod
    def received(claim: Claim, n: int) -> None:
        claim.pos += n

    def finish(self, claim: Claim) -> Span:
        """The claim is written: its bytes move to ``done``."""
        self.inflight.remove(claim)
        span = Span(claim.start, claim.end)
        self.done = merge([*self.done, span])
        return span

    def victim(self) -> Claim | None:
        """The claim in flight an idle worker would take most bytes from."""
        return max(self.inflight, key=Claim.stealable, default=None)

    def split(self, claim: Claim) -> Claim:
        """Hand the unrequested back part of ``claim`` (from :meth:`Claim.split_point`) to a new claim."""
        mid = claim.split_point()
        new = Claim(mid, mid, mid, claim.end)
        claim.end = mid
        self.inflight.append(new)
        return new

    def take_from_others(self, min_part: int) -> Claim | None:
        """Split the claim with the most unrequested bytes, if that gives at least ``min_part``."""
        claim = self.victim()
        if claim is None or claim.stealable() < min_part:
            return None
        return self.split(claim)

    def written(self) -> list[Span]:
        """Bytes known to be on disk: the done ranges and what has arrived of each claim."""
        return merge([*self.done, *(Span(c.start, c.pos) for c in self.inflight)])

    def contiguous(self) -> int:
        """End of the written prefix ``[0, n)``."""
        spans = self.written()
        return spans[0].end if spans and spans[0].start == 0 else 0

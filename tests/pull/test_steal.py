"""The plan of spans (warmstart.transfer.plan), driven directly: an idle worker only ever takes bytes
that no request has asked for yet, so a split never cuts a response short and no byte is fetched
twice; chunks are handed out without slivers; the resume state sees every byte that arrived."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from warmstart.transfer.plan import ALIGN, MIN_CHUNK, Claim, MiB, Span, SpanPlan, chunk_size, merge, missing
from warmstart.transfer.shared import Settings, Shared

POS = 7 * MiB + 4096  # the victim's read position (not aligned)


def _victim(plan: SpanPlan, left: int, requested: int) -> Claim:
    """A claim in flight at POS with ``left`` bytes to go, ``requested`` of them already asked for."""
    claim = Claim(0, POS, POS + requested, POS + left)
    plan.inflight.append(claim)
    return claim


@pytest.mark.parametrize("min_part", [MIN_CHUNK // 2, 2 * MiB, 6 * MiB])
@pytest.mark.parametrize("requested", [0, 1, MiB, 3 * MiB + 5, "all"])
@pytest.mark.parametrize("left", [MiB, 3 * MiB // 2, 2 * MiB + 1, 3 * MiB, 5 * MiB + 12345, 64 * MiB])
def test_a_split_never_takes_requested_bytes(left, requested, min_part):
    requested = left if requested == "all" else min(requested, left)
    plan = SpanPlan(POS + left)
    victim = _victim(plan, left, requested)
    end, asked = victim.end, victim.asked
    mid = max(asked, -(-((POS + end) // 2) // ALIGN) * ALIGN)  # the middle of what is left, or later
    stolen = plan.take_from_others(min_part)
    if end - mid < min_part:  # not worth a request: nothing changes
        assert stolen is None and plan.inflight == [victim] and victim.end == end
        return
    assert stolen is not None and stolen.start == mid and stolen.end == end
    assert stolen.start >= asked  # never a byte the victim asked for: its answer is read to its end
    assert stolen.start % ALIGN == 0 or stolen.start == asked
    assert victim.end == stolen.start and victim.asked == asked  # the victim ends where the thief starts
    assert stolen.pos == stolen.asked == stolen.start and stolen.end - stolen.start >= min_part
    assert plan.inflight == [victim, stolen]


def test_the_claim_with_most_unrequested_bytes_is_split():
    plan = SpanPlan(100 * MiB)
    a = Claim(0, 0, 8 * MiB, 10 * MiB)  # 10 MiB left, but only 2 MiB not requested
    b = Claim(10 * MiB, 12 * MiB, 14 * MiB, 30 * MiB)
    plan.inflight += [a, b]
    assert plan.victim() is b
    stolen = plan.take_from_others(MiB)
    assert stolen is not None and (stolen.start, stolen.end) == (21 * MiB, 30 * MiB) and b.end == 21 * MiB
    assert a.end == 10 * MiB


@pytest.mark.parametrize("size,take,expect", [
    (10 * MiB, 4 * MiB, [(0, 4 * MiB), (4 * MiB, 8 * MiB), (8 * MiB, 10 * MiB)]),
    (8 * MiB + MiB // 4, 4 * MiB, [(0, 4 * MiB), (4 * MiB, 8 * MiB + MiB // 4)]),  # no sliver under MIN_CHUNK/2
    (MiB // 3, 4 * MiB, [(0, MiB // 3)]),
])
def test_chunks_are_handed_out_in_order_without_slivers(size, take, expect):
    plan = SpanPlan(size)
    got = []
    while (c := plan.take(take)) is not None:
        got.append((c.start, c.end))
    assert got == expect and plan.unassigned == 0 and not plan.settled


def test_requests_cover_a_claim_in_order_then_stop():
    plan = SpanPlan(10 * MiB)
    claim = plan.take(10 * MiB)
    assert claim is not None
    reqs = []
    while (r := plan.request(claim, 4 * MiB)) is not None:
        reqs.append(r)
        assert claim.asked == r.end
        plan.received(claim, r.size)
    assert reqs == [Span(0, 4 * MiB), Span(4 * MiB, 8 * MiB), Span(8 * MiB, 10 * MiB)]
    assert plan.finish(claim) == Span(0, 10 * MiB) and plan.done == [Span(0, 10 * MiB)] and plan.settled


def test_a_retried_request_starts_where_the_bytes_stopped():
    plan = SpanPlan(8 * MiB)
    claim = plan.take(8 * MiB)
    assert plan.request(claim, 4 * MiB) == Span(0, 4 * MiB)
    plan.received(claim, MiB + 7)  # then the connection broke
    assert plan.request(claim, 4 * MiB) == Span(MiB + 7, 5 * MiB + 7)


def test_resume_state_counts_bytes_in_flight_and_restart_forgets_all():
    plan = SpanPlan(16 * MiB, done=[Span(8 * MiB, 12 * MiB)])
    assert plan.pending == [Span(0, 8 * MiB), Span(12 * MiB, 16 * MiB)] and plan.unassigned == 12 * MiB
    first = plan.take(4 * MiB)
    plan.request(first, 4 * MiB)
    plan.received(first, MiB)
    assert plan.written() == [Span(0, MiB), Span(8 * MiB, 12 * MiB)] and plan.contiguous() == MiB
    plan.restart()
    assert plan.pending == [Span(0, 16 * MiB)] and plan.done == [] and plan.inflight == [] and plan.contiguous() == 0


def test_merge_and_missing():
    assert merge([Span(4, 8), Span(0, 4), Span(5, 6), Span(9, 9), Span(10, 12)]) == [Span(0, 8), Span(10, 12)]
    assert missing([Span(0, 8), Span(10, 12)], 16) == [Span(8, 10), Span(12, 16)]
    assert missing([], 5) == [Span(0, 5)] and missing([Span(0, 5)], 5) == []


def test_the_last_round_is_split_evenly():
    assert chunk_size(1000 * MiB, 16, 16 * MiB) == 16 * MiB
    assert chunk_size(64 * MiB, 16, 16 * MiB) == 4 * MiB
    assert chunk_size(8 * MiB, 16, 16 * MiB) == 2 * MIN_CHUNK


@pytest.mark.parametrize("seed", range(20))
def test_simulated_workers_request_every_byte_exactly_once(seed):
    """Workers of random speeds take chunks, request them piece by piece and steal from each other;
    every byte of the file is requested by exactly one request."""
    rng = random.Random(seed)
    size = rng.randrange(1, 200) * MiB + rng.randrange(MiB)
    plan = SpanPlan(size)
    workers = [{"claim": None, "req": None, "rate": rng.choice([64, 256, 1024]) * 1024} for _ in range(rng.randrange(1, 9))]
    requested: list[Span] = []
    steps = 0
    while not plan.settled:
        steps += 1
        assert steps < 100_000
        for w in workers:
            if w["claim"] is None:
                w["claim"] = plan.take(chunk_size(plan.unassigned, len(workers), 16 * MiB)) or \
                    plan.take_from_others(rng.choice([MIN_CHUNK // 2, 2 * MiB]))
                if w["claim"] is None:
                    continue
            claim = w["claim"]
            if w["req"] is None:
                w["req"] = plan.request(claim, rng.choice([MiB, 4 * MiB, 16 * MiB]))
                if w["req"] is None:
                    plan.finish(claim)
                    w["claim"] = None
                    continue
                requested.append(w["req"])
            n = min(w["rate"], w["req"].end - claim.pos)
            plan.received(claim, n)
            if claim.pos == w["req"].end:
                w["req"] = None
    requested.sort(key=lambda s: s.start)
    assert sum(s.size for s in requested) == size  # no byte twice...
    assert merge(requested) == [Span(0, size)]  # ...and none left out
    assert plan.done == [Span(0, size)] and plan.contiguous() == size


def test_the_split_threshold_follows_the_measured_link(tmp_path: Path):
    shared = Shared(Settings(tmp_path, tmp_path), None, None)
    assert shared.min_steal() == 2 * MiB  # nothing measured yet
    for _ in range(30):  # a slow link with a long first byte: splitting a few hundred KB pays off...
        shared.observe(0.02, 16 * MiB, 16 * MiB / 20e6)
    assert MIN_CHUNK // 2 <= shared.min_steal() <= 1 * MiB
    for _ in range(30):  # ...but not at 1 GB/s per connection and 50 ms to first byte
        shared.observe(0.05, 16 * MiB, 16 * MiB / 1e9)
    assert shared.min_steal() > 40 * MiB

"""Splitting a chunk in flight (transfer.py ``_steal``): the new range never overlaps the bytes the
victim is reading, whatever the measured link, so no byte is downloaded twice."""

from __future__ import annotations

import types

import pytest

from warmstart import transfer
from warmstart.transfer import BUFFER, MiB, Transfer


@pytest.mark.parametrize("conn_bps,ttfb", [(None, 0.05), (20e6, 0.025), (1e6, 0.001), (500e6, 0.2)])
@pytest.mark.parametrize("left", [BUFFER, 3 * BUFFER // 2, 2 * BUFFER + 1, 3 * MiB, 5 * MiB + 12345, 64 * MiB])
def test_steal_never_splits_inside_the_read_in_progress(tmp_path, conn_bps, ttfb, left):
    t = Transfer(tmp_path, tmp_path)
    t._conn_bps, t._ttfb_s = conn_bps, ttfb
    pos = 7 * MiB + 4096
    victim = [0, pos, pos + left]
    t._files = [types.SimpleNamespace(inflight=[victim])]
    stolen = t._steal()
    if stolen is None:
        threshold = 4 * MiB if conn_bps is None else 2 * conn_bps * ttfb
        assert left <= max(2 * BUFFER, threshold)
        return
    _, f, new = stolen
    assert new[0] == victim[2] and new[2] == pos + left  # the victim now ends where the thief starts
    assert new[0] >= pos + BUFFER and new[2] - new[0] > 0
    assert f.inflight == [victim, new]


def test_steal_threshold_follows_the_measured_link(tmp_path):
    t = Transfer(tmp_path, tmp_path)
    t._files = [types.SimpleNamespace(inflight=[[0, 0, 3 * MiB]])]
    assert t._steal() is None  # nothing measured yet: only rests over 4 MiB are split
    for _ in range(30):  # a slow link with a long first byte: a 3 MiB rest is worth splitting at 20 MB/s...
        t._observe(0.02, 16 * MiB, 16 * MiB / 20e6)
    assert t._steal() is not None
    t._files = [types.SimpleNamespace(inflight=[[0, 0, 3 * MiB]])]
    for _ in range(30):  # ...but not at 1 GB/s per connection and 50 ms to first byte
        t._observe(0.05, 16 * MiB, 16 * MiB / 1e9)
    assert t._steal() is None
    assert transfer.MIN_CHUNK <= 2 * BUFFER

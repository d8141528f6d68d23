"""The connection ramp. CDNs cap each connection, so the number of connections adapts: the engine starts
with ``min_connections`` and adds half as many again while the aggregate rate still grows by >= 15 %,
up to ``max_connections``. Each rate is measured over 0.25 s once every connection of the step
receives bytes (or, with an origin slow to answer, after 2 s), so a slow start does not pass for a
link that more connections would fill. Pure: the supervisor feeds it the clock and the byte count.

>>> r = Ramp(min_connections=4, max_connections=16, now=0.0)
>>> r.target
4
>>> r.step(now=0.1, net_bytes=0, receiving=4, unassigned=1 << 30)            # settling: no measure yet
0
>>> r.step(now=0.4, net_bytes=30_000_000, receiving=4, unassigned=1 << 30)   # 100 MB/s: grow by half
2
>>> r.target
6
"""

from __future__ import annotations

import dataclasses
import logging

from .plan import MIN_CHUNK

log = logging.getLogger(__name__)

WINDOW_S = 0.25  # a rate is measured over this long
SETTLE_S = 0.15  # after a step, before measuring
PATIENCE_S = 2.0  # measure even if some connections of the step have not received yet
GROWTH = 1.15  # a step that did not raise the rate this much ends the ramp


@dataclasses.dataclass(frozen=True)
class Measure:
    """The aggregate rate measured with ``connections`` connections."""

    connections: int
    rate: float


class Ramp:
    """When to add connections, and how many."""

    def __init__(self, min_connections: int, max_connections: int, now: float) -> None:
        self.max_connections = max(1, max_connections)
        self.target = max(1, min(min_connections, self.max_connections))
        self.growing = True
        self.last_change = now
        self.mark_t, self.mark_b = now, 0
        self.before: Measure | None = None  # before the last step

    def step(self, now: float, net_bytes: int, receiving: int, unassigned: int) -> int:
        """Connections to add now (0: none); ``receiving`` is how many have had a response body."""
        ramping = receiving < self.target and now - self.last_change < PATIENCE_S
        if not self.growing or now - self.last_change < SETTLE_S or ramping:
            self.mark_t, self.mark_b = now, net_bytes
            return 0
        if now - self.mark_t < WINDOW_S:
            return 0
        rate = (net_bytes - self.mark_b) / (now - self.mark_t)
        self.mark_t, self.mark_b = now, net_bytes
        if self.before is not None and rate < self.before.rate * GROWTH:
            self.growing = False  # the last step did not help: the link is full (its extra
            # connections stay: they cost little, and cover per-request latency)
            log.debug("link full at %d connections (%.1f MB/s)", self.target, rate / 1e6)
            return 0
        room = self.max_connections - self.target
        if room <= 0:
            self.growing = False
            return 0
        if unassigned < MIN_CHUNK * self.target:
            return 0
        self.before = Measure(self.target, rate)
        n = min(room, max(2, self.target // 2))
        self.target += n
        self.last_change = now
        return n

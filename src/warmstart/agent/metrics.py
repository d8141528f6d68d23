"""The agent's Prometheus metrics, in a registry of its own (no process-global state).

Names (all prefixed ``warmstart_``)::

    pull_bytes_total{source, via}      bytes a pull delivered; via = origin | cache
    pull_duration_seconds{source}      histogram of pull durations (every outcome)
    pulls_total{source, outcome}       outcome = hit | miss | error
    cache_hits_total / cache_misses_total
    pulls_in_flight                    pulls running now (one per model however many ask)
    cache_bytes / cache_budget_bytes / cache_snapshots / memory_tier_bytes
    cache_evictions_total              snapshots that left the cache while the agent watched
    verify_failures_total              corrupt or missing blobs found by the readiness checks
    agent_config_ok                    1 when the last read of the config file succeeded
    agent_models_ready / agent_models_configured
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: the agent is the process's only exporter
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.pull_bytes = Counter("warmstart_pull_bytes", "Bytes delivered by pulls, by source scheme and "
                                  "by where they came from (origin or the node cache)", ["source", "via"],
                                  registry=r)
        self.pull_seconds = Histogram("warmstart_pull_duration_seconds", "Pull durations", ["source"],
                                      buckets=BUCKETS, registry=r)
        self.pulls = Counter("warmstart_pulls", "Pulls by source and outcome (hit, miss, error)",
                             ["source", "outcome"], registry=r)
        self.hits = Counter("warmstart_cache_hits", "Pulls answered from the cache alone", registry=r)
        self.misses = Counter("warmstart_cache_misses", "Pulls that fetched bytes from the origin", registry=r)
        self.in_flight = Gauge("warmstart_pulls_in_flight", "Pulls running now", registry=r)
        self.cache_bytes = Gauge("warmstart_cache_bytes", "Bytes of blobs in the cache home", registry=r)
        self.budget = Gauge("warmstart_cache_budget_bytes", "The cache budget (0: none)", registry=r)
        self.snapshots = Gauge("warmstart_cache_snapshots", "Snapshots in the cache", registry=r)
        self.memory_bytes = Gauge("warmstart_memory_tier_bytes", "Bytes in the RAM tier", registry=r)
        self.evictions = Counter("warmstart_cache_evictions", "Snapshots that left the cache while the "
                                 "agent watched (budget evictions, gc, rm)", registry=r)
        self.verify_failures = Counter("warmstart_verify_failures", "Corrupt or missing blobs found by the "
                                       "agent's checks", registry=r)
        self.config_ok = Gauge("warmstart_agent_config_ok", "1 when the last read of the config succeeded",
                               registry=r)
        self.models_ready = Gauge("warmstart_agent_models_ready", "Configured models present and verified",
                                  registry=r)
        self.models_configured = Gauge("warmstart_agent_models_configured", "Models in the config", registry=r)

    def record_pull(self, source: str, seconds: float, downloaded: int | None, from_cache: int | None,
                    outcome: str) -> None:
        self.pull_seconds.labels(source).observe(seconds)
        self.pulls.labels(source, outcome).inc()
        if outcome == "error":
            return
        self.pull_bytes.labels(source, "origin").inc(downloaded or 0)
        self.pull_bytes.labels(source, "cache").inc(from_cache or 0)
        (self.hits if outcome == "hit" else self.misses).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

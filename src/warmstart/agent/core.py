"""The agent's state: its config (last good one), the configured models' readiness, pulls (single
flight), and the cache statistics behind the metrics. Calls only the public API (``warmstart.api``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import api, errors
from .._redact import redact_text
from ..config import Settings
from .config import AgentConfig, ModelSpec, file_identity, load_config
from .flights import Flights
from .metrics import Metrics

log = logging.getLogger("warmstart.agent")

STATS_EVERY = 15.0  # seconds between cache statistics refreshes (du walks the blobs)


def _scheme(ref: str) -> str:
    return ref.split("://", 1)[0] if "://" in ref else ("file" if ref.startswith(("/", ".", "~")) else "hf")


def names_local_path(ref: str) -> Path | None:
    """The filesystem path a ref names (``file://…`` or a plain path), else ``None``."""
    if ref.startswith("file://"):
        return Path(ref[len("file://"):])
    if "://" in ref:
        return None
    if ref.startswith(("/", ".", "~")) or os.path.exists(ref):
        return Path(os.path.expanduser(ref))
    return None


@dataclasses.dataclass
class PullRequest:
    ref: str
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    tier: str | None = None

    @property
    def key(self) -> tuple:
        return (self.ref, self.revision, self.include, self.exclude, self.tier or "disk")

    @classmethod
    def from_json(cls, body: object) -> PullRequest:
        if not isinstance(body, dict):
            raise errors.ConfigError("the body must be a JSON object with 'ref'")
        unknown = set(body) - {"ref", "revision", "include", "exclude", "tier"}
        if unknown:
            raise errors.ConfigError(f"unknown field(s) {', '.join(sorted(unknown))}: the agent pulls into its "
                                     "cache only (use --to on the client for a plain directory)")
        ref = body.get("ref")
        if not isinstance(ref, str) or not ref:
            raise errors.ConfigError("'ref' must be a non-empty string such as hf://org/name")
        globs = {}
        for k in ("include", "exclude"):
            v = body.get(k) or []
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not all(isinstance(g, str) for g in v):
                raise errors.ConfigError(f"'{k}' must be a list of globs")
            globs[k] = tuple(v)
        tier = body.get("tier")
        if tier not in (None, "disk", "memory"):
            raise errors.ConfigError("'tier' must be 'disk' or 'memory'")
        rev = body.get("revision")
        if rev is not None and not isinstance(rev, str):
            raise errors.ConfigError("'revision' must be a string")
        return cls(ref, rev, globs["include"], globs["exclude"], tier)


class Agent:
    def __init__(self, config_path: Path, *, poll_interval: float = 5.0, settings: Settings | None = None) -> None:
        self.config_path = config_path
        self.poll_interval = poll_interval
        self.base_settings = settings or Settings.from_env()
        self.home = self.base_settings.home
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="warmstart-agent")
        self.flights = Flights(self.executor, self.stop)
        self.config: AgentConfig | None = None
        self.config_error: str | None = None
        self.status: dict[tuple, str] = {}  # configured model -> pending | pulling | ready | failed: why
        self.pinned: dict[tuple, tuple[str, str]] = {}  # configured model -> (ref, revision) it pinned
        self._identity: tuple | None = None
        self._seen: set[tuple[str, str]] | None = None
        self._tasks: set[asyncio.Task] = set()
        #: sha256 -> blob path of every file a pull through this agent returned: what GET /v1/blobs serves
        self.blobs: dict[str, Path] = {}

    # -- settings --------------------------------------------------------------------------------
    def settings(self) -> Settings:
        s, c = self.base_settings, self.config
        if c is None:
            return s
        return dataclasses.replace(s, max_size=c.max_size if c.max_size is not None else s.max_size,
                                   memory_max_size=c.memory_max_size if c.memory_max_size is not None
                                   else s.memory_max_size)

    # -- pulls -----------------------------------------------------------------------------------
    def check_path(self, req: PullRequest) -> None:
        """A ref naming a local path outside the cache home is refused (the agent may run with more
        rights than its clients: it must not copy arbitrary node files into a cache they can read)."""
        p = names_local_path(req.ref)
        if p is None:
            return
        home = self.home.resolve()
        real = p.resolve()
        if real != home and home not in real.parents:
            raise errors.UnsafePathError(f"{p} is outside the cache home {home}; the agent pulls only from "
                                         "origins and from paths inside its cache")

    def _work(self, req: PullRequest):
        def run(sink) -> dict:
            t0 = time.monotonic()
            line = {"event": "pull", "ref": redact_text(req.ref), "revision": req.revision}
            self.metrics.in_flight.inc()
            try:
                snap = api.pull(req.ref, revision=req.revision, include=req.include or None,
                                exclude=req.exclude or None, tier=req.tier, quiet=True, settings=self.settings(),
                                progress=sink, agent=False)
            except KeyboardInterrupt:
                out = {"error": f"the agent is stopping; {req.ref} stopped resumably: run the same pull again",
                       "type": "TransferError"}
                line.update(outcome="stopped")
            except errors.WarmstartError as exc:
                out = {"error": str(exc), "type": type(exc).__name__}
                line.update(outcome="error", error=str(exc))
            except Exception as exc:  # a bug or an OS error: one line to the client, details in the log
                log.debug("pull of %s failed", req.ref, exc_info=True)
                out = {"error": f"{type(exc).__name__}: {exc}", "type": "WarmstartError"}
                line.update(outcome="error", error=f"{type(exc).__name__}: {exc}")
            else:
                out = snap.to_json()
                self.blobs.update((f.digest, f.blob) for f in snap.files)
                line.update(revision=snap.revision, outcome="hit" if snap.downloaded == 0 else "miss",
                            bytes=snap.size, bytes_from_origin=snap.downloaded, bytes_from_cache=snap.from_cache)
            finally:
                self.metrics.in_flight.dec()
            secs = time.monotonic() - t0
            line.update(seconds=round(secs, 3))
            if line["outcome"] == "miss":
                line["rate_mb_s"] = round(line["bytes_from_origin"] / secs / 1e6, 1) if secs else None
            self.metrics.record_pull(_scheme(req.ref), secs, line.get("bytes_from_origin"),
                                     line.get("bytes_from_cache"),
                                     "error" if line["outcome"] in ("error", "stopped") else line["outcome"])
            log.info("pull", extra={"event": line})
            return out

        return run

    def pull(self, req: PullRequest):
        """The flight pulling ``req`` (joined if one runs) and whether it was joined."""
        return self.flights.start(req.key, self._work(req))

    # -- configured models -----------------------------------------------------------------------
    def ready(self) -> bool:
        return self.config is not None and all(v == "ready" for v in self.status.values())

    def readiness(self) -> dict:
        models = {}
        for spec in self.config.models if self.config else ():
            models[spec.ref + (f"@{spec.revision}" if spec.revision else "")] = self.status.get(spec.key, "pending")
        return {"ready": self.ready(), "models": models, "config": str(self.config_path),
                "config_error": self.config_error}

    async def _keep_warm(self, spec: ModelSpec, sem: asyncio.Semaphore) -> None:
        async with sem:
            if self.stop.is_set() or self.config is None or spec not in self.config.models:
                return
            self.status[spec.key] = "pulling"
            flight, _ = self.pull(PullRequest(spec.ref, spec.revision, spec.include, spec.exclude, spec.tier))
            q = flight.subscribe()
            result = None
            while (line := await q.get()) is not None:
                result = line
            if not result or "error" in result:
                self.status[spec.key] = f"failed: {(result or {}).get('error', 'no answer')}"
                return
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self.executor, self._settle, spec, result["revision"])
            except errors.WarmstartError as exc:
                self.status[spec.key] = f"failed: {exc}"
                return
            if self.config is not None and spec in self.config.models:
                self.status[spec.key] = "ready"
            self.metrics.models_ready.set(sum(v == "ready" for v in self.status.values()))

    def _settle(self, spec: ModelSpec, revision: str) -> None:
        """Pin (or unpin) as configured, then verify the blobs; runs in a worker thread."""
        m = api.cache(settings=self.settings())
        if spec.pin:
            m.pin(spec.ref, revision, pinned=True)
            self.pinned[spec.key] = (spec.ref, revision)
        elif spec.key in self.pinned:
            m.pin(*self.pinned.pop(spec.key), pinned=False)
        report = m.verify(spec.ref, revision)
        bad = len(report.corrupt) + len(report.missing)
        if bad:
            self.metrics.verify_failures.inc(bad)
            raise errors.IntegrityError(f"{spec.ref}@{revision[:12]}: {bad} corrupt or missing blob(s); "
                                        "the agent pulls them again on the next config change or restart")

    def _unpin(self, keys: list[tuple]) -> None:
        m = api.cache(settings=self.settings())
        for key in keys:
            if key in self.pinned:
                ref, rev = self.pinned.pop(key)
                try:
                    m.pin(ref, rev, pinned=False)
                except errors.WarmstartError as exc:
                    log.warning("could not unpin %s@%s: %s", ref, rev, exc)

    async def apply(self, new: AgentConfig) -> None:
        old = self.config
        self.config = new
        keys = {s.key for s in new.models}
        gone = [k for k in self.status if k not in keys]
        for k in gone:
            self.status.pop(k, None)
        if gone:  # removed from the config: unpinned (evictable again), never deleted here
            await asyncio.get_running_loop().run_in_executor(self.executor, self._unpin, gone)
        self.metrics.models_configured.set(len(new.models))
        sem = asyncio.Semaphore(new.concurrency)
        before = {s: True for s in old.models} if old else {}
        for spec in new.models:
            if spec in before and self.status.get(spec.key) == "ready":
                continue
            self.status[spec.key] = "pending"
            self._spawn(self._keep_warm(spec, sem))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def read_config(self) -> AgentConfig | None:
        """The config file, or ``None`` when it is broken (the reason kept for the log and /readyz)."""
        try:
            cfg = load_config(self.config_path)
        except errors.ConfigError as exc:
            self.config_error = f"{exc}; keeping the last good config" if self.config else str(exc)
            self.metrics.config_ok.set(0)
            log.warning("%s", self.config_error)
            return None
        self.config_error = None
        self.metrics.config_ok.set(1)
        return cfg

    async def watch_config(self) -> None:
        """Read the config now, then whenever its identity changes (polled: a ConfigMap update is a
        symlink swap, which inotify on the file does not see)."""
        self._identity = file_identity(self.config_path)
        cfg = self.read_config()
        if cfg is not None:
            log.info("config %s: %d model(s)", self.config_path, len(cfg.models))
            await self.apply(cfg)
        while not self.stop.is_set():
            await asyncio.sleep(self.poll_interval)
            ident = file_identity(self.config_path)
            if ident == self._identity:
                continue
            self._identity = ident
            cfg = self.read_config()
            if cfg is not None and cfg != self.config:
                log.info("config %s changed: %d model(s)", self.config_path, len(cfg.models))
                await self.apply(cfg)

    # -- statistics ------------------------------------------------------------------------------
    def refresh_stats(self) -> None:
        m = api.cache(settings=self.settings())
        du = m.du()
        self.metrics.cache_bytes.set(du.get("blob_bytes") or 0)
        self.metrics.budget.set(du.get("budget") or 0)
        self.metrics.snapshots.set(du.get("snapshots") or 0)
        self.metrics.memory_bytes.set(du.get("memory_bytes") or 0)
        seen = {(e.model, e.revision) for e in m.ls()}
        if self._seen is not None:
            self.metrics.evictions.inc(len(self._seen - seen))
        self._seen = seen

    async def stats_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            try:
                await loop.run_in_executor(self.executor, self.refresh_stats)
            except (errors.WarmstartError, OSError) as exc:
                log.warning("cache statistics: %s", exc)
            await asyncio.sleep(STATS_EVERY)

    def models(self) -> list[dict]:
        return [e.to_json() for e in api.cache(settings=self.settings()).ls()]


class JsonLines(logging.Formatter):
    """One JSON object a line; a pull's line carries its fields (``extra={"event": {...}}``). Secrets are
    removed from every string (``warmstart._redact``)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower()}
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            out.update({k: redact_text(v) if isinstance(v, str) else v for k, v in event.items()})
        else:
            out["msg"] = redact_text(record.getMessage())
        return json.dumps(out)

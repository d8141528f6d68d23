"""``warmstart agent``: the HTTP API on a unix socket (and optionally TCP), served by uvicorn + starlette.

Chosen by measurement (idle RSS and ``/metrics`` latency, docs/agent.md): uvicorn+starlette 30 MB and
1.4 ms, aiohttp 37 MB and 1.7 ms, on the same machine in one run.

::

    POST /v1/pull   {"ref", "revision"?, "include"?, "exclude"?, "tier"?}  -> NDJSON: progress lines,
                    then the line `warmstart pull --json` prints (or {"error", "type"})
    GET  /v1/models -> `warmstart ls --json`
    GET  /v1/blobs/SHA256 -> the bytes of a file a pull through this agent returned
    GET  /healthz   GET /readyz   GET /metrics

The TCP listener serves only /healthz, /readyz and /metrics unless a token is configured; then the API
too, to requests carrying ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import errors
from .client import SOCKET_NAME, AgentAddress
from .core import Agent, JsonLines, PullRequest

log = logging.getLogger("warmstart.agent")

PUBLIC = ("/healthz", "/readyz", "/metrics")
GRACE = 10.0  # seconds in-flight pulls get to stop after SIGTERM


def _error(status: int, exc: Exception | str, kind: str = "ConfigError") -> JSONResponse:
    if isinstance(exc, errors.WarmstartError):
        kind = type(exc).__name__
    return JSONResponse({"error": str(exc), "type": kind}, status_code=status)


def build_app(agent: Agent, *, tcp: bool = False, token: str | None = None) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        body = agent.readiness()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    async def metrics(request: Request) -> Response:
        return Response(agent.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        try:
            return JSONResponse(await loop.run_in_executor(agent.executor, agent.models))
        except errors.WarmstartError as exc:
            return _error(500, exc)

    async def pull(request: Request) -> Response:
        if agent.stop.is_set():
            return _error(503, "the agent is stopping; try again when it is back", "TransferError")
        try:
            req = PullRequest.from_json(json.loads(await request.body() or b"null"))
            agent.check_path(req)
        except ValueError as exc:  # bad JSON or a bad field (ConfigError, UnsafePathError are ValueErrors)
            status = 403 if isinstance(exc, errors.UnsafePathError) else 400
            return _error(status, exc if isinstance(exc, errors.WarmstartError) else f"the body is not JSON: {exc}")
        flight, joined = agent.pull(req)
        queue = flight.subscribe()

        async def lines():
            yield json.dumps({"status": "joined" if joined else "started", "ref": req.ref}) + "\n"
            while (line := await queue.get()) is not None:
                yield json.dumps(line) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def blob(request: Request) -> Response:
        """The bytes of a file a pull through this agent returned (clients without the cache mounted)."""
        path = agent.blobs.get(request.path_params["digest"])
        if path is None or not path.is_file():
            return _error(404, "no such blob: pull its model through this agent first", "NotFoundError")
        return FileResponse(path, media_type="application/octet-stream")

    routes = [Route("/v1/blobs/{digest}", blob), Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
              Route("/v1/models", models), Route("/v1/pull", pull, methods=["POST"])]
    app = Starlette(routes=routes)
    if not tcp:
        return app

    async def guarded(scope, receive, send):  # the TCP listener: health and metrics, the API with the token
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if token is None:
                resp = _error(403, "the TCP listener serves only /healthz, /readyz and /metrics; use the unix "
                                   "socket, or start the agent with --token-file", "GatedRepoError")
                return await resp(scope, receive, send)
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                resp = _error(401, "missing or wrong 'Authorization: Bearer TOKEN'", "GatedRepoError")
                return await resp(scope, receive, send)
        await app(scope, receive, send)

    return guarded  # type: ignore[return-value]


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling (the agent stops both listeners itself)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _unix_socket(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        if AgentAddress(unix=path).answers():
            raise errors.ConfigError(f"another agent already answers on {path}; stop it first")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chmod(path, 0o660)  # the node's pods reach it through the group (fsGroup / supplementalGroups)
    s.listen(512)
    s.setblocking(False)
    return s


def _tcp_socket(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port_n = int(port)
    except ValueError:
        raise errors.ConfigError(f"--listen {listen}: give HOST:PORT, e.g. 0.0.0.0:8470") from None
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port_n))
    except OSError as exc:
        s.close()
        raise errors.ConfigError(f"--listen {listen}: {exc.strerror or exc}") from None
    s.listen(512)
    s.setblocking(False)
    return s


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("warmstart")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


async def _serve(agent: Agent, socket_path: Path, listen: str | None, token: str | None) -> None:
    servers: list[tuple[_Server, socket.socket]] = []
    sock = _unix_socket(socket_path)
    servers.append((_Server(uvicorn.Config(build_app(agent), lifespan="off", log_config=None,
                                           access_log=False, timeout_graceful_shutdown=GRACE)), sock))
    if listen:
        servers.append((_Server(uvicorn.Config(build_app(agent, tcp=True, token=token), lifespan="off",
                                               log_config=None, access_log=False,
                                               timeout_graceful_shutdown=GRACE)), _tcp_socket(listen)))
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        log.info("signal %d: stopping (in-flight pulls stop resumably)", signum)
        agent.stop.set()
        for srv, _ in servers:
            srv.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    log.info("listening on %s%s", socket_path, f" and {listen}" if listen else "")
    watch = loop.create_task(agent.watch_config())
    stats = loop.create_task(agent.stats_loop())
    try:
        await asyncio.gather(*(srv.serve(sockets=[s]) for srv, s in servers))
    finally:
        agent.stop.set()
        for t in (watch, stats):
            t.cancel()
        with contextlib.suppress(OSError):
            socket_path.unlink()


def run(config: Path, *, socket_path: Path | None = None, listen: str | None = None,
        token_file: Path | None = None, poll_interval: float = 5.0) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT; returns the exit status (0)."""
    setup_logging()
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text().strip() or None
        except OSError as exc:
            raise errors.ConfigError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if token is None:
            raise errors.ConfigError(f"--token-file {token_file} is empty")
    agent = Agent(config, poll_interval=poll_interval)
    agent.home.mkdir(parents=True, exist_ok=True)
    path = socket_path or agent.home / SOCKET_NAME
    os.environ["WARMSTART_AGENT"] = "off"  # this process pulls itself; it never delegates to itself
    asyncio.run(_serve(agent, path, listen, token))
    agent.executor.shutdown(wait=False, cancel_futures=True)
    # in-flight pulls were told to stop at their next chunk; give them a moment, then leave (their
    # partial data is resumable whether they finished stopping or not)
    deadline = time.monotonic() + GRACE
    for t in list(agent.executor._threads):  # the pool's threads, to bound the wait
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    log.info("stopped")
    logging.shutdown()
    os._exit(0)  # threads stuck in a network read must not hold the exit

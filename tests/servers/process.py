"""Run the test Hub in its own process, so that a client measured against it does not share a GIL
with the server (the demo and the benchmarks need this; tests use the in-process fixture).

>>> with HubProcess([("sentence-transformers/all-MiniLM-L6-v2", None)], link=(20e6, 320e6, 0.02)) as hub:
...     print(hub.endpoint)                                                   # doctest: +SKIP

As a program: ``python -m tests.servers.process SPEC_JSON`` prints ``{"endpoint": …, "cdn": …}`` on
one line, then serves until its standard input closes. ``SPEC_JSON`` is
``{"repos": [[repo_id, dir_or_null], …], "link": [per_conn_bps, total_bps, latency_s] or null}``;
a ``null`` directory means the real MiniLM repository.

Origins we did not write run the same way (benchmarks: bench/sources.py), each in its own process:

* :class:`MotoProcess`: moto's S3 server; ``{"kind": "moto"}``. Its objects stay in memory and a
  ranged GET slices the object instead of copying all of it first (stock moto reads the whole object
  for every request, so a 1 GB object serves ranged clients at ~20 MB/s on a small machine).
* :class:`ProxyProcess`: :class:`~tests.servers.proxy.ShapingProxy` in front of an upstream;
  ``{"kind": "proxy", "upstream": [host, port], "link": [...] or null}``.

Both print ``{"endpoint": …}`` on one line and then answer JSON commands, one a line, on stdin:
``{"cmd": "reset"}`` (zero the counters), ``{"cmd": "stats"}`` (body bytes, requests, this
process's CPU seconds), ``{"cmd": "link", "link": [per_conn_bps, total_bps, latency_s] or null}``.
They stop at EOF on stdin (so they die with their parent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class HubProcess:
    """A :class:`~tests.servers.hub.HubServer` in a child process; ``endpoint`` once started."""

    def __init__(self, repos: list[tuple[str, str | os.PathLike | None]],
                 link: tuple[float | None, float | None, float] | None = None) -> None:
        self.spec = {"repos": [[r, str(d) if d else None] for r, d in repos], "link": list(link) if link else None}
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.cdn = ""

    def __enter__(self) -> HubProcess:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.process", json.dumps(self.spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.__exit__()
            raise RuntimeError("the test Hub process did not start; run `python -m tests.servers.process` to see why")
        info = json.loads(line)
        self.endpoint, self.cdn = info["endpoint"], info["cdn"]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_child(self.proc)
            self.proc = None


def stop_child(proc: subprocess.Popen) -> None:
    """Stop a server child that serves until its stdin closes; kill it if it lingers."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServerProcess:
    """A server from :func:`_main` in a child process, with the line protocol above."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def __enter__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.process", json.dumps(self.spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True, bufsize=1,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.__exit__()
            raise RuntimeError(f"the {self.spec.get('kind')} process did not start; run "
                               f"`python -m tests.servers.process '{json.dumps(self.spec)}'` to see why")
        self.info = json.loads(line)
        self.endpoint = self.info["endpoint"]
        return self

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1]

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def call(self, cmd: str, **kw) -> dict:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def __exit__(self, *exc) -> None:
        HubProcess.__exit__(self)  # type: ignore[arg-type]


class MotoProcess(ServerProcess):
    """moto's S3 server (objects in memory, ranged GETs without whole-object copies)."""

    def __init__(self) -> None:
        super().__init__({"kind": "moto"})


class ProxyProcess(ServerProcess):
    """A shaping proxy to ``host:port``; ``link`` is ``(per_conn_bps, total_bps, latency_s)``."""

    def __init__(self, host: str, port: int, link: tuple[float | None, float | None, float] | None = None) -> None:
        super().__init__({"kind": "proxy", "upstream": [host, port], "link": list(link) if link else None})


def _serve_commands(server) -> None:
    """Answer the line protocol for an OriginServer-like ``server`` until stdin closes."""
    from tests.servers.shaping import Link

    cpu0 = sum(os.times()[:2])
    for line in sys.stdin:
        msg = json.loads(line) if line.strip() else {}
        cmd = msg.get("cmd")
        counters = getattr(server, "counters", None)
        if cmd == "reset":
            if counters is not None:
                counters.reset()
            cpu0 = sum(os.times()[:2])
            out: dict = {"ok": True}
        elif cmd == "stats":
            out = {"cpu_s": sum(os.times()[:2]) - cpu0}
            if counters is not None:
                with counters._lock:
                    reqs: dict[str, int] = {}
                    for (method, _), n in counters.requests.items():
                        reqs[method] = reqs.get(method, 0) + n
                    out.update(bytes=counters.bytes_total, requests=reqs)
        elif cmd == "link" and hasattr(server, "link"):
            server.link = Link(*msg["link"]) if msg.get("link") else None
            out = {"ok": True, "link": repr(server.link)}
        else:
            out = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(out), flush=True)


def _moto_main() -> None:
    import logging

    from moto.s3 import models
    from moto.server import ThreadedMotoServer

    # moto keeps each object in a SpooledTemporaryFile and reads all of it back for every GET, ranged
    # or not; cache the bytes (immutable) so a ranged GET costs its range, not the object.
    stock = models.FakeKey.value

    def get(key) -> bytes:
        value = key.__dict__.get("_bench_value")
        if value is None:
            value = key.__dict__["_bench_value"] = stock.fget(key)
        return value

    def put(key, value) -> None:
        key.__dict__.pop("_bench_value", None)
        stock.fset(key, value)

    models.FakeKey.value = property(get, put)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(json.dumps({"endpoint": f"http://{host}:{port}"}), flush=True)
    try:
        _serve_commands(server)
    finally:
        server.stop()


def _proxy_main(spec: dict) -> None:
    from tests.servers.proxy import ShapingProxy
    from tests.servers.shaping import Link

    host, port = spec["upstream"]
    link = Link(*spec["link"]) if spec.get("link") else None
    with ShapingProxy(host, int(port), link=link) as proxy:
        print(json.dumps({"endpoint": proxy.endpoint}), flush=True)
        _serve_commands(proxy)


def _main(spec: dict) -> None:
    if spec.get("kind") == "moto":
        return _moto_main()
    if spec.get("kind") == "proxy":
        return _proxy_main(spec)
    from tests.data.minilm import minilm_repo
    from tests.servers.hub import HubRepo, HubServer
    from tests.servers.shaping import Link

    repos = []
    for repo_id, directory in spec["repos"]:
        if directory is None:
            repos.append(minilm_repo(repo_id))
        else:
            files = {str(p.relative_to(directory)): p for p in sorted(Path(directory).rglob("*"))
                     if p.is_file() and p.name != ".digests.json"}  # the generator's own sidecar
            repos.append(HubRepo(repo_id, files))
    link = Link(*spec["link"]) if spec.get("link") else None
    with HubServer(repos=repos, link=link) as hub:
        print(json.dumps({"endpoint": hub.endpoint, "cdn": hub.cdn_endpoint}), flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or dies)


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))

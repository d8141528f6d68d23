"""The test Hub (tests.servers.hub.HubServer) in its own process, for benchmarks.

    python bench/_origin.py --data-dir /tmp/warmstart-bench --size 1G --shards 4 \
        --per-conn 20e6 --total 320e6 --latency 0.02 [--minilm] [--unshaped] [--names-only]

The server must not share a process (and a GIL) with the client it serves, or the numbers measure
the GIL. This process builds (or reuses) the synthetic model under ``--data-dir``, starts the Hub and
prints one JSON line on stdout: ``{"endpoint", "cdn_endpoint", "repos": {repo_id: {"files", "bytes",
"sha256"}}}``, where ``sha256`` maps every file of the repo to the sha256 of the bytes the origin
serves (computed here from the source, LFS or not), so a client's output can be checked after a run.
It then reads JSON commands, one a line, on stdin and answers each with one JSON line:

* ``{"cmd": "reset"}``: zero the counters and start a new sample series;
* ``{"cmd": "stats"}``: bytes served, requests by kind (and each non-CDN request), peak concurrent
  connections, this process's CPU seconds, and a series of
  ``[t, bytes_total, open_connections]`` samples (every 50 ms) since the last reset.

It stops at EOF on stdin (so it dies with its parent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.data.synth import make_llama_repo, parse_size  # noqa: E402
from tests.servers import shaping  # noqa: E402
from tests.servers.hub import HubFile, HubRepo, HubServer, file_sha256  # noqa: E402
from tests.servers.shaping import Link  # noqa: E402

LLAMA_ID = "test-org/llama"
SAMPLE_S = 0.05


class ConnGauge:
    """Open connections right now and at peak, by host (installed on OriginHandler setup/finish)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.accepted = 0

    def install(self) -> None:
        gauge = self
        setup, finish = shaping.OriginHandler.setup, shaping.OriginHandler.finish

        def counted_setup(handler) -> None:
            with gauge.lock:
                gauge.open += 1
                gauge.accepted += 1
                gauge.peak = max(gauge.peak, gauge.open)
            setup(handler)

        def counted_finish(handler) -> None:
            try:
                finish(handler)
            finally:
                with gauge.lock:
                    gauge.open -= 1

        shaping.OriginHandler.setup = counted_setup
        shaping.OriginHandler.finish = counted_finish

    def reset(self) -> None:
        with self.lock:
            self.peak = self.open
            self.accepted = 0


def model_dir(data_dir: Path, size: int, shards: int) -> dict[str, Path]:
    """The synthetic model, written once and reused (a ``.done`` marker guards half-written dirs)."""
    out = data_dir / f"llama-{size}-{shards}"
    done = out / ".done"
    if done.exists():
        return {p.name: p for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}
    files = make_llama_repo(out, size, shards=shards)
    done.write_text("ok")
    return files


def origin_sha256(f: HubFile) -> str:
    """sha256 of the bytes the origin serves for ``f`` (its LFS oid is used only as a cross-check)."""
    digest = file_sha256(f.source) if isinstance(f.source, Path) else hashlib.sha256(f.source).hexdigest()
    if f.sha256 is not None and f.sha256 != digest:
        raise RuntimeError(f"{f.path}: LFS oid {f.sha256} but the source hashes to {digest}")
    return digest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="/tmp/warmstart-bench")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--per-conn", type=float, default=20e6)
    ap.add_argument("--total", type=float, default=320e6)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--unshaped", action="store_true")
    ap.add_argument("--minilm", action="store_true")
    ap.add_argument("--names-only", action="store_true", help="the listing gives file names only (as mirrors)")
    a = ap.parse_args()

    data_dir = Path(a.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    repos = [HubRepo(LLAMA_ID, model_dir(data_dir, parse_size(a.size), a.shards))]
    if a.minilm:
        from tests.data.minilm import minilm_repo

        repos.append(minilm_repo())
    link = None if a.unshaped else Link(a.per_conn or None, a.total or None, a.latency)
    gauge = ConnGauge()
    gauge.install()
    hub = HubServer(repos=repos, link=link, names_only=a.names_only).start()

    series: list[list[float]] = []
    t0 = [time.monotonic()]
    cpu0 = [sum(os.times()[:2])]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_S):
            series.append([round(time.monotonic() - t0[0], 3), hub.counters.bytes_total, gauge.open])

    threading.Thread(target=sample, daemon=True).start()
    info = {
        "endpoint": hub.endpoint,
        "cdn_endpoint": hub.cdn_endpoint,
        "link": repr(link),
        "repos": {r.repo_id: {"files": sorted(r.tree()), "bytes": sum(f.size for f in r.tree().values()),
                              "sha256": {n: origin_sha256(f) for n, f in sorted(r.tree().items())}}
                  for r in repos},
    }
    print(json.dumps(info), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line).get("cmd") if line.strip() else None
            if cmd == "reset":
                hub.counters.reset()
                gauge.reset()
                cpu0[0] = sum(os.times()[:2])
                series.clear()
                t0[0] = time.monotonic()
                print(json.dumps({"ok": True}), flush=True)
            elif cmd == "stats":
                c = hub.counters
                reqs: dict[str, int] = {}
                meta: dict[str, int] = {}
                with c._lock:
                    for (method, path), n in c.requests.items():
                        kind = ("cdn" if path.startswith("/blobs/") else "resolve" if "/resolve/" in path
                                else "api")
                        reqs[f"{method} {kind}"] = reqs.get(f"{method} {kind}", 0) + n
                        if kind != "cdn":
                            meta[f"{method} {path}"] = n
                    total = c.bytes_total
                print(json.dumps({"bytes": total, "requests": reqs, "peak_connections": gauge.peak,
                                  "accepted_connections": gauge.accepted, "cpu_s": sum(os.times()[:2]) - cpu0[0],
                                  "metadata_requests": meta, "series": list(series)}), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)
    finally:
        stop.set()
        hub.stop()


if __name__ == "__main__":
    main()

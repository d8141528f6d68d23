"""How faithfully the test origin shapes its link: the rate one connection gets under a per-connection
cap, the rate four connections share under a total cap, and the latency added to a request.

The download benchmarks' "% of link" figures rest on these caps, so they are measured here rather than
asserted in a timed unit test. Medians of ``--runs`` interleaved repetitions.

    python bench/shaping.py [--runs 5]

Prints a markdown table and writes bench/results/shaping.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.servers.hub import HubRepo, HubServer  # noqa: E402
from tests.servers.shaping import Link  # noqa: E402

REPO = "bench/shaping"


def _ranged_reads(url: str, n_conns: int, nbytes: int) -> float:
    """Seconds for ``n_conns`` connections to each read ``nbytes`` of their own range."""
    u = urlsplit(url)

    def one(i: int) -> None:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        c.request("GET", u.path, headers={"Range": f"bytes={i * nbytes}-{(i + 1) * nbytes - 1}"})
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 206 or len(body) != nbytes:
            raise RuntimeError(f"range read failed: HTTP {r.status}, {len(body)} bytes")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_conns)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def _request_seconds(url: str) -> float:
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    t0 = time.perf_counter()
    c.request("HEAD", u.path)
    c.getresponse().read()
    dt = time.perf_counter() - t0
    c.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data = bytes(range(256)) * (64 * 1024 * 4)  # 64 MiB, served as an LFS file through the CDN host
    with HubServer(repos=[HubRepo(REPO, {"w.safetensors": data, "config.json": b"{}"})]) as hub:
        c = http.client.HTTPConnection(*urlsplit(hub.endpoint).netloc.split(":"), timeout=30)
        c.request("HEAD", urlsplit(hub.url(REPO, "w.safetensors")).path)
        cdn = c.getresponse().getheader("Location")
        c.close()
        cases = {
            "1 connection, 8 MB/s per connection": (Link(per_conn_bps=8e6), 8e6, lambda: 8e6 / _ranged_reads(cdn, 1, 8_000_000)),
            "4 connections, 16 MB/s in total": (Link(per_conn_bps=8e6, total_bps=16e6), 16e6,
                                                lambda: 16e6 / _ranged_reads(cdn, 4, 4_000_000)),
        }
        results: dict[str, list[float]] = {k: [] for k in [*cases, "latency 0.2 s"]}
        for _ in range(args.runs):  # interleaved
            for name, (link, _, measure) in cases.items():
                hub.link = link
                results[name].append(measure())
            hub.link = Link(latency_s=0.2)
            results["latency 0.2 s"].append(_request_seconds(hub.url(REPO, "config.json")))
            hub.link = None
    rows = []
    print("| case | configured | measured (median) | measured / configured |\n|---|---:|---:|---:|")
    for name, values in results.items():
        want = cases[name][1] if name in cases else 0.2
        got = statistics.median(values)
        unit = "MB/s" if name in cases else "s"
        scale = 1e6 if name in cases else 1
        print(f"| {name} | {want / scale:g} {unit} | {got / scale:.2f} {unit} | {got / want:.2f} |")
        rows.append({"case": name, "configured": want, "median": got, "runs": values})
    out = ROOT / "bench" / "results" / "shaping.json"
    out.write_text(json.dumps({"machine": platform.platform(), "runs": args.runs, "results": rows}, indent=1))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

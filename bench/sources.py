"""S3 and OCI pull benchmarks on a shaped loopback link (default 20 MB/s per connection, 320 MB/s in
total, 20 ms latency), peers side by side in one run.

* S3 (moto's server behind a shaping proxy): ``warmstart.pull`` vs ``boto3``'s ``download_file``
  (default TransferConfig) vs ``obstore`` (``get_ranges`` of 16 MiB ranges, all at once);
* OCI (the CNCF registry behind the same proxy): ``warmstart.pull`` vs a plain sequential blob fetch.

    python bench/sources.py --size 256M --runs 3

Prints a markdown table; writes JSON to bench/results/sources.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers.proxy import ShapingProxy  # noqa: E402
from tests.servers.registry import DistributionRegistry, push_modelpack  # noqa: E402
from tests.servers.shaping import Link  # noqa: E402

from warmstart.config import parse_size  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_s3(tmp: Path, data: bytes, link: Link, runs: int) -> dict[str, list[float]]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = ShapingProxy(host, port).start()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": proxy.endpoint}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket="bench")
    client.put_object(Bucket="bench", Key="model/weights.bin", Body=data)
    proxy.link = link
    out: dict[str, list[float]] = {"warmstart": [], "boto3 download_file": [], "obstore get_ranges": []}
    try:
        import obstore
        from obstore.store import S3Store

        store = S3Store("bench", endpoint=proxy.endpoint, access_key_id="bench", secret_access_key="bench",
                        region="us-east-1", client_options={"allow_http": True})
    except ImportError:
        store = None
    import warmstart

    for i in range(runs):
        home = tmp / f"home-{i}"
        os.environ["WARMSTART_HOME"] = str(home)
        out["warmstart"].append(timed(lambda: warmstart.pull("s3://bench/model", quiet=True)))
        shutil.rmtree(home)
        dest = tmp / "boto3.bin"
        out["boto3 download_file"].append(timed(lambda d=dest: client.download_file("bench", "model/weights.bin", str(d))))
        dest.unlink()
        if store is not None:
            step = 16 << 20
            starts = list(range(0, len(data), step))
            ends = [min(s + step, len(data)) for s in starts]

            def ob(starts=starts, ends=ends) -> None:
                parts = obstore.get_ranges(store, "model/weights.bin", starts=starts, ends=ends)
                with open(tmp / "ob.bin", "wb") as fh:
                    for p in parts:
                        fh.write(p)
            out["obstore get_ranges"].append(timed(ob))
    proxy.stop()
    server.stop()
    return {k: v for k, v in out.items() if v}


def bench_oci(tmp: Path, data: bytes, link: Link, runs: int) -> dict[str, list[float]]:
    import warmstart

    out: dict[str, list[float]] = {"warmstart": [], "sequential blob GET": []}
    with DistributionRegistry(tmp / "registry") as reg, ShapingProxy("127.0.0.1", reg.port) as proxy:
        digest_m = push_modelpack(reg.endpoint, "bench/model", "v1", {"weights.bin": data})
        manifest = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{reg.endpoint}/v2/bench/model/manifests/{digest_m}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})).read())
        blob = manifest["layers"][0]["digest"]
        proxy.link = link
        for i in range(runs):
            home = tmp / f"oci-home-{i}"
            os.environ["WARMSTART_HOME"] = str(home)
            out["warmstart"].append(timed(lambda: warmstart.pull(f"oci://{proxy.host}/bench/model:v1", quiet=True)))
            shutil.rmtree(home)

            def seq(blob=blob) -> None:
                with urllib.request.urlopen(f"{proxy.endpoint}/v2/bench/model/blobs/{blob}") as r, \
                        open(tmp / "seq.bin", "wb") as fh:
                    shutil.copyfileobj(r, fh, 1 << 20)
            out["sequential blob GET"].append(timed(seq))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256M")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--per-conn", default="20M")
    ap.add_argument("--total", default="320M")
    ap.add_argument("--latency-ms", type=float, default=20)
    args = ap.parse_args()
    size = parse_size(args.size) or 0
    link = Link(per_conn_bps=parse_size(args.per_conn), total_bps=parse_size(args.total),
                latency_s=args.latency_ms / 1000)
    data = random.Random(0).randbytes(size)
    results = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        results["s3"] = bench_s3(tmp, data, link, args.runs)
        results["oci"] = bench_oci(tmp, data, link, args.runs)
    limit = link.total_bps or 0
    print(f"\n{size / 1e6:.0f} MB, link {link}, {os.cpu_count()} cores, median of {args.runs}\n")
    print("| source | client | median s | MB/s | % of link | vs warmstart |")
    print("|---|---|---|---|---|---|")
    rows = []
    for src, byname in results.items():
        ws = statistics.median(byname["warmstart"])
        for name, times in byname.items():
            med = statistics.median(times)
            mbps = size / med / 1e6
            rows.append({"source": src, "client": name, "median_s": med, "mb_s": mbps, "runs": times})
            print(f"| {src} | {name} | {med:.2f} | {mbps:.0f} | {100 * size / med / limit:.0f}% | "
                  f"{med / ws:.2f}x |")
    out = Path(__file__).parent / "results" / "sources.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"size": size, "link": repr(link), "cpus": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

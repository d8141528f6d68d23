"""S3 and OCI pull benchmarks on a shaped loopback link (default 20 MB/s per connection, 320 MB/s in
total, 20 ms per request), peers side by side in one run.

    python bench/sources.py --size 1G --runs 3
    python bench/sources.py --size 1G --runs 3 --total 160M     # where the origin cannot fill 320 MB/s

Every process is separate, so no two share a GIL: moto's S3 server, the CNCF registry, one shaping
proxy in front of each (tests/servers/process.py), the bench itself, and each contender (a fresh
process per run):

* S3: ``warmstart pull s3://bench/model --quiet --json`` (fresh ``WARMSTART_HOME``) vs ``boto3``'s
  ``download_file`` (default ``TransferConfig``: 10 threads, 8 MiB parts) vs ``obstore`` (one
  ``get_range_async`` per 16 MiB range, all at once, ``pwrite`` to the file; when installed;
  ``get_ranges`` would coalesce adjacent ranges into one sequential GET);
* OCI (a ModelPack artifact with one raw layer): ``warmstart pull oci://…`` vs ``curl`` (one sequential
  GET of the blob) vs ``aria2c -x16 -s16`` on the blob URL (when installed).

After every run, outside its timing, the contender's output is hashed and compared with the sha256 of
the origin's bytes; a contender with wrong bytes is reported as an error, and none of its runs counts.
Contenders are interleaved per repetition (A B C A B C …); medians over ``--runs``; ratios are
``peer time / warmstart time`` (> 1: warmstart is faster). Limits: the link (``bytes / total``), and
the origin as measured in the same run without shaping: one GET, and 16 parallel ranged GETs (curl),
straight to the server and through the (unshaped) proxy.
Markdown to stdout, JSON to ``bench/results/sources-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench._install import compile_package  # noqa: E402
from tests.servers.process import MotoProcess, ProxyProcess  # noqa: E402
from tests.servers.registry import DistributionRegistry, push_modelpack  # noqa: E402

from warmstart.config import parse_size  # noqa: E402

BIN = Path(sys.executable).parent
WARMSTART = str(BIN / "warmstart") if (BIN / "warmstart").exists() else shutil.which("warmstart") or "warmstart"
KEY = "model/weights.bin"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_REGION": "us-east-1"}

BOTO3_SCRIPT = """
import sys, time
t = time.perf_counter()
import boto3
boto3.client("s3").download_file("bench", sys.argv[1], sys.argv[2])
print(time.perf_counter() - t)
"""

OBSTORE_SCRIPT = """
import asyncio, os, sys, time
t = time.perf_counter()
import obstore
from obstore.store import S3Store
store = S3Store("bench", endpoint=os.environ["AWS_ENDPOINT_URL"], access_key_id="bench",
                secret_access_key="bench", region="us-east-1", client_options={"allow_http": True})
size, step = int(sys.argv[3]), 16 << 20
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

async def part(start):
    data = await obstore.get_range_async(store, sys.argv[1], start=start, end=min(start + step, size))
    os.pwrite(fd, data, start)

async def main():
    await asyncio.gather(*(part(s) for s in range(0, size, step)))

asyncio.run(main())
os.close(fd)
print(time.perf_counter() - t)
"""


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "WARMSTART_", "HF_")) and k.lower() not in ("http_proxy", "https_proxy",
                                                                                    "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one contender process: wall seconds (launch to exit), its stdout, its own CPU seconds."""
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if p.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited {p.returncode}: {err.decode(errors='replace')[-600:]}")
    return {"seconds": wall, "stdout": out.decode(errors="replace"), "cpu_s": ru.ru_utime + ru.ru_stime,
            "maxrss_mb": ru.ru_maxrss / 1024}


#: sha256 of the bytes the origin holds (the data file uploaded to moto and pushed to the registry)
EXPECTED: dict[str, str] = {}


def check_file(path: Path, size: int) -> None:
    """After a run (outside its timing): the contender's output must be the origin's bytes, by sha256.
    A mismatch raises, so the contender is reported as an error and none of its runs is counted."""
    if not path.is_file() or path.stat().st_size != size:
        raise RuntimeError(f"{path}: missing or not {size} bytes")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    if h.hexdigest() != EXPECTED["sha256"]:
        raise RuntimeError(f"{path}: wrong bytes (sha256 {h.hexdigest()[:16]}…, origin {EXPECTED['sha256'][:16]}…)")


def write_data(path: Path, size: int) -> None:
    rnd = random.Random(0)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 64 << 20)
            fh.write(rnd.randbytes(n))
            left -= n


# ------------------------------------------------------------------------------------ origin limit


def curl_get(url: str, rng: str | None = None) -> int:
    cmd = ["curl", "-s", "-f", "--noproxy", "*", "-o", "/dev/null", "-w", "%{size_download}", url]
    return int(subprocess.run(cmd + (["-r", rng] if rng else []), capture_output=True, text=True,
                              check=True).stdout)


def origin_limit(url: str, size: int) -> dict[str, float]:
    """Unshaped MB/s of ``url``: one GET, and 16 parallel ranged GETs (size/16 each, then 16 MiB each)."""
    out = {}
    t = time.perf_counter()
    n = curl_get(url)
    out["one GET"] = n / (time.perf_counter() - t) / 1e6
    for label, step in (("16 parallel ranged GETs (size/16)", -(-size // 16)),
                        ("16 parallel ranged GETs (16 MiB)", 16 << 20)):
        rngs = [f"{s}-{min(s + step, size) - 1}" for s in range(0, size, step)]
        t = time.perf_counter()
        with ThreadPoolExecutor(16) as ex:
            n = sum(ex.map(lambda r: curl_get(url, r), rngs))
        out[label] = n / (time.perf_counter() - t) / 1e6
    return out


# ----------------------------------------------------------------------------------------- runner


def race(contenders: dict[str, Any], proxy: ProxyProcess, runs: int, size: int, tmp: Path,
         label: str, origin: Any = None) -> dict[str, Any]:
    """Interleave ``contenders`` per repetition; each gets a fresh destination directory."""
    res: dict[str, Any] = {"runs": {}, "errors": {}}
    for rep in range(runs):
        for name, fn in contenders.items():
            if name in res["errors"]:
                continue
            dest = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
            try:
                proxy.call("reset")
                if origin is not None:
                    origin.call("reset")
                r = fn(dest)
                r["proxy"] = proxy.call("stats")
                if origin is not None:
                    r["origin_cpu_s"] = origin.call("stats")["cpu_s"]
                res["runs"].setdefault(name, []).append(r)
                print(f"# {label} rep {rep + 1} {name}: {r['seconds']:.2f}s {size / r['seconds'] / 1e6:.0f} MB/s, "
                      f"{sum(r['proxy'].get('requests', {}).values())} requests, cpu {r['cpu_s']:.1f}s, "
                      f"proxy cpu {r['proxy']['cpu_s']:.1f}s, origin cpu {r.get('origin_cpu_s', float('nan')):.1f}s", file=sys.stderr, flush=True)
            except Exception as e:  # a peer that does not run here: record why, keep going
                res["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"# {label} {name}: {res['errors'][name]}", file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(dest, ignore_errors=True)
    res["rows"] = {name: {"seconds": statistics.median(r["seconds"] for r in runs),
                          "all_seconds": [round(r["seconds"], 3) for r in runs],
                          "inner_s": statistics.median(r.get("inner_s", r["seconds"]) for r in runs),
                          "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                          "proxy_cpu_s": statistics.median(r["proxy"]["cpu_s"] for r in runs),
                          "origin_cpu_s": statistics.median(r.get("origin_cpu_s", float("nan")) for r in runs),
                          "requests": statistics.median(sum(r["proxy"].get("requests", {}).values()) for r in runs)}
                   for name, runs in res["runs"].items() if name not in res["errors"]}  # a failed peer: no row
    return res


def bench_s3(args, tmp: Path, data: Path, size: int, link: tuple) -> dict[str, Any]:
    import boto3

    with MotoProcess() as moto, ProxyProcess(moto.host.split(":")[0], moto.port, link) as proxy:
        direct = boto3.client("s3", endpoint_url=moto.endpoint, aws_access_key_id="bench",
                              aws_secret_access_key="bench", region_name="us-east-1")
        direct.create_bucket(Bucket="bench")
        t = time.perf_counter()
        with open(data, "rb") as fh:
            direct.put_object(Bucket="bench", Key=KEY, Body=fh.read())
        print(f"# s3: uploaded {size / 1e6:.0f} MB to moto in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        out: dict[str, Any] = {}
        if not args.skip_origin_limit:
            via = boto3.client("s3", endpoint_url=proxy.endpoint, aws_access_key_id="bench",
                               aws_secret_access_key="bench", region_name="us-east-1")
            proxy.call("link", link=None)
            out["origin_limit"] = {
                "moto": origin_limit(direct.generate_presigned_url(
                    "get_object", Params={"Bucket": "bench", "Key": KEY}, ExpiresIn=3600), size),
                "moto via proxy (unshaped)": origin_limit(via.generate_presigned_url(
                    "get_object", Params={"Bucket": "bench", "Key": KEY}, ExpiresIn=3600), size),
            }
            proxy.call("link", link=list(link))
            print(f"# s3 origin limit (MB/s): {json.dumps(out['origin_limit'])}", file=sys.stderr, flush=True)
        env = {**base_env(), **CREDS, "AWS_ENDPOINT_URL": proxy.endpoint}

        def ws(dest: Path) -> dict:
            r = run_child([WARMSTART, "pull", "s3://bench/model", "--quiet", "--json"],
                          {**env, "WARMSTART_HOME": str(dest / "home")})
            snap = json.loads(r["stdout"])
            if snap["bytes_downloaded"] != size:
                raise RuntimeError(f"warmstart downloaded {snap['bytes_downloaded']} bytes")
            check_file(Path(snap["path"]) / "weights.bin", size)
            return {**r, "inner_s": snap["seconds"]}

        def boto(dest: Path) -> dict:
            r = run_child([sys.executable, "-c", BOTO3_SCRIPT, KEY, str(dest / "weights.bin")], env)
            check_file(dest / "weights.bin", size)
            return {**r, "inner_s": float(r["stdout"])}

        def ob(dest: Path) -> dict:
            r = run_child([sys.executable, "-c", OBSTORE_SCRIPT, KEY, str(dest / "weights.bin"), str(size)], env)
            check_file(dest / "weights.bin", size)
            return {**r, "inner_s": float(r["stdout"])}

        contenders = {"warmstart pull (CLI)": ws, "boto3 download_file (default TransferConfig)": boto}
        try:
            import obstore  # noqa: F401

            contenders["obstore get_range_async (16 MiB ranges, all at once)"] = ob
        except ImportError:
            out["skipped"] = "obstore is not installed"
        out.update(race(contenders, proxy, args.runs, size, tmp, "s3", moto))
    return out


def bench_oci(args, tmp: Path, data: Path, size: int, link: tuple) -> dict[str, Any]:
    with DistributionRegistry(tmp / "registry") as reg:
        t = time.perf_counter()
        digest_m = push_modelpack(reg.endpoint, "bench/model", "v1", {"weights.bin": data.read_bytes()})
        print(f"# oci: pushed {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        manifest = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{reg.endpoint}/v2/bench/model/manifests/{digest_m}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})).read())
        blob = manifest["layers"][0]["digest"]
        with ProxyProcess("127.0.0.1", reg.port, link) as proxy:
            out: dict[str, Any] = {}
            path = f"/v2/bench/model/blobs/{blob}"
            if not args.skip_origin_limit:
                proxy.call("link", link=None)
                out["origin_limit"] = {"docker-registry": origin_limit(reg.endpoint + path, size),
                                       "docker-registry via proxy (unshaped)": origin_limit(proxy.endpoint + path, size)}
                proxy.call("link", link=list(link))
                print(f"# oci origin limit (MB/s): {json.dumps(out['origin_limit'])}", file=sys.stderr, flush=True)
            env = base_env()

            def ws(dest: Path) -> dict:
                r = run_child([WARMSTART, "pull", f"oci://{proxy.host}/bench/model:v1", "--quiet", "--json"],
                              {**env, "WARMSTART_HOME": str(dest / "home")})
                snap = json.loads(r["stdout"])
                if snap["bytes_downloaded"] < size:
                    raise RuntimeError(f"warmstart downloaded {snap['bytes_downloaded']} bytes")
                check_file(Path(snap["path"]) / "weights.bin", size)
                return {**r, "inner_s": snap["seconds"]}

            def curl(dest: Path) -> dict:
                r = run_child(["curl", "-s", "-f", "--noproxy", "*", "-L", "-o", str(dest / "blob"),
                               proxy.endpoint + path], env)
                check_file(dest / "blob", size)
                return r

            def aria(dest: Path) -> dict:
                r = run_child(["aria2c", "-x16", "-s16", "-k1M", "-d", str(dest), "-o", "blob",
                               "--file-allocation=none", "--no-conf=true", "--quiet=true", "--all-proxy=",
                               proxy.endpoint + path], env)
                check_file(dest / "blob", size)
                return r

            contenders = {"warmstart pull (CLI)": ws, "curl (one sequential GET)": curl}
            if shutil.which("aria2c"):
                contenders["aria2c -x16 -s16 (no digest check)"] = aria
            out.update(race(contenders, proxy, args.runs, size, tmp, "oci"))
    return out


# ------------------------------------------------------------------------------------------ report


def render(r: dict[str, Any]) -> str:
    m, size, link = r["machine"], r["bytes"], r["link"]
    cap = link["total_Bps"]
    limit_s = size / cap
    lines = [f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['mem_gib']:.0f} GiB, Linux {m['kernel']}, "
             f"Python {m['python']}; boto3 {m['boto3']}, moto {m['moto']}, obstore {m['obstore']}",
             "", f"{size / 1e6:.0f} MB, link {link['per_conn_Bps'] / 1e6:.0f} MB/s per connection, "
             f"{cap / 1e6:.0f} MB/s total, {link['latency_s'] * 1e3:.0f} ms per request; median of {r['runs']}, "
             "a fresh process and destination per run", "",
             "| source | client | median s | MB/s | % of link | x (peer/warmstart) | requests | client CPU s "
             "| proxy CPU s | origin CPU s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for src in ("s3", "oci"):
        res = r.get(src)
        if not res:
            continue
        ws = res["rows"].get("warmstart pull (CLI)", {}).get("seconds")
        for name, row in res["rows"].items():
            t = row["seconds"]
            lines.append(f"| {src} | {name} | {t:.2f} | {size / t / 1e6:.0f} | {100 * limit_s / t:.0f} % | "
                         f"{t / ws if ws else float('nan'):.2f}x | {row['requests']:.0f} | {row['cpu_s']:.1f} | "
                         f"{row['proxy_cpu_s']:.1f} | {row['origin_cpu_s']:.1f} |")
        lines.append(f"| {src} | limit: the link | {limit_s:.2f} | {cap / 1e6:.0f} | 100 % | | | | | |")
        for where, rates in (res.get("origin_limit") or {}).items():
            best = max(rates.values())
            detail = ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
            lines.append(f"| {src} | limit: origin, unshaped: {where} ({detail} MB/s) | {size / best / 1e6:.2f} | "
                         f"{best:.0f} | | | | | | |")
        for name, err in res.get("errors", {}).items():
            lines.append(f"| {src} | {name}: not run: {err[:120]} | | | | | | | | |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), 0)
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu, "mem_gib": mem / 2**30,
            "kernel": platform.release(), "python": platform.python_version(), "boto3": v("boto3"),
            "moto": v("moto"), "obstore": v("obstore")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="object / model bytes (decimal units: 1G = 1e9)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--per-conn", default="20M", help="bytes/s per connection")
    ap.add_argument("--total", default="320M", help="bytes/s for the whole link")
    ap.add_argument("--latency-ms", type=float, default=20)
    ap.add_argument("--only", default="s3,oci", help="s3, oci or both")
    ap.add_argument("--skip-origin-limit", action="store_true")
    args = ap.parse_args()
    compile_package()  # as an installed warmstart runs (bench/_install.py)
    size = parse_size(args.size) or 0
    link = (float(parse_size(args.per_conn) or 0) or None, float(parse_size(args.total) or 0),
            args.latency_ms / 1000)
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "argv": sys.argv[1:], "bytes": size, "runs": args.runs,
                               "link": {"per_conn_Bps": link[0], "total_Bps": link[1], "latency_s": link[2]}}
    with tempfile.TemporaryDirectory(prefix="ws-sources-") as t:
        tmp = Path(t)
        data = tmp / "data.bin"
        write_data(data, size)
        with open(data, "rb") as fh:
            EXPECTED["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
        only = args.only.split(",")
        if "s3" in only:
            results["s3"] = bench_s3(args, tmp, data, size, link)
        if "oci" in only:
            results["oci"] = bench_oci(args, tmp, data, size, link)
    print(render(results))
    out = ROOT / "bench" / "results" / f"sources-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nJSON: {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

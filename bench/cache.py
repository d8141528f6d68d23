"""Cache benchmarks: `warmstart ls` on 1,000 snapshots, a whole `warmstart pull` from the shared tier
(a CLI process with a second home and WARMSTART_SHARED_DIR) vs the directory's sequential read speed, and `verify` speed vs sha256 speed x cores. Medians of several runs; ratios.
Limits and measurements alternate within each run, and both sides are cold where they should be
(fsync + POSIX_FADV_DONTNEED on every file first).

    python bench/cache.py [--blob-mb 256] [--blobs 4] [--runs 5]

Prints a markdown table and writes bench/results/cache-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from warmstart.cache import views  # noqa: E402
from warmstart.cache.index import IndexedFile  # noqa: E402
from warmstart.cache.manage import CacheManager  # noqa: E402
from warmstart.cache.store import cpu_count  # noqa: E402
from warmstart.cache.tiers import verified_copy  # noqa: E402
from warmstart.config import Settings  # noqa: E402

MB = 1 << 20


def _drop_cache(path: Path) -> None:
    for p in [path] if path.is_file() else [q for q in path.rglob("*") if q.is_file()]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd) if os.access(p, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_ls(root: Path, runs: int) -> dict:
    home = root / "ls-home"
    m = CacheManager.open(Settings.from_env({"WARMSTART_HOME": str(home)}))
    for i in range(1000):
        digests = [m.store.put_bytes(f"{i}-{j}".encode() * 64) for j in range(3)]
        shared = m.store.put_bytes(b"shared tokenizer" * 64)
        files = [IndexedFile(f"model-{j}.safetensors", d, 64 * len(f"{i}-{j}"), None) for j, d in enumerate(digests)]
        files.append(IndexedFile("tokenizer.json", shared, 16 * 64, None))
        m.index.add_snapshot(f"hf://bench/model-{i // 4}", f"{i:040x}", files)
    exe = [sys.executable, "-m", "warmstart.cli", "ls"]
    env = dict(os.environ, WARMSTART_HOME=str(home))
    out = {}
    for name, args in (("ls", exe), ("ls --json", [*exe, "--json"])):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    out["python startup"] = time.perf_counter() - t0
    return out


def _read_blob(p: Path, buf: memoryview) -> int:
    """Read a whole file with big preads and sequential read-ahead (the fastest plain reader)."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        off = 0
        while n := os.preadv(fd, [buf], off):
            off += n
        return off
    finally:
        os.close(fd)


def _read_rate(paths: list[Path], threads: int) -> float:
    """Bytes/s reading ``paths`` (cold: the caller drops them from the page cache) with ``threads``
    readers, each taking whole files."""
    bufs = [memoryview(bytearray(16 * MB)) for _ in range(threads)]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda ip: _read_blob(ip[1], bufs[ip[0] % threads]), enumerate(paths)))
    return total / (time.perf_counter() - t0)


def _cold(path: Path) -> None:
    os.sync()  # no writeback of an earlier step running during the next one
    _drop_cache(path)


def bench_shared(root: Path, blob_mb: int, blobs: int, runs: int) -> dict:
    """A whole ``warmstart pull`` from a second home with ``WARMSTART_SHARED_DIR`` set, cold, against the
    limit: reading the same blobs cold from the shared directory, one stream or one thread per CPU
    (whichever is faster).

    A first node pulls a Llama-shaped model (``blobs`` shards of about ``blob_mb`` MiB) from the test Hub
    (bench/_origin.py, its own process, unshaped) into its home and the shared directory. Each run then
    drops the shared blobs from the page cache and times a fresh ``warmstart pull REPO --quiet --json``
    process whose ``WARMSTART_HOME`` is a new, empty home: process start, the metadata request, the copy
    out of the shared tier with its sha256 and fsync, publishing and the view. Afterwards (not timed): the
    origin's byte counter shows what came from the origin instead of the shared tier, and every file of
    the snapshot is hashed and compared with the origin's sha256.

    Diagnostic, not a pull: ``fill_from_shared`` (the internal copy) in-process, with and without fsync,
    to show what the fsync costs; a whole pull has no switch for it."""
    from bench.download import LLAMA_ID, WARMSTART, Origin, base_env, run_child, verify_output

    from warmstart.load import weight_files

    shared = root / "shared"
    data = root / "origin-data"
    size = blob_mb * MB * blobs
    cores = cpu_count()
    res: dict[str, list[float]] = {"seq_1": [], f"seq_{cores}": [], "pull": [], "fetch_fsync": [],
                                   "fetch_nofsync": []}
    checks: list[dict] = []
    with Origin(data, size, blobs, None) as origin:
        repo = origin.info["repos"][LLAMA_ID]
        env = {**base_env(), "HF_ENDPOINT": origin.endpoint, "WARMSTART_SHARED_DIR": str(shared)}
        first = run_child([WARMSTART, "pull", LLAMA_ID, "--quiet", "--json"],
                          {**env, "WARMSTART_HOME": str(root / "node-a")})
        snap_a = json.loads(first["stdout"])
        total = snap_a["bytes"]
        paths = sorted(p for p in (shared / "blobs").rglob("*") if p.is_file())
        shared_bytes = sum(p.stat().st_size for p in paths)
        big = weight_files(Path(snap_a["path"]))
        files = [type("F", (), {"sha256": d, "key": d, "size": s})()
                 for d, s in ((verify_sha(p), p.stat().st_size) for p in big)]
        fetch_total = sum(f.size for f in files)

        def whole_pull(i: int) -> float:
            home = root / f"node-b-{i}"
            _cold(shared)
            origin.call("reset")
            r = run_child([WARMSTART, "pull", LLAMA_ID, "--quiet", "--json"], {**env, "WARMSTART_HOME": str(home)})
            st = origin.call("stats")
            snap = json.loads(r["stdout"])
            v = verify_output(Path(snap["path"]), repo["sha256"])
            checks.append({"seconds": r["seconds"], "origin_bytes": st["bytes"], "origin_requests": st["requests"],
                           "bytes_downloaded": snap.get("bytes_downloaded"), "verified_after_run": v,
                           "maxrss_mb": (r["rusage"] or {}).get("maxrss_mb")})
            shutil.rmtree(home)
            if not v["ok"]:
                raise RuntimeError(f"the pull from the shared tier left wrong bytes: {v['bad']}")
            return total / r["seconds"]

        def fetch(fsync: bool) -> float:
            home = root / "node-c"
            c = CacheManager.open(Settings.from_env({"WARMSTART_HOME": str(home), "WARMSTART_SHARED_DIR": str(shared)}))
            c.index.total_blob_bytes()  # open (create) the index outside the timing
            _cold(shared)
            verified_copy.FSYNC = fsync
            try:
                t0 = time.perf_counter()
                got = c.fill_from_shared(files)
                dt = time.perf_counter() - t0
            finally:
                verified_copy.FSYNC = True
                c.close()
                shutil.rmtree(home)
            assert got == fetch_total
            return fetch_total / dt

        for i in range(runs):  # interleaved, so drift in the machine's load hits all of them alike
            for threads in sorted({1, cores}):
                _cold(shared)
                res[f"seq_{threads}"].append(_read_rate(paths, threads))
            res["pull"].append(whole_pull(i))
            res["fetch_fsync"].append(fetch(True))
            res["fetch_nofsync"].append(fetch(False))
    med = {k: statistics.median(v) for k, v in res.items()}
    limit = max(med["seq_1"], med[f"seq_{cores}"])
    return {"bytes": total, "shared_blob_bytes": shared_bytes, "blobs": len(paths), "cores": cores,
            "seq_read_1_stream_MBps": med["seq_1"] / 1e6, f"seq_read_{cores}_threads_MBps": med[f"seq_{cores}"] / 1e6,
            "shared_seq_read_MBps": limit / 1e6, "shared_pull_MBps": med["pull"] / 1e6,
            "shared_pull_s": statistics.median(c["seconds"] for c in checks), "ratio": med["pull"] / limit,
            "origin_bytes_per_pull": statistics.median(c["origin_bytes"] for c in checks),
            "diagnostic_fetch_fsync_MBps": med["fetch_fsync"] / 1e6,
            "diagnostic_fetch_nofsync_MBps": med["fetch_nofsync"] / 1e6,
            "diagnostic_ratio_fetch_fsync": med["fetch_fsync"] / limit,
            "diagnostic_ratio_fetch_nofsync": med["fetch_nofsync"] / limit,
            "pulls": checks, "runs": {k: [x / 1e6 for x in v] for k, v in res.items()}}


def verify_sha(path: Path) -> str:
    """sha256 of a cached file: the blob's own name (``blobs/sha256/<digest>``) behind the view's link."""
    return Path(os.path.realpath(path)).name


def bench_verify(root: Path, blob_mb: int, blobs: int, runs: int) -> dict:
    """Limit: ``cores`` threads hashing in-memory buffers of the same sizes (parallel sha256 of memory).
    Measured: ``verify`` of the same bytes as blobs, warm (just written) and cold (dropped)."""
    cores = cpu_count()
    blobs = max(blobs, 2 * cores)  # whole blobs per thread: sha256 of one blob cannot be split
    m = CacheManager.open(Settings.from_env({"WARMSTART_HOME": str(root / "verify-home")}))
    entries, datas = [], []
    for i in range(blobs):
        data = os.urandom(blob_mb * MB)
        datas.append(data)
        entries.append(IndexedFile(f"w{i}.safetensors", m.store.put_bytes(data), len(data), None))
    m.index.add_snapshot("hf://bench/verify", "f" * 40, entries)
    views.hub_view(m.layout, "bench/verify", "f" * 40, entries)  # verify also checks the views
    total = sum(len(d) for d in datas)

    def mem_hash(threads: int, which: list[bytes]) -> float:
        def one(data: bytes) -> str:
            h, view = hashlib.sha256(), memoryview(data)
            for off in range(0, len(view), 16 * MB):
                h.update(view[off:off + 16 * MB])
            return h.hexdigest()

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, which))
        return sum(len(d) for d in which) / (time.perf_counter() - t0)

    res: dict[str, list[float]] = {"one_core": [], "limit": [], "warm": [], "cold": []}
    for _ in range(runs):
        res["one_core"].append(mem_hash(1, datas[:1]))
        res["limit"].append(mem_hash(cores, datas))
        rep = m.verify()
        assert rep.ok and rep.bytes == total
        res["warm"].append(rep.bytes / rep.seconds)
        _cold(m.layout.blobs)
        rep = m.verify()
        assert rep.ok
        res["cold"].append(rep.bytes / rep.seconds)
    med = {k: statistics.median(v) for k, v in res.items()}
    return {"blobs": blobs, "blob_bytes": blob_mb * MB, "cores": cores, "sha256_one_core_MBps": med["one_core"] / 1e6,
            "one_core_x_cores_MBps": med["one_core"] * cores / 1e6, "limit_MBps": med["limit"] / 1e6,
            "verify_MBps": med["warm"] / 1e6, "verify_cold_MBps": med["cold"] / 1e6,
            "ratio": med["warm"] / med["limit"], "ratio_cold": med["cold"] / med["limit"],
            "ratio_vs_one_core_x_cores": med["warm"] / (med["one_core"] * cores),
            "runs": {k: [x / 1e6 for x in v] for k, v in res.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blob-mb", type=int, default=256, help="MiB per blob (per shard of the shared-tier model)")
    ap.add_argument("--blobs", type=int, default=4, help="blobs (shards of the shared-tier model)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to build the test caches (default: a temp dir)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ws-bench-cache-", dir=a.dir))
    try:
        ls = bench_ls(root, a.runs)
        sh = bench_shared(root, a.blob_mb, a.blobs, a.runs)
        ve = bench_verify(root, a.blob_mb // 2, a.blobs * 2, a.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "ls_1000_snapshots_s": ls, "shared_tier": sh, "verify": ve,
              "args": vars(a), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print("| benchmark | measured | limit / target | ratio |")
    print("|---|---|---|---|")
    print(f"| `warmstart ls`, 1,000 snapshots (whole CLI process) | {ls['ls'] * 1e3:.0f} ms "
          f"(`--json` {ls['ls --json'] * 1e3:.0f} ms; bare python {ls['python startup'] * 1e3:.0f} ms) "
          f"| < 200 ms | - |")
    c = sh["cores"]
    print(f"| `warmstart pull` from the shared tier, whole process, second home ({sh['bytes'] / 1e6:.0f} MB, "
          f"{sh['blobs']} blobs, cold; {sh['origin_bytes_per_pull'] / 1e6:.1f} MB from the origin) "
          f"| {sh['shared_pull_MBps']:.0f} MB/s ({sh['shared_pull_s']:.2f} s) | {sh['shared_seq_read_MBps']:.0f} MB/s "
          f"cold read of the same blobs (1 stream {sh['seq_read_1_stream_MBps']:.0f}, {c} threads "
          f"{sh[f'seq_read_{c}_threads_MBps']:.0f}) | {sh['ratio']:.2f}x |")
    print(f"| diagnostic: the internal copy (fill_from_shared, in-process), with fsync | "
          f"{sh['diagnostic_fetch_fsync_MBps']:.0f} MB/s | same | {sh['diagnostic_ratio_fetch_fsync']:.2f}x |")
    print(f"| diagnostic: the same without fsync | {sh['diagnostic_fetch_nofsync_MBps']:.0f} MB/s | same | "
          f"{sh['diagnostic_ratio_fetch_nofsync']:.2f}x |")
    print(f"| verify ({ve['blobs']} blobs of {ve['blob_bytes'] / 1e6:.0f} MB, warm page cache) "
          f"| {ve['verify_MBps']:.0f} MB/s | {ve['limit_MBps']:.0f} MB/s ({ve['cores']} threads hashing memory; "
          f"1 core {ve['sha256_one_core_MBps']:.0f} MB/s x {ve['cores']} = {ve['one_core_x_cores_MBps']:.0f}) "
          f"| {ve['ratio']:.2f}x ({ve['ratio_vs_one_core_x_cores']:.2f}x of 1 core x {ve['cores']}) |")
    print(f"| verify, cold page cache | {ve['verify_cold_MBps']:.0f} MB/s | same | {ve['ratio_cold']:.2f}x |")
    out = Path(__file__).parent / "results" / f"cache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()

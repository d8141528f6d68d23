"""Cache benchmarks: `warmstart ls` on 1,000 snapshots, shared-tier pull speed vs the directory's
sequential read speed, and `verify` speed vs sha256 speed x cores. Medians of several runs; ratios.
Limits and measurements alternate within each run, and both sides are cold where they should be
(fsync + POSIX_FADV_DONTNEED on every file first).

    python bench/cache.py [--blob-mb 256] [--blobs 4] [--runs 5]

Prints a markdown table and writes bench/results/cache.json.
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

from warmstart.cache import tiers
from warmstart.cache.index import FileEntry
from warmstart.cache.ops import Manager
from warmstart.cache.store import cpu_count
from warmstart.cache.tiers import shared_fetch_many, shared_publish
from warmstart.config import Settings

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
    m = Manager.open(Settings.from_env({"WARMSTART_HOME": str(home)}))
    for i in range(1000):
        digests = [m.store.put_bytes(f"{i}-{j}".encode() * 64) for j in range(3)]
        shared = m.store.put_bytes(b"shared tokenizer" * 64)
        files = [FileEntry(f"model-{j}.safetensors", d, 64 * len(f"{i}-{j}"), None) for j, d in enumerate(digests)]
        files.append(FileEntry("tokenizer.json", shared, 16 * 64, None))
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
    """Limit: reading the same blobs cold from the shared directory, one stream or one thread per CPU
    (whichever is faster). Measured: shared_fetch_many into an empty cache (index already open, no
    views: what a pull adds to reading), cold, with and without fsync of the copied blobs."""
    shared = root / "shared"
    src_home = Manager.open(Settings.from_env({"WARMSTART_HOME": str(root / "src-home")}))
    files = []
    for i in range(blobs):
        tmp = root / f"blob-{i}"
        with open(tmp, "wb") as f:
            for _ in range(blob_mb):
                f.write(os.urandom(MB))
        d = src_home.store.put_file(tmp)
        tmp.unlink()
        shared_publish(shared, src_home.store.path(d), d)
        files.append(type("F", (), {"sha256": d, "key": d, "size": blob_mb * MB})())
    shutil.rmtree(root / "src-home")
    paths = sorted(p for p in (shared / "blobs").rglob("*") if p.is_file())
    total = blob_mb * MB * blobs
    cores = cpu_count()
    res: dict[str, list[float]] = {"seq_1": [], f"seq_{cores}": [], "pull_fsync": [], "pull_nofsync": []}

    def pull(fsync: bool) -> float:
        home = root / "node"
        c = Manager.open(Settings.from_env({"WARMSTART_HOME": str(home)}))
        c.index.total_blob_bytes()  # open (create) the index outside the timing
        _cold(shared)
        tiers.FSYNC = fsync
        try:
            t0 = time.perf_counter()
            got = shared_fetch_many(c, shared, files)
            dt = time.perf_counter() - t0
        finally:
            tiers.FSYNC = True
            c.close()
            shutil.rmtree(home)
        assert got == total
        return total / dt

    for _ in range(runs):  # interleaved, so drift in the machine's load hits all of them alike
        for threads in sorted({1, cores}):
            _cold(shared)
            res[f"seq_{threads}"].append(_read_rate(paths, threads))
        res["pull_fsync"].append(pull(True))
        res["pull_nofsync"].append(pull(False))
    med = {k: statistics.median(v) for k, v in res.items()}
    limit = max(med["seq_1"], med[f"seq_{cores}"])
    return {"bytes": total, "blobs": blobs, "cores": cores,
            "seq_read_1_stream_MBps": med["seq_1"] / 1e6, f"seq_read_{cores}_threads_MBps": med[f"seq_{cores}"] / 1e6,
            "shared_seq_read_MBps": limit / 1e6, "shared_pull_MBps": med["pull_fsync"] / 1e6,
            "shared_pull_nofsync_MBps": med["pull_nofsync"] / 1e6, "ratio": med["pull_fsync"] / limit,
            "ratio_nofsync": med["pull_nofsync"] / limit, "runs": {k: [x / 1e6 for x in v] for k, v in res.items()}}


def bench_verify(root: Path, blob_mb: int, blobs: int, runs: int) -> dict:
    """Limit: ``cores`` threads hashing in-memory buffers of the same sizes (parallel sha256 of memory).
    Measured: ``verify`` of the same bytes as blobs, warm (just written) and cold (dropped)."""
    cores = cpu_count()
    blobs = max(blobs, 2 * cores)  # whole blobs per thread: sha256 of one blob cannot be split
    m = Manager.open(Settings.from_env({"WARMSTART_HOME": str(root / "verify-home")}))
    entries, datas = [], []
    for i in range(blobs):
        data = os.urandom(blob_mb * MB)
        datas.append(data)
        entries.append(FileEntry(f"w{i}.safetensors", m.store.put_bytes(data), len(data), None))
    m.index.add_snapshot("hf://bench/verify", "f" * 40, entries)
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
    ap.add_argument("--blob-mb", type=int, default=256)
    ap.add_argument("--blobs", type=int, default=4)
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
    print(f"| pull from shared tier ({sh['bytes'] / 1e6:.0f} MB in {sh['blobs']} blobs, cold, fsync) "
          f"| {sh['shared_pull_MBps']:.0f} MB/s | {sh['shared_seq_read_MBps']:.0f} MB/s cold read of the same blobs "
          f"(1 stream {sh['seq_read_1_stream_MBps']:.0f}, {c} threads {sh[f'seq_read_{c}_threads_MBps']:.0f}) "
          f"| {sh['ratio']:.2f}x |")
    print(f"| same, without fsync | {sh['shared_pull_nofsync_MBps']:.0f} MB/s | same | {sh['ratio_nofsync']:.2f}x |")
    print(f"| verify ({ve['blobs']} blobs of {ve['blob_bytes'] / 1e6:.0f} MB, warm page cache) "
          f"| {ve['verify_MBps']:.0f} MB/s | {ve['limit_MBps']:.0f} MB/s ({ve['cores']} threads hashing memory; "
          f"1 core {ve['sha256_one_core_MBps']:.0f} MB/s x {ve['cores']} = {ve['one_core_x_cores_MBps']:.0f}) "
          f"| {ve['ratio']:.2f}x ({ve['ratio_vs_one_core_x_cores']:.2f}x of 1 core x {ve['cores']}) |")
    print(f"| verify, cold page cache | {ve['verify_cold_MBps']:.0f} MB/s | same | {ve['ratio_cold']:.2f}x |")
    out = Path(__file__).parent / "results" / "cache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()

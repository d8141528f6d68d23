"""Cache benchmarks: `warmstart ls` on 1,000 snapshots, shared-tier pull speed vs the directory's
sequential read speed, and `verify` speed vs sha256 speed x cores. Medians of several runs; ratios.

    python bench/cache.py [--blob-mb 256] [--blobs 4] [--runs 5]

Prints a markdown table and writes bench/results/cache.json.
"""

from __future__ import annotations

import argparse
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

from warmstart.cache.index import FileEntry
from warmstart.cache.ops import Manager
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


def _seq_read(paths: list[Path]) -> float:
    buf = bytearray(8 * MB)
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total / (time.perf_counter() - t0)


def bench_shared(root: Path, blob_mb: int, blobs: int, runs: int) -> dict:
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
    seq, pulls = [], []
    for r in range(runs):
        _drop_cache(shared)
        seq.append(_seq_read(paths))
        _drop_cache(shared)
        home = root / f"node-{r}"
        c = Manager.open(Settings.from_env({"WARMSTART_HOME": str(home)}))
        t0 = time.perf_counter()
        got = shared_fetch_many(c, shared, files)
        pulls.append(got / (time.perf_counter() - t0))
        assert got == blob_mb * MB * blobs
        shutil.rmtree(home)
    s, p = statistics.median(seq), statistics.median(pulls)
    return {"shared_seq_read_MBps": s / 1e6, "shared_pull_MBps": p / 1e6, "ratio": p / s,
            "bytes": blob_mb * MB * blobs}


def bench_verify(root: Path, blob_mb: int, blobs: int, runs: int) -> dict:
    m = Manager.open(Settings.from_env({"WARMSTART_HOME": str(root / "verify-home")}))
    entries = []
    for i in range(blobs):
        data = os.urandom(blob_mb * MB)
        entries.append(FileEntry(f"w{i}.safetensors", m.store.put_bytes(data), len(data), None))
    m.index.add_snapshot("hf://bench/verify", "f" * 40, entries)
    data = os.urandom(256 * MB)
    one = []
    for _ in range(runs):
        t0 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        one.append(len(data) / (time.perf_counter() - t0))
    cores = os.cpu_count() or 1
    limit = statistics.median(one) * cores
    rates = []
    for _ in range(runs):
        rep = m.verify()
        assert rep.ok
        rates.append(rep.bytes / rep.seconds)
    v = statistics.median(rates)
    return {"sha256_one_core_MBps": statistics.median(one) / 1e6, "cores": cores, "limit_MBps": limit / 1e6,
            "verify_MBps": v / 1e6, "ratio": v / limit}


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
    print(f"| pull from shared tier ({sh['bytes'] / 1e6:.0f} MB, cold) | {sh['shared_pull_MBps']:.0f} MB/s "
          f"| {sh['shared_seq_read_MBps']:.0f} MB/s sequential read | {sh['ratio']:.2f}x |")
    print(f"| verify ({a.blobs * 2} blobs) | {ve['verify_MBps']:.0f} MB/s | {ve['limit_MBps']:.0f} MB/s "
          f"(sha256 {ve['sha256_one_core_MBps']:.0f} MB/s x {ve['cores']} cores) | {ve['ratio']:.2f}x |")
    out = Path(__file__).parent / "results" / "cache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()

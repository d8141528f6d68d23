"""The main job, end to end: a local Hub-compatible origin on loopback with a shaped link serves the
real sentence-transformers/all-MiniLM-L6-v2 repository and a ~1 GB Llama-shaped sharded model;
warmstart pulls each cold, again warm, offline, then loads them, and prints the timings.

Run through ``scripts/demo`` (which sets up .venv first). Options: ``--size 1G``, ``--data-dir``,
``--per-conn 20e6 --total 320e6 --latency 0.02`` (bytes/s, seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.data.synth import make_llama, parse_size  # noqa: E402
from tests.servers.process import HubProcess  # noqa: E402

import warmstart  # noqa: E402
from warmstart.config import Settings  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LLAMA = "demo-org/llama-1g"


def _synthetic(data_dir: Path, size: int) -> Path:
    out = data_dir / f"llama-{size}"
    if not (out / "model.safetensors.index.json").exists() and not (out / "model.safetensors").exists():
        print(f"generating a {size / 1e9:.1f} GB Llama-shaped model in {out} (once) …", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        make_llama(out, size, shards=4, seed=0)
    return out


def _timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def _cli_warm(ref: str, env: dict[str, str]) -> float:
    exe = Path(sys.executable).with_name("warmstart")
    t = time.perf_counter()
    subprocess.run([str(exe), "pull", ref, "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _load(snap) -> tuple[int, int, float]:
    import torch  # noqa: F401  (imported once, before timing: torch's own import is not a load)

    tensors, dt = _timed(lambda: warmstart.load(snap.path, populate=True))
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors.values()), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="synthetic model size (default 1G)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("WARMSTART_DEMO_DIR", "/tmp/warmstart-demo")))
    ap.add_argument("--per-conn", type=float, default=20e6, help="bytes/s per connection (default 20e6)")
    ap.add_argument("--total", type=float, default=320e6, help="bytes/s in total (default 320e6)")
    ap.add_argument("--latency", type=float, default=0.02, help="seconds per request (default 0.02)")
    args = ap.parse_args()

    args.data_dir.mkdir(parents=True, exist_ok=True)
    llama_dir = _synthetic(args.data_dir, parse_size(args.size))
    home = args.data_dir / "home"
    shutil.rmtree(home, ignore_errors=True)  # a cold start every time the demo runs
    link = (args.per_conn, args.total, args.latency)
    print(f"origin: loopback Hub + CDN, {args.per_conn / 1e6:.0f} MB/s per connection, "
          f"{args.total / 1e6:.0f} MB/s in total, {args.latency * 1e3:.0f} ms latency", flush=True)
    rows = []
    with HubProcess([(MINILM, None), (LLAMA, llama_dir)], link=link) as hub:
        env = dict(os.environ, WARMSTART_HOME=str(home), HF_ENDPOINT=hub.endpoint)
        settings = Settings.from_env(env)
        offline = dataclasses.replace(settings, offline=True)
        for ref in (MINILM, LLAMA):
            cold, t_cold = _timed(lambda r=ref: warmstart.pull(r, settings=settings, quiet=True))
            _, t_warm = _timed(lambda r=ref: warmstart.pull(r, settings=settings, quiet=True))
            _, t_off = _timed(lambda r=ref: warmstart.pull(r, settings=offline, quiet=True))
            t_cli = _cli_warm(ref, env)
            n, nbytes, t_load = _load(cold)
            rows.append((ref, len(cold.files), cold.size, t_cold, t_warm, t_off, t_cli, n, t_load))
    print()
    print("| model | files | size | cold pull | rate | warm pull | warm offline | warm CLI process | tensors | load (CPU, all pages resident) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ref, nfiles, size, t_cold, t_warm, t_off, t_cli, n, t_load in rows:
        print(f"| {ref} | {nfiles} | {size / 1e6:,.0f} MB | {t_cold:.2f} s | {size / t_cold / 1e6:,.0f} MB/s "
              f"| {t_warm * 1e3:.1f} ms | {t_off * 1e3:.1f} ms | {t_cli * 1e3:.0f} ms | {n} | {t_load * 1e3:.0f} ms |")
    print(f"\nlink limit: {args.total / 1e6:.0f} MB/s. Warm pulls moved no bytes; offline ones made no request.")
    print(f"\nThe cache is in {home} (blobs/ holds each file once; hub/ is a Hugging Face cache layout).")
    print("Point transformers or vLLM at it, with no network:")
    print(f"  HF_HUB_CACHE={home / 'hub'} HF_HUB_OFFLINE=1 python -c \"from transformers import AutoModel; "
          f"AutoModel.from_pretrained('{MINILM}')\"")
    print(f"  WARMSTART_HOME={home} .venv/bin/warmstart ls")


if __name__ == "__main__":
    main()

"""Load benchmark: warmstart vs its peers, warm and cold page cache, with the hardware limits.

    python bench/load.py --size 2.5G --reps 3            # CPU, warm + cold
    python bench/load.py --size 2.5G --reps 3 --gpu      # the same into cuda:0 (needs CUDA)

A load counts as finished when every byte is resident: after each contender returns, the same
page touch (one byte per 4 KiB page, through numpy, over each tensor's memory) runs for everyone.
Cold runs evict the files first with ``posix_fadvise(DONTNEED)``. Repetitions are interleaved (rep 1
of every contender, warm then cold, then rep 2 ...); every time is kept in the JSON. Medians over ``--reps``;
ratios are ``peer time / warmstart time`` (>1 means warmstart is faster). Markdown to stdout,
JSON to ``bench/results/load-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from warmstart.load import SafeOpen, load_paths  # noqa: E402
from warmstart.load.cpu import populate_mapping  # noqa: E402

PAGE = 4096


def parse_size(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mult[s[-1].upper()]) if s[-1].upper() in mult else int(s)


def make_model(out: Path, total: int) -> list[Path]:
    try:
        from tests.data.synth import make_llama

        return list(make_llama(out, total, shards=1, dtype="bfloat16", seed=0))
    except ImportError:  # fallback: Llama-ish shapes, seeded random bf16
        from safetensors.torch import save_file

        g, state, used, i = torch.Generator().manual_seed(0), {}, 0, 0
        while used < total:
            n = min(4096 * 4096, (total - used) // 2)
            state[f"model.layers.{i}.mlp.weight"] = torch.randn(n, generator=g).to(torch.bfloat16)
            used, i = used + 2 * n, i + 1
        path = out / "model.safetensors"
        save_file(state, str(path))
        return [path]


def touch(state: dict[str, Any]) -> int:
    """Make every byte resident: one byte per page of every tensor (the same for every contender)."""
    acc = 0
    for t in state.values():
        if t.numel() == 0:
            continue
        b = t.detach().reshape(-1).view(torch.uint8)
        if b.is_cuda:
            acc += int(b[::PAGE].sum())
        else:
            acc += int(b.numpy()[::PAGE].max())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return acc


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def seq_read(paths: list[Path]) -> float:
    evict(paths)
    buf = memoryview(bytearray(16 << 20))
    t = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        off = 0
        while (n := os.preadv(fd, [buf], off)) > 0:
            off += n
        os.close(fd)
    return time.perf_counter() - t


def memcpy_bw(nbytes: int = 1 << 30) -> float:
    src = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = time.perf_counter()
    np.copyto(dst, src)
    return nbytes / (time.perf_counter() - t)


def h2d_bw(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return nbytes / (time.perf_counter() - t)


def contenders(paths: list[Path], pt: Path, device: str) -> dict[str, Callable[[], dict[str, Any]]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    def to(state: dict[str, Any]) -> dict[str, Any]:
        return state if device == "cpu" else {k: v.to(device) for k, v in state.items()}

    def st_open() -> dict[str, Any]:
        out = {}
        for p in paths:
            with safe_open(str(p), "pt", device=device) as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
        return out

    def runai() -> dict[str, Any]:
        from runai_model_streamer import SafetensorsStreamer

        out = {}
        with SafetensorsStreamer() as s:
            s.stream_files([str(p) for p in paths])
            for name, t in s.get_tensors():  # views of a reused buffer: keep a copy
                out[name] = t.to(device) if device != "cpu" else t.clone()
        return out

    def fastst() -> dict[str, Any]:
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup

        loader = SafeTensorsFileLoader(SingleGroup(), device, nogds=True)
        loader.add_filenames({0: [str(p) for p in paths]})
        fb = loader.copy_files_to_device()
        out = {k: fb.get_tensor(k).clone() for k in fb.key_to_rank_lidx}
        fb.close()
        loader.close()
        return out

    ws_kw: dict[str, Any] = {"populate": True} if device == "cpu" else {"device": device}
    c: dict[str, Callable[[], dict[str, Any]]] = {
        "warmstart": lambda: load_paths(paths, **ws_kw),
        "warmstart stream": lambda: load_paths(paths, device=device, stream=True),
        "safetensors.load_file": lambda: {k: v for p in paths for k, v in load_file(str(p), device=device).items()},
        "safe_open get_tensor": st_open,
        "torch.load": lambda: to(torch.load(pt, weights_only=True)),
        "torch.load mmap": lambda: to(torch.load(pt, mmap=True, weights_only=True)),
        "runai-model-streamer": runai,
        "fastsafetensors": fastst,
    }
    if device == "cpu":
        c["warmstart SafeOpen"] = lambda: _safeopen_all(paths)
    return c


def _safeopen_all(paths: list[Path]) -> dict[str, Any]:
    out = {}
    for p in paths:
        with SafeOpen(p) as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return out


def time_one(fn: Callable[[], dict[str, Any]], files: list[Path], cold: bool) -> float:
    gc.collect()
    evict(files) if cold else warm(files)
    t = time.perf_counter()
    state = fn()
    touch(state)
    dt = time.perf_counter() - t
    del state
    gc.collect()
    return dt


def populate_methods(paths: list[Path], reps: int) -> dict[str, dict[str, float]]:
    import mmap

    methods = ("madvise", "touch", "willneed", "willneed+madvise")
    ts: dict[tuple[str, bool], list[float]] = {(m, c): [] for m in methods for c in (False, True)}
    for _ in range(reps):  # interleaved, as the contenders
        for cold in (False, True):
            for method in methods:
                evict(paths) if cold else warm(paths)
                t = time.perf_counter()
                for p in paths:
                    with open(p, "rb") as f:
                        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                    view = np.frombuffer(mm, np.uint8)
                    populate_mapping(view, method)
                    del view, mm  # unmapped, so the next cold run can evict the pages
                ts[(method, cold)].append(time.perf_counter() - t)
    out: dict[str, dict[str, float]] = {}
    for (method, cold), v in ts.items():
        out.setdefault(method, {})["cold" if cold else "warm"] = statistics.median(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2.5G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--dir", default=None, help="where to write the synthetic model (default: a temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated contender names")
    args = ap.parse_args()
    device = "cuda:0" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu needs CUDA")
    work = Path(args.dir or tempfile.mkdtemp(prefix="warmstart-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = sorted(work.glob("*.safetensors")) or make_model(work, parse_size(args.size))
    paths = [p for p in paths if p.suffix == ".safetensors"]
    size = sum(p.stat().st_size for p in paths)
    pt = work / "model.pt"
    if not pt.exists():
        torch.save(load_paths(paths), pt)
    files_for = {"torch.load": [pt], "torch.load mmap": [pt]}
    results: dict[str, Any] = {"size": size, "device": device, "reps": args.reps, "machine": platform.platform(),
                               "cpus": os.cpu_count(), "rows": {}, "errors": {}}
    limits = {"memcpy (np.copyto)": size / memcpy_bw()}
    if args.gpu:
        limits["pinned H2D copy"] = size / h2d_bw()
    results["limits_s"] = limits
    cands = contenders(paths, pt, device)
    if args.only:
        cands = {k: v for k, v in cands.items() if k in args.only.split(",") or k == "warmstart"}
    # interleaved: rep 1 of every contender (warm, then cold), then rep 2 ..., so drift in the machine's
    # load hits every contender alike; a contender that fails once is dropped and reported
    times: dict[str, dict[str, list[float]]] = {name: {"warm": [], "cold": []} for name in cands}
    seq: list[float] = []
    for rep in range(args.reps):
        seq.append(seq_read(paths))  # the cold limit, measured in the same rotation
        for mode in ("warm", "cold"):
            for name, fn in cands.items():
                if name in results["errors"]:
                    continue
                try:
                    times[name][mode].append(time_one(fn, files_for.get(name, paths), mode == "cold"))
                except Exception as e:  # a peer that does not install or run here: record why
                    results["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                print(f"# rep {rep + 1} {mode} {name}: "
                      f"{times[name][mode][-1] if name not in results['errors'] else results['errors'][name]}",
                      file=sys.stderr, flush=True)
    limits["sequential read (cold, 16 MiB preads)"] = statistics.median(seq)
    results["times"] = {name: t for name, t in times.items() if name not in results["errors"]}
    results["rows"] = {name: {mode: statistics.median(ts) for mode, ts in t.items()}
                       for name, t in results["times"].items()}
    results["limit_times"] = {"sequential read (cold, 16 MiB preads)": seq}
    if device == "cpu":
        results["populate"] = populate_methods(paths, args.reps)
    print(render(results))
    out = ROOT / "bench" / "results" / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {out.relative_to(ROOT)}", file=sys.stderr)


def render(r: dict[str, Any]) -> str:
    gb = r["size"] / 1e9
    ws = r["rows"].get("warmstart", {})
    lines = [f"Load of {gb:.2f} GB into {r['device']} ({r['machine']}, {r['cpus']} CPUs), median of {r['reps']}",
             "", "| contender | warm s | warm GB/s | warm x (peer/ws) | cold s | cold GB/s | cold x (peer/ws) |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def cells(row: dict[str, float], mode: str) -> str:
        t = row.get(mode)
        if t is None:
            return "– | – | –"
        ratio = f"{t / ws[mode]:.2f}" if mode in ws else "–"
        return f"{t:.3f} | {gb / t:.2f} | {ratio}"

    for name, row in r["rows"].items():
        lines.append(f"| {name} | {cells(row, 'warm')} | {cells(row, 'cold')} |")
    for name, t in r["limits_s"].items():
        cold = "cold" in name  # the file's cold read is a limit for the cold columns, the rest for the warm ones
        cells = ["", "", "", f"{t:.3f}", f"{gb / t:.2f}", ""] if cold else [f"{t:.3f}", f"{gb / t:.2f}", "", "", "", ""]
        lines.append(f"| limit: {name} | " + " | ".join(cells) + " |")
    for name, err in r["errors"].items():
        lines.append(f"| {name} | not run: {err} | | | | | |")
    if "populate" in r:
        lines += ["", "| populate method | warm s | cold s |", "|---|---:|---:|"]
        lines += [f"| {m} | {v['warm']:.3f} | {v['cold']:.3f} |" for m, v in r["populate"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Conversion benchmark: loading a converted model vs a plain one of the same size, the bytes one rank
of a TP split reads, and a fresh process compiling a small model with and without the compile cache.

    python bench/convert.py --size 1G --reps 5 --compile-reps 2
    python bench/convert.py --skip-load --skip-compile --startup-reps 3   # only the four-way startup table

The startup section times a fresh process's first output of the same 2-layer encoder four ways:
torch.compile cold, torch.compile with warmstart.compile_cache warm, warmstart.aot_compile cold
(export + AOTInductor + package) and warm (load the package). Every process gets an empty
``TORCHINDUCTOR_CACHE_DIR``; warm ones read entries an earlier process stored.

Loads are warm (page cache), zero-copy, and finished when every page is resident (``populate=True``);
plain and converted runs alternate, medians over ``--reps``. Compile runs are fresh processes, each with
its own empty ``TORCHINDUCTOR_CACHE_DIR``; "with cache" processes load artifacts saved by an earlier one.
Markdown to stdout, JSON to ``bench/results/convert-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.data.synth import make_llama  # noqa: E402

from warmstart.config import parse_size  # noqa: E402

TP = {"world_size": 2, "steps": [
    {"split": {"match": r"q_proj|k_proj|v_proj|gate_proj|up_proj", "style": "column"}},
    {"split": {"match": r"o_proj|down_proj", "style": "row"}},
    {"split": {"match": r"embed_tokens|lm_head", "dim": 1}},
]}

COMPILE = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import torch, warmstart
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    layers = [torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True) for _ in range(2)]
    m = torch.nn.Sequential(*layers).eval()
    x = torch.randn(2, 16, 64)
    t1 = time.perf_counter()
    if sys.argv[1] == "cache":
        with warmstart.compile_cache("bench-encoder") as c:
            with torch.no_grad():
                torch.compile(m)(x)
        hit = c.hit
    else:
        with torch.no_grad():
            torch.compile(m)(x)
        hit = False
    t2 = time.perf_counter()
    print(json.dumps({"compile_s": t2 - t1, "process_s": t2 - t0, "hit": hit, "inductor": dict(counters["inductor"])}))
""")


STARTUP = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import torch, warmstart
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    layers = [torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True) for _ in range(2)]
    m = torch.nn.Sequential(*layers).eval()
    x = torch.randn(2, 16, 64)
    t1 = time.perf_counter()
    mode, store = sys.argv[1], sys.argv[2]
    hit = False
    with torch.no_grad():
        if mode == "compile-cold":  # plain torch.compile: nothing loaded, nothing saved
            y = torch.compile(m)(x)
        elif mode.startswith("compile"):
            with warmstart.compile_cache("bench-encoder", url=store) as c:
                y = torch.compile(m)(x)
            hit = c.hit
        else:
            f = warmstart.aot_compile(m, (x,), key="bench-encoder", url=store)
            y = f(x)
            hit = f.hit
        t2 = time.perf_counter()
        ok = torch.allclose(y, m(x), atol=1e-4)
    from warmstart.conversion.aot import counters as aot_counters
    print(json.dumps({"first_output_s": t2 - t1, "setup_s": t1 - t0, "process_s": t2 - t0, "hit": hit,
                      "allclose": ok, "inductor": dict(counters["inductor"]), "aot": dict(aot_counters)}))
""")

MODES = {"compile-cold": "torch.compile, empty caches", "compile-warm": "torch.compile + compile_cache hit",
         "aot-cold": "aot_compile miss (export + AOTInductor + package)", "aot-warm": "aot_compile hit (load package)"}


def bench_startup(work: Path, reps: int) -> dict:
    env = {**os.environ, "WARMSTART_HOME": str(work / "home"), "PYTHONPATH": str(ROOT / "src")}
    env.pop("WARMSTART_COMPILE_CACHE", None)
    n = 0

    def run(mode: str, store: Path) -> dict:
        nonlocal n
        n += 1
        e = {**env, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-startup-{n}")}
        out = subprocess.run([sys.executable, "-c", STARTUP, mode, str(store)], env=e, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    warm = {"compile": work / "startup-compile-warm", "aot": work / "startup-aot-warm"}
    seeds = {"compile": run("compile-seed", warm["compile"]), "aot": run("aot-cold", warm["aot"])}
    runs: dict[str, list] = {m: [] for m in MODES}
    for i in range(reps):  # interleaved, so drift hits every mode alike
        for mode in MODES:
            kind, temp = mode.split("-")
            runs[mode].append(run(mode, warm[kind] if temp == "warm" else work / f"startup-{mode}-{i}"))
    res: dict = {"seed_runs": seeds, "runs": runs}
    for mode, rs in runs.items():
        res[mode] = {"first_output_s": statistics.median(r["first_output_s"] for r in rs),
                     "process_s": statistics.median(r["process_s"] for r in rs),
                     "setup_s": statistics.median(r["setup_s"] for r in rs),
                     "hits": sum(r["hit"] for r in rs), "allclose": all(r["allclose"] for r in rs)}
    res["aot_package_bytes"] = sum(p.stat().st_size for p in warm["aot"].iterdir())
    return res


def _evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(os.path.realpath(p), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _load_time(paths: list[Path], cold: bool = False) -> float:
    from warmstart.load import load_paths

    if cold:
        _evict(paths)
    t0 = time.perf_counter()
    t = load_paths(paths, populate=True)
    dt = time.perf_counter() - t0
    del t
    return dt


def bench_load(work: Path, size: int, reps: int) -> dict:
    import warmstart

    plain = work / "plain"
    make_llama(plain, size, shards=max(1, size // (2 << 30) + 1), seed=1)
    from warmstart.load import weight_files

    # a conversion that keeps the size: transpose the MLP (a PyTorch -> JAX layout change) and rename
    t0 = time.perf_counter()
    conv = warmstart.convert(plain, {"steps": [{"transpose": {"match": r"mlp\..*weight$"}},
                                               {"rename": {"pattern": r"^model\.", "replace": ""}}]})
    convert_s = time.perf_counter() - t0
    pp, cp = weight_files(plain), conv.weight_paths()
    os.sync()  # both files clean, then read back from disk, so both sit in the page cache the same way
    a, b, ca, cb = [], [], [], []
    for _ in range(reps):
        ca.append(_load_time(pp, cold=True))
        cb.append(_load_time(cp, cold=True))
    for _ in range(reps):
        a.append(_load_time(pp))
        b.append(_load_time(cp))
    tp = warmstart.convert(plain, TP)
    total = sum(p.stat().st_size for p in pp)
    rank_bytes = [sum(p.stat().st_size for p in tp.weight_paths(r)) for r in range(2)]
    return {"model_bytes": total, "convert_s": convert_s, "plain_load_s": statistics.median(a),
            "converted_load_s": statistics.median(b), "ratio": statistics.median(b) / statistics.median(a),
            "plain_cold_s": statistics.median(ca), "converted_cold_s": statistics.median(cb),
            "cold_ratio": statistics.median(cb) / statistics.median(ca),
            "tp_rank_bytes": rank_bytes, "tp_rank_fraction_of_1_over_n": [rb / (total / 2) for rb in rank_bytes]}


def bench_compile(work: Path, reps: int) -> dict:
    env = {**os.environ, "WARMSTART_HOME": str(work / "home"), "PYTHONPATH": str(ROOT / "src")}
    env.pop("WARMSTART_COMPILE_CACHE", None)

    def run(mode: str, i: int) -> dict:
        e = {**env, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{mode}-{i}")}
        out = subprocess.run([sys.executable, "-c", COMPILE, mode], env=e, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    seed = run("cache", -1)  # fills the compile cache
    no = [run("none", i) for i in range(reps)]
    yes = [run("cache", i) for i in range(reps)]
    med = {k: statistics.median(r["compile_s"] for r in rs) for k, rs in (("without", no), ("with", yes))}
    return {"seed_run": seed, "without_cache_compile_s": med["without"], "with_cache_compile_s": med["with"],
            "speedup": med["without"] / med["with"], "hits": [r["inductor"].get("fxgraph_cache_hit", 0) for r in yes],
            "misses_with_cache": [r["inductor"].get("fxgraph_cache_miss", 0) for r in yes],
            "graphs": seed["inductor"].get("fxgraph_cache_miss", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile-reps", type=int, default=2)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--startup-reps", type=int, default=3, help="fresh processes per startup mode")
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-bench-convert-") as d:
        work = Path(d)
        os.environ["WARMSTART_HOME"] = str(work / "home")
        res: dict = {"machine": platform.platform(), "cpus": os.cpu_count()}
        if not args.skip_load:
            res["load"] = bench_load(work, parse_size(args.size), args.reps)
        if not args.skip_compile:
            res["compile"] = bench_compile(work, args.compile_reps)
        if not args.skip_startup:
            res["startup"] = bench_startup(work, args.startup_reps)
    if "load" in res:
        _print_load(res["load"])
    if "compile" in res:
        c = res["compile"]
        print(f"\n| compile (fresh process) | without cache (s) | with cache (s) | speedup | hits/graphs |\n"
              f"|---|---|---|---|---|\n| 2-layer encoder, CPU | {c['without_cache_compile_s']:.2f} | "
              f"{c['with_cache_compile_s']:.2f} | {c['speedup']:.2f}x | {c['hits']}/{c['graphs']} |")
    if "startup" in res:
        st = res["startup"]
        base = st["compile-cold"]["first_output_s"]
        print("\n| 2-layer encoder, fresh process, CPU | first output (s) | vs compile cold | process total (s) "
              "| hits | output == eager |\n|---|---|---|---|---|---|")
        for mode, what in MODES.items():
            r = st[mode]
            print(f"| {mode}: {what} | {r['first_output_s']:.2f} | {base / r['first_output_s']:.1f}x | "
                  f"{r['process_s']:.2f} | {r['hits']}/{args.startup_reps} | {r['allclose']} |")
        print(f"\nAOT package (no weights): {st['aot_package_bytes'] / 1e6:.2f} MB; median setup before the "
              f"model runs (import torch + warmstart, build model): {st['aot-warm']['setup_s']:.2f} s")
    out = ROOT / "bench" / "results" / f"convert-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))


def _print_load(ld: dict) -> None:
    print(f"| model | plain warm / cold (s) | converted warm / cold (s) | ratio warm / cold | rank bytes / (1/n) |\n"
          f"|---|---|---|---|---|\n| {ld['model_bytes'] / 1e9:.2f} GB | {ld['plain_load_s']:.3f} / "
          f"{ld['plain_cold_s']:.3f} | {ld['converted_load_s']:.3f} / {ld['converted_cold_s']:.3f} | "
          f"{ld['ratio']:.3f} / {ld['cold_ratio']:.3f} | "
          f"{', '.join(f'{f:.4f}' for f in ld['tp_rank_fraction_of_1_over_n'])} |")


if __name__ == "__main__":
    main()

"""Conversion benchmark: loading a converted model vs a plain one of the same size, the bytes one rank
of a TP split reads, and a fresh process compiling a small model with and without the compile cache.

    python bench/convert.py --size 1G --reps 5 --compile-reps 2
    python bench/convert.py --skip-load --skip-compile --startup-reps 3   # only the four-way startup table
    python bench/convert.py --skip-load --skip-compile --skip-startup --cast-size 13G --cast-shards 6

The TP section loads each rank of a 2-way split in a fresh process after dropping the page cache and
counts the bytes that process read (``/proc/PID/io`` ``read_bytes``, plus per-file page-cache residency
by ``mincore`` afterwards), against 1/n of the model's bytes. ``--cast-size`` times ``warmstart convert``
(bf16 -> fp16) of a model that big as a whole process, with its peak RSS.

The startup section times a fresh process's first output of the same 2-layer encoder four ways:
torch.compile cold, torch.compile with warmstart.compile_cache warm, warmstart.aot_compile cold
(export + AOTInductor + package) and warm (load the package). Every process gets an empty
``TORCHINDUCTOR_CACHE_DIR``; warm ones read entries an earlier process stored.

Loads are warm (page cache), zero-copy, and finished when every page is resident (``populate=True``);
plain and converted runs alternate, medians over ``--reps``. Compile runs alternate without and with
the cache; they are fresh processes, each with
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

from bench.download import run_child  # noqa: E402
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
    from warmstart.compiled.aot import counters as aot_counters
    print(json.dumps({"first_output_s": t2 - t1, "setup_s": t1 - t0, "process_s": t2 - t0, "hit": hit,
                      "allclose": ok, "inductor": dict(counters["inductor"]), "aot": dict(aot_counters)}))
""")

MODES = {"compile-cold": "torch.compile, empty caches", "compile-warm": "torch.compile + compile_cache hit",
         "aot-cold": "aot_compile miss (export + AOTInductor + package)", "aot-warm": "aot_compile hit (load package)"}


def bench_startup(work: Path, reps: int) -> dict:
    env = {**os.environ, "WARMSTART_HOME": str(work / "home"), "PYTHONPATH": str(ROOT / "src"),
           # the stores are directories, as a shared one would be: their entries load only when tagged
           "WARMSTART_COMPILE_CACHE_KEY": "5e" * 32}
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
            os.fdatasync(fd)  # dirty pages (a file just written) cannot be dropped
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
    total = sum(p.stat().st_size for p in pp)
    return {"model_bytes": total, "convert_s": convert_s, "plain_load_s": statistics.median(a),
            "converted_load_s": statistics.median(b), "ratio": statistics.median(b) / statistics.median(a),
            "plain_cold_s": statistics.median(ca), "converted_cold_s": statistics.median(cb),
            "cold_ratio": statistics.median(cb) / statistics.median(ca),
            "times": {"plain_warm": a, "converted_warm": b, "plain_cold": ca, "converted_cold": cb},
            "tp": bench_tp(plain, reps)}


TP_CHILD = textwrap.dedent("""
    import json, sys, time
    import torch, warmstart

    def io():
        return {k: int(v) for k, v in (ln.split(": ") for ln in open("/proc/self/io").read().splitlines())}

    src, recipe, rank, world = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    before = io()
    t0 = time.perf_counter()
    state = warmstart.load(src, recipe=recipe, rank=rank, world_size=world, populate=True)
    acc = 0
    for t in state.values():  # every page resident, through the tensors themselves
        if t.numel():
            acc += int(t.reshape(-1).view(torch.uint8)[::4096].max())
    dt = time.perf_counter() - t0
    after = io()
    print(json.dumps({"seconds": dt, "tensors": len(state),
                      "tensor_bytes": sum(t.numel() * t.element_size() for t in state.values()),
                      **{k: after[k] - before[k] for k in ("read_bytes", "rchar", "syscr")}}))
""")


def _resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache right now (mincore over a fresh mapping of the file)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            resident = sum(v & 1 for v in vec)
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return min(resident * mmap.PAGESIZE, size)


def bench_tp(plain: Path, reps: int, world: int = 2) -> dict:
    """Bytes each rank of a TP split reads when it loads its part, counted at the file level.

    The split is converted once (not measured). Then, per repetition and rank (interleaved), every file
    involved (the plain model's weights and every rank's output) is flushed and dropped from the page
    cache, and a fresh process calls ``warmstart.load(plain, recipe=TP, rank=r, world_size=n,
    populate=True)``. Counted: that process's ``read_bytes`` (bytes its reads and page faults fetched from
    the block device) and ``rchar`` deltas from /proc/self/io around the load, and afterwards, per
    file, the bytes now in the page cache (mincore) — which files the load read, and how much of each."""
    import warmstart
    from warmstart.load import weight_files

    tp = warmstart.convert(plain, TP)
    src = [Path(os.path.realpath(p)) for p in weight_files(plain)]
    ranks = {r: [Path(os.path.realpath(p)) for p in tp.weight_paths(r)] for r in range(world)}
    every = src + [p for ps in ranks.values() for p in ps]
    total = sum(p.stat().st_size for p in src)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    runs: dict[int, list[dict]] = {r: [] for r in range(world)}
    for _ in range(reps):
        for r in range(world):
            os.sync()
            _evict(every)
            before = {str(p): _resident_bytes(p) for p in every}
            out = subprocess.run([sys.executable, "-c", TP_CHILD, str(plain), json.dumps(TP), str(r), str(world)],
                                 env=env, capture_output=True, text=True, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            resident = {str(p): _resident_bytes(p) for p in every}
            run["resident_before"] = sum(before.values())
            run["resident_after"] = {"source": sum(resident[str(p)] for p in src),
                                     **{f"rank{q}": sum(resident[str(p)] for p in ps) for q, ps in ranks.items()}}
            runs[r].append(run)
            print(f"# tp rank {r}: read_bytes {run['read_bytes'] / (total / world):.4f}x of 1/{world}, "
                  f"resident after {run['resident_after']}", file=sys.stderr, flush=True)
    med = {r: statistics.median(x["read_bytes"] for x in rs) for r, rs in runs.items()}
    return {"world_size": world, "model_bytes": total,
            "rank_file_bytes": {r: sum(p.stat().st_size for p in ps) for r, ps in ranks.items()},
            "read_bytes": med, "read_fraction_of_1_over_n": {r: v / (total / world) for r, v in med.items()},
            "rchar": {r: statistics.median(x["rchar"] for x in rs) for r, rs in runs.items()},
            "runs": runs}


def bench_compile(work: Path, reps: int) -> dict:
    env = {**os.environ, "WARMSTART_HOME": str(work / "home"), "PYTHONPATH": str(ROOT / "src")}
    env.pop("WARMSTART_COMPILE_CACHE", None)

    def run(mode: str, i: int) -> dict:
        e = {**env, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{mode}-{i}")}
        out = subprocess.run([sys.executable, "-c", COMPILE, mode], env=e, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    seed = run("cache", -1)  # fills the compile cache
    no: list[dict] = []
    yes: list[dict] = []
    for i in range(reps):  # interleaved, so drift hits both alike
        no.append(run("none", i))
        yes.append(run("cache", i))
    med = {k: statistics.median(r["compile_s"] for r in rs) for k, rs in (("without", no), ("with", yes))}
    return {"seed_run": seed, "without_cache_compile_s": med["without"], "with_cache_compile_s": med["with"],
            "speedup": med["without"] / med["with"], "hits": [r["inductor"].get("fxgraph_cache_hit", 0) for r in yes],
            "misses_with_cache": [r["inductor"].get("fxgraph_cache_miss", 0) for r in yes],
            "graphs": seed["inductor"].get("fxgraph_cache_miss", 0),
            "times": {"without": [r["compile_s"] for r in no], "with": [r["compile_s"] for r in yes]}}


CAST_RECIPE = "version: 1\nname: bf16-to-fp16\nsteps:\n  - cast: {dtype: float16}\n"


def _largest_tensor_bytes(files: list[Path]) -> int:
    """The largest tensor's bytes, read from the safetensors headers."""
    import struct

    best = 0
    for p in files:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        best = max([best] + [e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items()
                             if k != "__metadata__"])
    return best


def bench_cast(work: Path, size: int, shards: int, reps: int) -> dict:
    """``warmstart convert DIR --recipe cast.yaml`` (bf16 -> fp16) of a model of ``size`` in ``shards``
    files, as a whole CLI process: wall time and the process's own peak RSS (wait4), source files cold
    (flushed and dropped from the page cache), ``--force`` so every run converts. The output's dtypes
    are checked afterwards (outside the timing)."""
    from warmstart.load import weight_files

    src = work / "cast-src"
    make_llama(src, size, shards=shards, dtype="bfloat16", seed=2)
    files = weight_files(src)
    recipe = work / "cast.yaml"
    recipe.write_text(CAST_RECIPE)
    exe = Path(sys.executable).parent / "warmstart"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "warmstart.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    runs = []
    for _ in range(reps):
        os.sync()
        _evict(files)
        # a whole process, reaped with wait4 for its own rusage (peak RSS, CPU); raises on a non-zero exit
        r = run_child([*cmd, "convert", str(src), "--recipe", str(recipe), "--force", "--json"], env)
        wall, ru, out = r["seconds"], r["rusage"], r["stdout"]
        info = json.loads(out)
        out_files = [Path(info["path"]) / f["path"] for f in info["files"]] if "files" in info else weight_files(
            Path(info["path"]))
        dtypes: set[str] = set()
        for f in out_files:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                dtypes |= {e["dtype"] for k, e in json.loads(fh.read(n)).items() if k != "__metadata__"}
        runs.append({"seconds": wall, "maxrss_bytes": int(ru["maxrss_mb"] * 2**20), "cpu_s": ru["cpu_s"],
                     "output_dtypes": sorted(dtypes), "output_bytes": sum(f.stat().st_size for f in out_files)})
        print(f"# cast {size / 1e9:.1f} GB: {wall:.1f} s, peak RSS {runs[-1]['maxrss_bytes'] / 1e9:.2f} GB, "
              f"dtypes {sorted(dtypes)}", file=sys.stderr, flush=True)
        if dtypes - {"F16"}:
            raise RuntimeError(f"the cast left dtypes {sorted(dtypes)}")
    return {"model_bytes": sum(p.stat().st_size for p in files), "shards": shards, "recipe": CAST_RECIPE,
            "largest_tensor_bytes": _largest_tensor_bytes(files), "mem_total_bytes": os.sysconf("SC_PHYS_PAGES")
            * os.sysconf("SC_PAGE_SIZE"), "seconds": statistics.median(r["seconds"] for r in runs),
            "maxrss_bytes": max(r["maxrss_bytes"] for r in runs), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile-reps", type=int, default=2)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--startup-reps", type=int, default=3, help="fresh processes per startup mode")
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--cast-size", default=None, help="also time `warmstart convert` (bf16 -> fp16) of a model "
                    "this big as a whole process, with its peak RSS, e.g. 13G")
    ap.add_argument("--cast-shards", type=int, default=6)
    ap.add_argument("--cast-reps", type=int, default=1)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp dir; the cast needs 2x --cast-size)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ws-bench-convert-", dir=args.dir) as d:
        work = Path(d)
        os.environ["WARMSTART_HOME"] = str(work / "home")
        res: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "argv": sys.argv[1:],
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if args.cast_size:
            res["cast"] = bench_cast(work, parse_size(args.cast_size), args.cast_shards, args.cast_reps)
        if not args.skip_load:
            res["load"] = bench_load(work, parse_size(args.size), args.reps)
        if not args.skip_compile:
            res["compile"] = bench_compile(work, args.compile_reps)
        if not args.skip_startup:
            res["startup"] = bench_startup(work, args.startup_reps)
    if "load" in res:
        _print_load(res["load"])
    if "cast" in res:
        c = res["cast"]
        print(f"\n| `warmstart convert` bf16 -> fp16, whole process | s | peak RSS GB | largest tensor MB | RAM GB |"
              f"\n|---|---:|---:|---:|---:|\n| {c['model_bytes'] / 1e9:.1f} GB in {c['shards']} shards | "
              f"{c['seconds']:.1f} | {c['maxrss_bytes'] / 1e9:.2f} | {c['largest_tensor_bytes'] / 1e6:.0f} | "
              f"{c['mem_total_bytes'] / 1e9:.1f} |")
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
    print(f"| model | plain warm / cold (s) | converted warm / cold (s) | ratio warm / cold |\n"
          f"|---|---|---|---|\n| {ld['model_bytes'] / 1e9:.2f} GB | {ld['plain_load_s']:.3f} / "
          f"{ld['plain_cold_s']:.3f} | {ld['converted_load_s']:.3f} / {ld['converted_cold_s']:.3f} | "
          f"{ld['ratio']:.3f} / {ld['cold_ratio']:.3f} |")
    tp = ld["tp"]
    n = tp["world_size"]
    print(f"\nTP split into {n} ranks, each loaded in a fresh process after the page cache was dropped; bytes "
          f"read (/proc/PID/io read_bytes) against 1/{n} of the model's {tp['model_bytes'] / 1e9:.2f} GB\n\n"
          f"| rank | read_bytes MB | x of 1/{n} | rchar MB | its files MB |\n|---|---:|---:|---:|---:|")
    for r in sorted(tp["read_bytes"], key=int):
        print(f"| {r} | {tp['read_bytes'][r] / 1e6:.1f} | {tp['read_fraction_of_1_over_n'][r]:.4f} | "
              f"{tp['rchar'][r] / 1e6:.1f} | {tp['rank_file_bytes'][r] / 1e6:.1f} |")


if __name__ == "__main__":
    main()

"""Memory of N processes holding the same model: warmstart.load (a shared read-only mapping) against
torch.load and safetensors' load_file (private copies), side by side in one run.

    python bench/sharing.py --size 1G --procs 4 --reps 3

For every contender and repetition (interleaved: rep 1 of every contender, then rep 2 ...), the script
starts one idle process and ``--procs`` loader processes. Every process imports the same modules
(torch, safetensors, warmstart), so shared-library pages are split alike among them; each loader loads
the model, makes every page resident (one byte per 4 KiB page of every tensor, through the tensors)
and waits. With all of them alive, it reads ``Rss``, ``Pss``, ``Pss_Anon`` and ``Pss_File`` of each
from ``/proc/PID/smaps_rollup``. The model's share is each loader's figure minus the idle process's
(measured at the same moment); totals are over the loaders, and ratios are ``total / file size``.
PSS charges a page shared by k processes 1/k to each, so k processes sharing one copy of the file add
up to 1x; k private copies add up to kx. RSS counts every mapped page in full in every process.

Markdown to stdout, JSON to ``bench/results/sharing-<timestamp>.json``. Linux only.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

CHILD = textwrap.dedent("""
    import sys
    import torch, safetensors.torch, warmstart
    mode, path = sys.argv[1], sys.argv[2]
    state = {}
    if mode == "warmstart.load":
        state = warmstart.load(path, populate=True)
    elif mode == "safetensors.load_file":
        state = safetensors.torch.load_file(path)
    elif mode == "torch.load":
        state = torch.load(path, weights_only=True)
    elif mode == "torch.load(mmap=True)":
        state = torch.load(path, mmap=True, weights_only=True)
    acc = 0
    for t in state.values():  # every page resident, through the tensors themselves
        if t.numel():
            acc += int(t.reshape(-1).view(torch.uint8)[::4096].max())
    print("READY", acc, flush=True)
    sys.stdin.readline()
""")

# contender -> which file it reads (torch.load reads a .pt of the same tensors)
CONTENDERS = {"warmstart.load": "st", "safetensors.load_file": "st", "torch.load": "pt",
              "torch.load(mmap=True)": "pt"}
FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File")


def smaps_rollup(pid: int) -> dict[str, int]:
    """Bytes of each field of /proc/PID/smaps_rollup (the kernel gives kB)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            out[key] = int(rest.split()[0]) * 1024
    return out


def spawn(mode: str, path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline() if p.stdout else ""
    if not line.startswith("READY"):
        p.kill()
        raise RuntimeError(f"{mode}: the child exited {p.wait()} before loading")
    return p


def one_round(mode: str, path: Path, procs: int, env: dict[str, str]) -> dict[str, Any]:
    children: list[subprocess.Popen[str]] = []
    try:
        idle = spawn("idle", path, env)
        children.append(idle)
        for _ in range(procs):
            children.append(spawn(mode, path, env))
        time.sleep(0.2)
        loaders = [smaps_rollup(p.pid) for p in children[1:]]
        base = smaps_rollup(idle.pid)  # last: all processes alive, shared libraries split among all
    finally:
        for p in children:
            try:
                p.communicate("\n", timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    delta = [{k: d[k] - base[k] for k in FIELDS} for d in loaders]
    return {"idle": base, "loaders": loaders, "per_process": delta,
            "total": {k: sum(d[k] for d in delta) for k in FIELDS}}


def make_files(work: Path, size: int) -> tuple[Path, Path]:
    import torch
    from tests.data.synth import make_llama

    from warmstart.load import load_paths

    st = next(iter(sorted(work.glob("*.safetensors"))), None)
    if st is None:
        st = next(p for p in make_llama(work, size, shards=1, dtype="bfloat16", seed=0) if p.suffix == ".safetensors")
    pt = work / "model.pt"
    if not pt.exists():
        torch.save({k: v.clone() for k, v in load_paths([st]).items()}, pt)
    return st, pt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="tensor bytes of the model (binary units)")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the model (default: a temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated contender names")
    args = ap.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        sys.exit("needs Linux /proc/PID/smaps_rollup")
    from tests.data.synth import parse_size

    size = parse_size(args.size)
    avail = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
                 if ln.startswith("MemAvailable"))
    if (args.procs + 2) * size > avail:  # N private copies + the page cache of the file
        sys.exit(f"{args.procs} private copies of {args.size} need more than the {avail / 2**30:.1f} GiB available")
    work = Path(args.dir or tempfile.mkdtemp(prefix="ws-bench-sharing-"))
    work.mkdir(parents=True, exist_ok=True)
    st, pt = make_files(work, size)
    files = {"st": st, "pt": pt}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "WARMSTART_HOME": str(work / "home")}
    cands = [c for c in CONTENDERS if not args.only or c in args.only.split(",")]
    res: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                       "python": platform.python_version()},
                           "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "procs": args.procs, "reps": args.reps,
                           "file_bytes": {c: files[CONTENDERS[c]].stat().st_size for c in cands},
                           "runs": {c: [] for c in cands}, "errors": {}}
    for rep in range(args.reps):  # interleaved
        for c in cands:
            if c in res["errors"]:
                continue
            try:
                r = one_round(c, files[CONTENDERS[c]], args.procs, env)
            except Exception as e:
                res["errors"][c] = f"{type(e).__name__}: {e}"
                continue
            res["runs"][c].append(r)
            fb = res["file_bytes"][c]
            print(f"# rep {rep + 1} {c}: total PSS {r['total']['Pss'] / fb:.2f}x, RSS {r['total']['Rss'] / fb:.2f}x "
                  "the file", file=sys.stderr, flush=True)
    res["rows"] = {}
    for c, runs in res["runs"].items():
        if not runs or c in res["errors"]:
            continue
        fb = res["file_bytes"][c]
        row = {f"total_{k}_x": statistics.median(r["total"][k] / fb for r in runs) for k in FIELDS}
        row.update({f"total_{k}_bytes": statistics.median(r["total"][k] for r in runs) for k in FIELDS})
        row["per_process_Pss_bytes"] = statistics.median(d["Pss"] for r in runs for d in r["per_process"])
        row["per_process_Rss_bytes"] = statistics.median(d["Rss"] for r in runs for d in r["per_process"])
        res["rows"][c] = row
    print(render(res))
    out = ROOT / "bench" / "results" / f"sharing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nJSON: {out.relative_to(ROOT)}", file=sys.stderr)


def render(r: dict[str, Any]) -> str:
    n = r["procs"]
    lines = [f"{n} processes holding the same model ({r['machine']['platform']}), median of {r['reps']}; "
             "totals over the loaders, each minus an idle process", "",
             "| contender | file GB | total PSS (x file) | PSS anon | PSS file | total RSS (x file) "
             "| PSS per process GB | RSS per process GB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c, row in r["rows"].items():
        lines.append(f"| {c} | {r['file_bytes'][c] / 1e9:.2f} | {row['total_Pss_x']:.2f} | {row['total_Pss_Anon_x']:.2f} "
                     f"| {row['total_Pss_File_x']:.2f} | {row['total_Rss_x']:.2f} | {row['per_process_Pss_bytes'] / 1e9:.2f} "
                     f"| {row['per_process_Rss_bytes'] / 1e9:.2f} |")
    for c, err in r["errors"].items():
        lines.append(f"| {c} | FAILED: {err[:160]} | | | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The node agent's numbers, in one run, on the shaped test origin (bench/_origin.py in its own process).

    python bench/agent.py [--size 1G] [--per-conn 20e6 --total 320e6 --latency 0.02] [--reps 3]

Rows: a cold pull through the agent vs a direct cold pull of the same model (each from an empty home,
interleaved, medians; target at most 1.02x); 8 pod-like client processes (`warmstart pull` with
WARMSTART_AGENT) asking the agent for the same cold model (origin bytes / model bytes, target 1.0x;
slowest client / one pull, target within 1.05x); a warm pull through the agent as a whole client
process (target under 0.2 s); the agent's idle RSS (target under 80 MB) and /metrics latency (median of
200 requests; target under 10 ms). Markdown to stdout, JSON to bench/results/agent-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from warmstart.agent.client import AgentAddress  # noqa: E402

REPO = "test-org/llama"


def origin(args) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, str(ROOT / "bench" / "_origin.py"), "--size", args.size, "--per-conn", str(args.per_conn),
           "--total", str(args.total), "--latency", str(args.latency)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, json.loads(p.stdout.readline())


def call(p: subprocess.Popen, cmd: str) -> dict:
    p.stdin.write(json.dumps({"cmd": cmd}) + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def env_for(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, WARMSTART_HOME=str(home), HF_ENDPOINT=endpoint, WARMSTART_QUIET="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def cli(env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "warmstart.cli", "pull", f"hf://{REPO}", "-q"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


class Agent:
    def __init__(self, home: Path, endpoint: str) -> None:
        cfg = home.parent / f"{home.name}.yaml"
        cfg.write_text("models: []\n")
        self.sock = home / "agent.sock"
        self.p = subprocess.Popen([sys.executable, "-m", "warmstart.cli", "agent", "--config", str(cfg)],
                                  env=env_for(home, endpoint), stderr=subprocess.DEVNULL)
        while not AgentAddress(unix=self.sock).answers():
            time.sleep(0.05)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--per-conn", type=float, default=20e6)
    ap.add_argument("--total", type=float, default=320e6)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    proc, info = origin(a)
    size = info["repos"][REPO]["bytes"]
    work = Path(tempfile.mkdtemp(prefix="ws-bench-agent-"))
    out: dict = {"size": size, "direct": [], "agent": []}
    try:
        for rep in range(a.reps):  # interleaved: direct, then through an agent, each from an empty home
            out["direct"].append(cli(env_for(work / f"d{rep}", info["endpoint"])))
            ag = Agent(work / f"a{rep}", info["endpoint"])
            try:  # the client reads the agent's home (a pod mounting the node cache)
                out["agent"].append(cli(env_for(work / f"a{rep}", info["endpoint"], WARMSTART_AGENT=str(ag.sock))))
            finally:
                ag.stop()
        ag = Agent(work / "fan", info["endpoint"])
        agents = [ag]
        call(proc, "reset")
        env = env_for(work / "fan", info["endpoint"], WARMSTART_AGENT=str(ag.sock))
        t0 = time.perf_counter()
        clients = [subprocess.Popen([sys.executable, "-m", "warmstart.cli", "pull", f"hf://{REPO}", "-q"], env=env,
                                    stdout=subprocess.DEVNULL) for _ in range(8)]
        ends = []
        for c in clients:
            c.wait()
            ends.append(time.perf_counter() - t0)
        out["fan_out"] = {"origin_bytes": call(proc, "stats")["bytes"], "slowest": max(ends)}
        out["warm"] = statistics.median(cli(env) for _ in range(5))
        time.sleep(2)
        out["idle_rss_mb"] = ag.rss_mb()
        conn_lat = []
        for _ in range(200):
            c = AgentAddress(unix=ag.sock).connection(10)
            t = time.perf_counter()
            c.request("GET", "/metrics")
            c.getresponse().read()
            conn_lat.append(time.perf_counter() - t)
            c.close()
        out["metrics_ms"] = statistics.median(conn_lat) * 1000
        ag.stop()
    finally:
        for x in locals().get("agents", []):
            if x.p.poll() is None:
                x.p.kill()
        proc.stdin.close()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    d, g = statistics.median(out["direct"]), statistics.median(out["agent"])
    print(f"| measure | value | target |\n|---|---|---|\n"
          f"| cold pull through the agent / direct ({size / 1e6:.0f} MB) | {g:.2f}s / {d:.2f}s = {g / d:.3f}x | <= 1.02x |\n"
          f"| 8 clients, one cold model: origin bytes / model | {out['fan_out']['origin_bytes'] / size:.3f}x | 1.0x |\n"
          f"| 8 clients: slowest / one pull through the agent | {out['fan_out']['slowest'] / g:.3f}x | <= 1.05x |\n"
          f"| warm pull through the agent (whole process) | {out['warm']:.3f}s | < 0.2 s |\n"
          f"| agent idle RSS | {out['idle_rss_mb']:.0f} MB | < 80 MB |\n"
          f"| /metrics latency (median of 200) | {out['metrics_ms']:.2f} ms | < 10 ms |")
    res = ROOT / "bench" / "results" / f"agent-{time.strftime('%Y%m%d-%H%M%S')}.json"
    res.parent.mkdir(exist_ok=True)
    res.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

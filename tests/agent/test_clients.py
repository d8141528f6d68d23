"""Clients through the agent: `warmstart pull` from a read-only home (as nobody), `warmstart.pull()`
delegating via <home>/agent.sock, and `warmstart loader` with llmaz's environment and KServe's args."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import warmstart
from tests.agent.conftest import TINY, AgentProcess, free_port, write_config
from tests.pull.conftest import origin_files


def test_read_only_home_pulls_through_the_agent(unprivileged, hub, agent_env, tmp_path):
    home = unprivileged.root / "node-home"  # owned by root: read-only to the client (nobody)
    home.mkdir()
    cfg = tmp_path / "agent.yaml"
    write_config(cfg, {"models": []})
    a = AgentProcess(home, cfg, {**agent_env, "WARMSTART_HOME": str(home)}).start()
    try:
        os.chown(a.socket, 0, unprivileged.gid)  # the socket's group, as the DaemonSet's runAsGroup sets it
        no_agent = unprivileged.run(["pull", f"hf://{TINY}"], WARMSTART_HOME=str(home), HF_ENDPOINT=hub.endpoint,
                                    WARMSTART_AGENT="off")
        assert no_agent.returncode == 1 and len(no_agent.stderr.strip().splitlines()) == 1, no_agent.stderr
        assert "read-only" in no_agent.stderr and "WARMSTART_AGENT" in no_agent.stderr
        hub.counters.reset()
        r = unprivileged.run(["pull", f"hf://{TINY}", "--json"], WARMSTART_HOME=str(home), HF_ENDPOINT=hub.endpoint,
                             WARMSTART_AGENT=str(a.socket))
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        assert Path(snap["path"]).is_relative_to(home / "hub")
        want = origin_files(hub, TINY)
        assert {p: (Path(snap["path"]) / p).read_bytes() for p in want} == want
        served = hub.counters.bytes_for("/blobs/*") + hub.counters.bytes_for(f"/{TINY}/resolve/*")
        assert served >= sum(map(len, want.values()))  # the agent fetched it (the client could not)
        assert a.stop() == 0
    finally:
        a.stop()


def test_python_pull_delegates_to_an_answering_home_socket(start_agent, hub, ws_home, monkeypatch):
    a = start_agent()
    monkeypatch.delenv("WARMSTART_AGENT", raising=False)
    snap = warmstart.pull(f"hf://{TINY}", quiet=True)
    assert [e for e in a.log_lines() if e.get("event") == "pull"][0]["outcome"] == "miss"  # the agent pulled
    assert snap.path.is_relative_to(ws_home / "hub") and (snap.path / "config.json").is_file()
    a.stop()
    assert warmstart.pull(f"hf://{TINY}", quiet=True).downloaded == 0  # no agent: as today, from the cache


def _loader(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warmstart.cli", "loader", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_llmaz_loader_contract_through_the_agent_over_tcp(start_agent, hub, agent_env, tmp_path):
    token = tmp_path / "token"
    token.write_text("tok")
    port = free_port()
    start_agent(listen=f"127.0.0.1:{port}", token_file=token)
    # the init container llmaz injects: no cache mounted, its own empty home, llmaz's variables, plus
    # the two variables the model's container carries (llmaz copies them to the init container)
    pod = {k: v for k, v in os.environ.items() if not k.startswith(("WARMSTART_", "HF_"))}
    pod.update(WARMSTART_HOME=str(tmp_path / "pod-home"), HF_ENDPOINT="http://127.0.0.1:9",
               WARMSTART_AGENT=f"http://127.0.0.1:{port}", WARMSTART_AGENT_TOKEN="tok",
               MODEL_SOURCE_TYPE="modelhub", MODEL_ID=TINY, MODEL_HUB_NAME="Huggingface", HF_TOKEN="",
               MODEL_IGNORE_PATTERNS="*.index.json")
    want = origin_files(hub, TINY)
    for restart in range(2):
        dest = tmp_path / f"workspace-{restart}" / "models"  # a fresh emptyDir per pod
        hub.counters.reset()
        r = _loader(["--dest", str(dest)], pod)
        assert r.returncode == 0, r.stderr
        out = dest / "models--test-org--tiny-llama"
        assert r.stdout.strip() == str(out)
        got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert got == {p: b for p, b in want.items() if not p.endswith(".index.json")}
        if restart:
            assert hub.counters.bytes_for("/blobs/*") + hub.counters.bytes_for("*/resolve/*") == 0
    one = tmp_path / "single" / "models"
    r = _loader(["--dest", str(one)], {**pod, "MODEL_FILENAME": "config.json", "REVISION": "main"})
    assert r.returncode == 0, r.stderr
    assert [p.name for p in one.iterdir()] == ["config.json"] and (one / "config.json").read_bytes() == want["config.json"]
    r = _loader(["--dest", str(one)], {**pod, "MODEL_SOURCE_TYPE": "bogus"})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "MODEL_SOURCE_TYPE" in r.stderr


def test_kserve_storage_initializer_args_through_the_socket(start_agent, hub, agent_env, tmp_path):
    a = start_agent()
    dest = tmp_path / "mnt" / "models"
    r = _loader([f"hf://{TINY}:main", str(dest)], {**agent_env, "WARMSTART_AGENT": str(a.socket)})
    assert r.returncode == 0, r.stderr
    want = origin_files(hub, TINY)
    assert {p: (dest / p).read_bytes() for p in want} == want
    assert not any(p.is_symlink() for p in dest.iterdir())  # real files: the pod may not mount the cache
    shutil.rmtree(dest)

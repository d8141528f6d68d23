"""Concurrent pulls of one model by separate processes fetch each file from the origin once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.pull.conftest import MiB, assert_blobs_sound, assert_snapshot_matches, origin_files
from tests.servers.shaping import Link


@pytest.mark.slow
def test_four_processes_one_download(ws_home, hub, cli_env, make_repo):
    files = {"model-00001-of-00002.safetensors": os.urandom(10 * MiB),
             "model-00002-of-00002.safetensors": os.urandom(6 * MiB),
             "config.json": b'{"model_type": "llama"}', "tokenizer.json": os.urandom(200_000).hex().encode()}
    repo_id = make_repo(files)
    size = sum(map(len, files.values()))
    hub.link = Link(per_conn_bps=2e6, total_bps=8e6)  # ~2.5 s for the model: the four pulls overlap
    env = {**cli_env, "WARMSTART_MAX_CONNECTIONS": "8"}
    procs = [subprocess.Popen([sys.executable, "-m", "warmstart.cli", "-v", "pull", f"hf://{repo_id}", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e for _, e in outs]
    results = [json.loads(o) for o, _ in outs]
    assert len({r["path"] for r in results}) == 1 and len({r["revision"] for r in results}) == 1
    served = hub.counters.bytes_total
    assert size <= served <= 1.1 * size, (served, size)
    for name in files:
        assert hub.counters.bytes_for(f"*/{name}") <= 1.1 * len(files[name]), name
    # they really overlapped: some process found another one downloading and waited for it
    assert any("another process" in e for _, e in outs), [e for _, e in outs]
    assert_snapshot_matches(ws_home / results[0]["path"], origin_files(hub, repo_id))
    assert_blobs_sound(ws_home)

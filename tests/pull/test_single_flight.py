"""Concurrent pulls of one model by separate processes fetch each file from the origin once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import warmstart
from tests.pull.conftest import MiB, assert_blobs_sound, assert_snapshot_matches, origin_files
from tests.servers.shaping import Link
from warmstart import transfer


@pytest.mark.slow
def test_four_processes_one_download(ws_home, hub, cli_env, make_repo):
    files = {"model-00001-of-00002.safetensors": os.urandom(10 * MiB),
             "model-00002-of-00002.safetensors": os.urandom(6 * MiB),
             "config.json": b'{"model_type": "llama"}', "tokenizer.json": os.urandom(20_000).hex().encode()}
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
    # they really overlapped: some process found another one downloading and waited for it
    assert any("another process" in e for _, e in outs), [e for _, e in outs]
    assert_snapshot_matches(ws_home / results[0]["path"], origin_files(hub, repo_id))
    assert_blobs_sound(ws_home)


def test_a_file_finished_by_another_process_after_listing_is_not_fetched_again(ws_home, hub, cli_env, make_repo,
                                                                                monkeypatch):
    files = {"model.safetensors": os.urandom(6 * MiB), "config.json": b'{"model_type": "llama"}'}
    repo_id = make_repo(files)
    real_run = transfer.Transfer.run

    def run_after_another_process(self, jobs, on_file):
        # another process pulls the whole model after this one listed the files, before it fetches them
        r = subprocess.run([sys.executable, "-m", "warmstart.cli", "pull", repo_id, "-q"], env=cli_env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        hub.counters.reset()
        return real_run(self, jobs, on_file)

    monkeypatch.setattr(transfer.Transfer, "run", run_after_another_process)
    snap = warmstart.pull(repo_id)
    assert_snapshot_matches(snap.path, files)
    assert hub.counters.bytes_total == 0 and snap.downloaded == 0

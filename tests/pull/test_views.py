"""``<home>/hub`` is a Hugging Face cache: huggingface_hub and transformers load pulled models from it
offline, in a separate process (they read HF_HUB_CACHE/HF_HUB_OFFLINE at import)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import warmstart
from tests.data.minilm import minilm_dir, minilm_files
from tests.pull.conftest import MINILM, TINY, origin_files, run_cli

HF_SCRIPT = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
repo, rev = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
print(json.dumps({"snapshot": snapshot_download(repo, revision=rev),
                  "config": hf_hub_download(repo, "config.json", revision=rev)}))
"""

TRANSFORMERS_SCRIPT = """
import json, sys
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
repo, original = sys.argv[1], sys.argv[2]
def embed(name):
    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModel.from_pretrained(name).eval()
    batch = tok(["warm starts are fast", "cold starts are slow"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (out * mask).sum(1) / mask.sum(1)
cfg = AutoConfig.from_pretrained(repo)
ours, ref = embed(repo), embed(original)
print(json.dumps({"model_type": cfg.model_type, "hidden": cfg.hidden_size, "shape": list(ours.shape),
                  "max_diff": float((ours - ref).abs().max()), "norm": float(ours.norm())}))
"""


def _offline_env(cli_env, ws_home, closed_endpoint):
    return {**cli_env, "HF_HUB_CACHE": str(ws_home / "hub"), "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": closed_endpoint, "TRANSFORMERS_OFFLINE": "1"}


def test_huggingface_hub_reads_the_cache_offline(ws_home, hub, cli_env, closed_endpoint):
    minilm = warmstart.pull(MINILM)
    tiny = warmstart.pull(TINY)
    env = _offline_env(cli_env, ws_home, closed_endpoint)
    assert run_cli(["path", "hub"], env).stdout.strip() == env["HF_HUB_CACHE"]
    for repo_id, rev, snap, expected in [
        (MINILM, None, minilm, {p: f.read_bytes() for p, f in minilm_files().items()}),
        (TINY, tiny.revision, tiny, origin_files(hub, TINY)),
    ]:
        args = [sys.executable, "-c", HF_SCRIPT, repo_id] + ([rev] if rev else [])
        r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        snapshot = Path(out["snapshot"])
        assert snapshot == snap.path
        assert Path(out["config"]).read_bytes() == expected["config.json"]
        got = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
        assert got == set(expected)
        for p, data in expected.items():
            assert (snapshot / p).read_bytes() == data, p


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_transformers_loads_minilm_offline_from_the_cache(ws_home, hub, cli_env, closed_endpoint):
    warmstart.pull(MINILM)
    env = _offline_env(cli_env, ws_home, closed_endpoint)
    r = subprocess.run([sys.executable, "-c", TRANSFORMERS_SCRIPT, MINILM, str(minilm_dir())], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model_type"] == "bert" and out["hidden"] == 384 and out["shape"] == [2, 384]
    assert out["max_diff"] == 0.0 and out["norm"] > 0

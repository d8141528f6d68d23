"""Converted models equal the same transforms done in plain torch; stored once; valid, aligned safetensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import warmstart
from warmstart.cache.index import Index
from warmstart.conversion import Recipe
from warmstart.load import read_header

from .conftest import reference

QKV = {"fuse": {"inputs": [r"(.*)\.q_proj\.weight", r"(.*)\.k_proj\.weight", r"(.*)\.v_proj\.weight"],
                "output": r"\1.qkv_proj.weight", "dim": 0}}


def test_every_operation_matches_plain_torch(home: Path, model_dir: Path) -> None:
    recipe = {"shard_size": "1MB", "steps": [
        {"rename": {"pattern": r"^model\.", "replace": ""}},
        {"drop": {"match": r"post_attention_layernorm"}},
        QKV,
        {"cast": {"match": r"mlp\.", "dtype": "float32"}},
        {"cast": {"match": r"^lm_head", "dtype": "float8_e4m3fn"}},
        {"transpose": {"match": r"o_proj\.weight$", "dims": [1, 0]}},
        {"reshape": {"match": r"^norm\.weight$", "shape": [1, -1]}},
        {"call": {"match": r"embed_tokens", "fn": "tests.convert._fns:double", "version": "1"}},
    ]}
    ref = reference(model_dir)
    got = warmstart.load(model_dir, recipe=recipe)
    n_layers = sum(1 for k in ref if k.endswith("q_proj.weight"))
    expected: dict[str, torch.Tensor] = {}
    for k, v in ref.items():
        k2 = k.removeprefix("model.")
        if "post_attention_layernorm" in k2 or any(p in k2 for p in ("q_proj", "k_proj", "v_proj")):
            continue
        if "mlp." in k2:
            v = v.float()
        if k2.startswith("lm_head"):
            v = v.to(torch.float8_e4m3fn)
        if k2.endswith("o_proj.weight"):
            v = v.permute(1, 0)
        if k2 == "norm.weight":
            v = v.reshape(1, -1)
        if "embed_tokens" in k2:
            v = v * 2
        expected[k2] = v
    for i in range(n_layers):
        p = f"model.layers.{i}.self_attn."
        expected[f"layers.{i}.self_attn.qkv_proj.weight"] = torch.cat(
            [ref[p + "q_proj.weight"], ref[p + "k_proj.weight"], ref[p + "v_proj.weight"]])
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k


def test_stored_once_then_loaded(home: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = [{"cast": {"dtype": "float16"}}]
    first = warmstart.convert(model_dir, recipe)
    assert first.converted
    from warmstart.conversion import engine

    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(engine, "execute", boom)
    again = warmstart.convert(str(model_dir), Recipe.from_dict({"steps": recipe}))
    assert not again.converted and again.key == first.key and again.path == first.path
    tensors = warmstart.load(model_dir, recipe=recipe)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    rows = Index(home / "index.db").snapshots()
    derived = [r for r in rows if r.kind == "derived"]
    assert len(derived) == 1 and derived[0].revision == first.key
    assert json.loads(derived[0].meta)["recipe_digest"] == Recipe.from_dict(recipe).digest()
    # another recipe is another snapshot; the key depends on the recipe
    other = warmstart.convert(model_dir, [{"cast": {"dtype": "float32"}}])
    assert other.key != first.key


def test_output_is_valid_aligned_sharded_safetensors(home: Path, model_dir: Path) -> None:
    c = warmstart.convert(model_dir, {"shard_size": "700KB", "steps": [
        {"cast": {"match": "layers.0", "dtype": "float32"}}, {"cast": {"match": "layers.1", "dtype": "float8_e5m2"}}]})
    names = sorted(f.path for f in c.files)
    assert "model.safetensors.index.json" in names and len(names) > 3
    index = json.loads((c.path / "model.safetensors.index.json").read_text())
    ref = reference(model_dir)
    assert set(index["weight_map"]) == set(ref)
    for p in c.weight_paths():
        h = read_header(p)
        assert h.data_start % 4096 == 0
        assert h.data_size <= 700_000 or len(h.tensors) == 1  # like HF, the limit counts tensor bytes
        for info in h.tensors.values():
            assert (info.start - h.data_start) % max(1, torch.empty(0, dtype=_td(info.dtype)).element_size()) == 0
        with safe_open(p, "pt") as f:  # the reference library reads it
            for k in f.keys():  # noqa: SIM118 - safe_open is not iterable
                want = ref[k]
                want = want.float() if "layers.0." in k else want.to(torch.float8_e5m2) if "layers.1." in k else want
                assert torch.equal(f.get_tensor(k).view(torch.uint8), want.contiguous().view(torch.uint8))


def _td(code: str) -> torch.dtype:
    from warmstart.load.cpu import torch_dtype

    return torch_dtype(code)


def test_tensor_parallel_split_reads_only_its_rank(home: Path, model_dir: Path, monkeypatch) -> None:
    n = 2
    recipe = {"world_size": n, "steps": [
        QKV,
        {"split": {"match": r"qkv_proj|gate_proj|up_proj", "style": "column"}},
        {"split": {"match": r"embed_tokens|lm_head", "dim": 1}},  # the vocabulary (1461) is odd
        {"split": {"match": r"o_proj|down_proj", "style": "row"}},
    ]}
    ref = reference(model_dir)
    source_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    from warmstart.load import model as model_mod

    seen: list[Path] = []
    real = model_mod.load_paths
    monkeypatch.setattr(model_mod, "load_paths", lambda paths, **kw: (seen.extend(paths), real(paths, **kw))[1])
    for rank in range(n):
        seen.clear()
        got = warmstart.load(model_dir, recipe=recipe, rank=rank, world_size=n)
        read = sum(p.stat().st_size for p in seen)
        assert all(f"rank-{rank:05d}-of-{n:05d}" in str(p) for p in seen)
        assert read <= 1.05 * source_bytes / n, (read, source_bytes)
        p = "model.layers.0.self_attn."
        qkv = torch.cat([ref[p + "q_proj.weight"], ref[p + "k_proj.weight"], ref[p + "v_proj.weight"]])
        assert torch.equal(got[p + "qkv_proj.weight"], qkv.chunk(n)[rank])
        assert torch.equal(got[p + "o_proj.weight"], ref[p + "o_proj.weight"].chunk(n, dim=1)[rank])
        assert torch.equal(got["lm_head.weight"], ref["lm_head.weight"].chunk(n, dim=1)[rank])
        assert torch.equal(got["model.norm.weight"], ref["model.norm.weight"])  # replicated
    with pytest.raises(ValueError, match="rank"):
        warmstart.load(model_dir, recipe=recipe)


def test_cli_convert_and_ls_beside_source(ws_home: Path, hub, tmp_path: Path) -> None:
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - cast: {dtype: float32}\n")
    env = {**os.environ, "WARMSTART_HOME": str(ws_home)}
    cli = [sys.executable, "-m", "warmstart.cli"]
    out = subprocess.run([*cli, "convert", "test-org/tiny-llama", "--recipe", str(recipe), "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["converted"] and Path(data["path"]).is_dir()
    ls = subprocess.run([*cli, "ls", "--json"], env=env, capture_output=True, text=True, timeout=60)
    models = [e["model"] for e in json.loads(ls.stdout)]
    i = models.index("hf://test-org/tiny-llama")
    assert models[i + 1] == "hf://test-org/tiny-llama#derived"
    rows = {r.source: r for r in Index(ws_home / "index.db").snapshots()}
    assert rows["hf://test-org/tiny-llama#derived"].parent == rows["hf://test-org/tiny-llama"].id
    again = subprocess.run([*cli, "convert", "test-org/tiny-llama", "--recipe", str(recipe)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == data["path"] and "cached" in again.stderr
    bad = subprocess.run([*cli, "convert", "test-org/tiny-llama", "--recipe", str(tmp_path / "nope.yaml")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "recipe file not found" in bad.stderr and "Traceback" not in bad.stderr
    # eviction treats the derived snapshot like any other: a tiny budget removes it (not pinned, not leased)
    plan = warmstart.cache().gc(max_size=1, dry_run=True)
    assert any("#derived" in a.what for a in plan.actions)
    # and the cache commands name it as `ls` shows it
    pin = subprocess.run([*cli, "pin", "hf://test-org/tiny-llama#derived"], env=env, capture_output=True, text=True)
    assert pin.returncode == 0, pin.stderr
    rm = subprocess.run([*cli, "rm", "hf://test-org/tiny-llama#derived"], env=env, capture_output=True, text=True)
    assert rm.returncode == 0, rm.stderr
    rows = {r.source for r in Index(ws_home / "index.db").snapshots()}
    assert "hf://test-org/tiny-llama#derived" not in rows and "hf://test-org/tiny-llama" in rows
    bad = subprocess.run([*cli, "rm", "hf://test-org/tiny-llama#derivedX"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "SOURCE#derived" in bad.stderr


def test_split_before_fuse_gives_each_rank_its_heads(home: Path, model_dir: Path) -> None:
    """The docs' TP recipe: each rank's fused QKV is [q_r; k_r; v_r], not a slice of [q; k; v]."""
    recipe = {"world_size": 2, "steps": [
        {"split": {"match": r"(q_proj|k_proj|v_proj)\.weight$", "style": "column"}}, QKV]}
    ref = reference(model_dir)
    p = "model.layers.1.self_attn."
    for rank in range(2):
        got = warmstart.load(model_dir, recipe=recipe, rank=rank, world_size=2)
        want = torch.cat([ref[p + f"{x}_proj.weight"].chunk(2)[rank] for x in "qkv"])
        assert torch.equal(got[p + "qkv_proj.weight"], want)

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as pt_ref
from safetensors.torch import save_file

from tests.load.helpers import minilm_path
from warmstart.errors import InvalidCheckpointError, NotFoundError
from warmstart.load import load_into_module, load_paths, weight_files


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scale", torch.ones(4))


def sharded(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    state = {"embed.weight": torch.randn(10, 4, generator=g), "proj.weight": torch.randn(4, 4, generator=g),
             "proj.bias": torch.randn(4, generator=g), "scale": torch.rand(4, generator=g)}
    save_file({k: state[k] for k in ("embed.weight", "scale")}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in ("proj.weight", "proj.bias")}, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" if k in ("embed.weight", "scale") else "model-00002-of-00002.safetensors"
          for k in state}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return tmp_path, state


def test_weight_files_index_and_glob(tmp_path: Path) -> None:
    d, _ = sharded(tmp_path)
    assert [p.name for p in weight_files(d)] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (d / "model.safetensors.index.json").unlink()
    (d / "extra.safetensors").write_bytes((d / "model-00002-of-00002.safetensors").read_bytes())
    assert [p.name for p in weight_files(d)][0] == "extra.safetensors"
    with pytest.raises(NotFoundError):
        weight_files(d / "nope")


@pytest.mark.parametrize("shard", ["../evil.safetensors", "/etc/passwd", "sub/x.safetensors", "..", "a\\b", 3])
def test_index_path_traversal_rejected(tmp_path: Path, shard: object) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(InvalidCheckpointError, match="'w'"):
        weight_files(tmp_path)


def test_index_missing_shard(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "gone.safetensors"}}))
    with pytest.raises(NotFoundError, match="gone"):
        weight_files(tmp_path)


def test_load_paths_dir_and_duplicates(tmp_path: Path) -> None:
    d, state = sharded(tmp_path)
    got = load_paths(d)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    got = load_paths(weight_files(d), framework="numpy")
    assert got["proj.bias"].tolist() == state["proj.bias"].tolist()
    with pytest.raises(InvalidCheckpointError, match="also in"):
        load_paths([d / "model-00001-of-00002.safetensors"] * 2)


def test_load_into_meta_module_zero_copy(tmp_path: Path) -> None:
    d, state = sharded(tmp_path)
    with torch.device("meta"):
        model = Tiny()
    res = load_into_module(model, d)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert model.head.weight is model.embed.weight  # still tied
    assert isinstance(model.embed.weight, torch.nn.Parameter) and model.embed.weight.requires_grad
    assert torch.equal(model.proj.weight, state["proj.weight"]) and torch.equal(model.scale, state["scale"])
    ptrs = {model.embed.weight.untyped_storage().data_ptr(), model.scale.untyped_storage().data_ptr()}
    assert len(ptrs) == 1  # both are views of the same mapping: no copy
    out = model.head(model.embed(torch.tensor([1, 2])))
    assert out.shape == (2, 10)


def test_load_into_missing_and_unexpected(tmp_path: Path) -> None:
    d, state = sharded(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    save_file({"proj.weight": state["proj.weight"], "bogus": torch.zeros(2)}, str(extra / "m.safetensors"))
    with torch.device("meta"):
        model = Tiny()
    with pytest.raises(RuntimeError, match="Missing key") as ei:
        load_into_module(model, extra)
    assert "bogus" in str(ei.value)
    with torch.device("meta"):
        model = Tiny()
    res = load_into_module(model, extra, strict=False)
    assert "bogus" in res.unexpected_keys and "proj.bias" in res.missing_keys
    assert torch.equal(model.proj.weight, state["proj.weight"])


def test_load_into_shape_and_dtype_mismatch(tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        load_into_module(torch.nn.Linear(4, 2), tmp_path)
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    save_file({"weight": w, "bias": torch.full((3,), 0.5)}, str(tmp_path / "a.safetensors"))
    model = torch.nn.Linear(4, 3, dtype=torch.bfloat16)
    load_into_module(model, tmp_path)  # float -> float casts like load_state_dict
    assert model.weight.dtype == torch.bfloat16
    assert torch.equal(model.weight, w.to(torch.bfloat16)) and torch.equal(model.bias, torch.full((3,), 0.5).bfloat16())
    save_file({"weight": torch.zeros(3, 4, dtype=torch.int32), "bias": torch.zeros(3)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(RuntimeError, match="dtype mismatch for weight"):
        load_into_module(torch.nn.Linear(4, 3), tmp_path)


def test_load_into_dtype_and_state_dict(tmp_path: Path) -> None:
    d, state = sharded(tmp_path)
    with torch.device("meta"):
        model = Tiny()
    load_into_module(model, d, dtype=torch.float16)
    assert model.proj.weight.dtype == torch.float16
    model2 = Tiny()
    load_into_module(model2, state)
    assert torch.equal(model2.embed.weight, state["embed.weight"]) and model2.head.weight is model2.embed.weight


def test_minilm_into_bert_like_state() -> None:
    ref = pt_ref(str(minilm_path()))
    got = load_paths([minilm_path()], populate=True)
    assert all(torch.equal(got[k], ref[k]) for k in ref)

"""The README's headline calls, each through the public API, against an independent reference.

``warmstart.load``/``open``/``load_into``/``path`` are compared with what the ``safetensors`` library
reads from the very file the real MiniLM repository ships (not from warmstart's own copy).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open as st_safe_open
from safetensors.torch import load_file as st_load_file

import warmstart
from tests.data.minilm import REPO_ID, minilm_dir

ORIGINAL = minilm_dir() / "model.safetensors"


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return st_load_file(str(ORIGINAL))


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], v), k


def test_load_ref_equals_safetensors(ws_home, hub, reference):
    _same(warmstart.load(f"hf://{REPO_ID}"), reference)


def test_load_directory_and_file_without_recipe(ws_home, hub, reference):
    snap = warmstart.pull(REPO_ID)
    _same(warmstart.load(snap.path), reference)  # a directory
    _same(warmstart.load(str(snap.path / "model.safetensors")), reference)  # a file, as a str
    # the snapshot's file is a view of the blob whose name is its sha256
    blob = next(f.blob for f in snap.files if f.path == "model.safetensors")
    assert (snap.path / "model.safetensors").resolve() == blob.resolve()


def test_open_reads_slices_like_safe_open(ws_home, hub):
    snap = warmstart.pull(REPO_ID, include="*.safetensors")
    name = "embeddings.word_embeddings.weight"
    with st_safe_open(str(ORIGINAL), framework="pt") as ref, warmstart.open(snap.path / "model.safetensors") as f:
        assert sorted(f.keys()) == sorted(ref.keys())
        assert f.metadata() == ref.metadata()
        got = f.get_slice(name)[0:1024]
        want = ref.get_slice(name)[0:1024]
        assert torch.equal(got, want) and got.shape == (1024, 384)
        assert torch.equal(f.get_tensor("pooler.dense.bias"), ref.get_tensor("pooler.dense.bias"))
    # a ref with a single weight file opens too
    with warmstart.open(f"hf://{REPO_ID}") as f2, st_safe_open(str(ORIGINAL), framework="pt") as ref:
        assert torch.equal(f2.get_tensor(name)[-3:], ref.get_tensor(name)[-3:])


def test_open_refuses_a_directory_of_several_weight_files(ws_home, hub, tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    save_file({"b": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(warmstart.NotFoundError, match="2 weight files"):
        warmstart.open(tmp_path)


class _Head(torch.nn.Module):
    """Two real MiniLM parameters under their checkpoint names, built on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.pooler = torch.nn.Module()
        self.pooler.dense = torch.nn.Linear(384, 384)


def test_load_into_fills_a_meta_module(ws_home, hub, reference):
    with torch.device("meta"):
        m = _Head()
    missing, unexpected = warmstart.load_into(m, f"hf://{REPO_ID}", strict=False)
    assert missing == []
    assert "pooler.dense.weight" not in unexpected and len(unexpected) == len(reference) - 2
    assert m.pooler.dense.weight.device.type == "cpu"
    assert torch.equal(m.pooler.dense.weight, reference["pooler.dense.weight"])
    assert torch.equal(m.pooler.dense.bias, reference["pooler.dense.bias"])
    with torch.device("meta"):
        m2 = _Head()
    with pytest.raises(RuntimeError, match="[Uu]nexpected"):
        warmstart.load_into(m2, f"hf://{REPO_ID}", strict=True)


def test_path(ws_home, hub):
    home = Path(ws_home)
    assert warmstart.path() == home
    assert warmstart.path("hub") == home / "hub"
    assert warmstart.path("blobs") == home / "blobs" / "sha256"
    snap = warmstart.pull(REPO_ID, include="config.json")
    assert snap.path.is_relative_to(warmstart.path("hub"))
    with pytest.raises(ValueError, match="unknown path"):
        warmstart.path("nowhere")

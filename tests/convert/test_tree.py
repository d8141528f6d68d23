"""Nested parameter trees round-trip exactly: structure, key types, escaped keys, dtypes, values."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import warmstart
from warmstart.conversion.tree import escape, unescape
from warmstart.errors import RecipeError


def _same(a, b) -> None:
    assert type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    else:
        assert a == b


def test_flax_like_tree_round_trips(tmp_path: Path) -> None:
    tree = {
        "params": {
            "Dense_0": {"kernel": torch.randn(4, 3), "bias": torch.zeros(3)},
            "blocks.0/attn": {"qkv": torch.randn(2, 6, dtype=torch.bfloat16)},
            "100%": [torch.arange(5), (torch.ones(1, dtype=torch.float16), torch.tensor(True))],
            "": {"empty-key": torch.tensor(1.5)},
        },
        "step": 7,
        "opt": (None, "adam", 0.5),
        3: [torch.empty(0, 4)],
    }
    path = warmstart.save_tree(tree, tmp_path / "p.safetensors")
    back = warmstart.load_tree(path)
    _same(tree, back)
    flat = load_file(path)  # the safetensors library reads it; the key scheme is the documented one
    assert "params.blocks%2E0%2Fattn.qkv" in flat and "params.100%25.1.0" in flat and "3.0" in flat
    assert "params.%.empty-key" in flat


def test_numpy_and_ml_dtypes_leaves(tmp_path: Path) -> None:
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, dtype=ml_dtypes.bfloat16),
            "f8": np.ones(2, dtype=ml_dtypes.float8_e4m3fn)}
    warmstart.save_tree(tree, tmp_path / "n.safetensors")
    back = warmstart.load_tree(tmp_path / "n.safetensors", framework="numpy")
    assert list(back) == ["w", "b", "f8"]
    for k in tree:
        assert back[k].dtype == tree[k].dtype and np.array_equal(back[k].view(np.uint8), tree[k].view(np.uint8))


def test_plain_file_nests_by_dots(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a.b": torch.ones(1), "a.c": torch.zeros(1)}, tmp_path / "x.safetensors")
    back = warmstart.load_tree(tmp_path / "x.safetensors")
    assert set(back["a"]) == {"b", "c"}


def test_unsupported_leaf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="leaf at a.b is a object"):
        warmstart.save_tree({"a": {"b": object()}}, tmp_path / "bad.safetensors")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_escape_round_trips(key: str) -> None:
    e = escape(key)
    assert "." not in e and "/" not in e and unescape(e) == key


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.lists(st.integers(0, 5), max_size=3), max_size=5))
def test_random_trees_round_trip(tmp_path_factory, d) -> None:
    tree = {k: [torch.full((n,), float(n)) for n in v] for k, v in d.items()}
    path = tmp_path_factory.mktemp("t") / "t.safetensors"
    warmstart.save_tree(tree, path)
    _same(tree, warmstart.load_tree(path))

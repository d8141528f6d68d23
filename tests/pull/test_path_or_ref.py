"""``load``/``open`` and ``pull`` decide "path or ref" by one rule (``warmstart.refs.is_path``)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

import warmstart
from warmstart.errors import NotFoundError


def test_a_home_relative_path_is_loaded_in_place(ws_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user" / "m").mkdir(parents=True)
    save_file({"w": np.arange(6, dtype=np.float32)}, str(tmp_path / "user" / "m" / "model.safetensors"))
    tensors = warmstart.load("~/m", framework="numpy")
    assert tensors["w"].tolist() == [0, 1, 2, 3, 4, 5]
    assert not list(ws_home.rglob("blobs/sha256/*/*")), "a path was pulled into the cache like a ref"
    snap = warmstart.pull("~/m")  # the same string as a pull: the same rule, a local path
    assert snap.ref == f"file://{tmp_path / 'user' / 'm'}"


def test_a_missing_path_is_not_found_and_a_missing_model_is_a_ref(ws_home, tmp_path):
    with pytest.raises(NotFoundError, match="no such file or directory"):
        warmstart.load(str(tmp_path / "nothing"), framework="numpy")
    with pytest.raises(NotFoundError, match="hf://test-org/does-not-exist"):
        warmstart.load("test-org/does-not-exist", framework="numpy")

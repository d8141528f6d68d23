"""Hostile safetensors shapes: every one is an InvalidCheckpointError naming the file and the tensor, from the
header check and from ``warmstart.load`` (torch and numpy), never an OverflowError, MemoryError or a torch /
numpy error."""

from __future__ import annotations

from pathlib import Path

import pytest

import warmstart
from tests.load.helpers import entry, write
from warmstart.errors import InvalidCheckpointError
from warmstart.load.safetensors import read_header

NAME = "layers.0.hostile_weight"

# (id, dtype, shape, data_offsets, data bytes, words in the message)
SHAPES = [
    ("2^62x2^62x0", "F32", [2**62, 2**62, 0], (0, 0), b"", "overflows"),
    ("0x2^62x2^62", "F32", [0, 2**62, 2**62], (0, 0), b"", "overflows"),
    ("2^40x2^40x0", "BF16", [2**40, 2**40, 0], (0, 0), b"", "overflows"),
    ("2^31x2^30x0-f32", "F32", [2**31, 2**30, 0], (0, 0), b"", "overflows"),
    ("max-u63-twice-then-0", "U8", [2**63 - 1, 2**63 - 1, 0], (0, 0), b"", "overflows"),
    ("2^62-cubed", "F32", [2**62, 2**62, 2**62], (0, 4), b"\0" * 4, "more bytes"),
    ("2^64-then-0", "F32", [2**64, 0], (0, 0), b"", "64 bits"),
    ("negative", "F32", [-1, 4], (0, 16), b"\0" * 16, "negative"),
    ("negative-times-negative", "F32", [-2, -2], (0, 16), b"\0" * 16, "negative"),
    ("float-dim", "F32", [2.0, 2], (0, 16), b"\0" * 16, "list of integers"),
    ("string-dim", "F32", ["4"], (0, 16), b"\0" * 16, "list of integers"),
    ("bool-dim", "F32", [True], (0, 4), b"\0" * 4, "list of integers"),
    ("huge-past-the-file", "F64", [2**20, 2**20], (0, 16), b"\0" * 16, "more bytes"),
    ("offsets-do-not-match", "F32", [2, 2], (0, 12), b"\0" * 16, "needs 16"),
    ("offsets-past-the-file", "F32", [1024], (0, 4096), b"\0" * 16, "past"),
]


@pytest.mark.parametrize("dtype,shape,offsets,data,words", [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_hostile_shape_is_invalid_checkpoint_naming_the_tensor(tmp_path: Path, dtype: str, shape: list,
                                                               offsets: tuple, data: bytes, words: str) -> None:
    path = write(tmp_path / "model.safetensors", {NAME: entry(dtype, shape, *offsets)}, data)
    with pytest.raises(InvalidCheckpointError) as e:
        read_header(path)
    msg = str(e.value)
    assert type(e.value) is InvalidCheckpointError
    assert str(path) in msg and f"tensor {NAME!r}" in msg and words in msg and "\n" not in msg
    for framework in ("pt", "numpy"):
        with pytest.raises(InvalidCheckpointError, match=f"tensor {NAME!r}"):
            warmstart.load(str(path), framework=framework)


def test_empty_tensors_that_fit_still_load(tmp_path: Path) -> None:
    """The bound refuses only what torch and numpy cannot size: [2^30, 2^30, 0] x F32 is 2^62 bytes of extent."""
    path = write(tmp_path / "model.safetensors", {"e": entry("F32", [2**30, 2**30, 0], 0, 0),
                                                  "z": entry("U8", [0, 2**62], 0, 0)})
    assert tuple(warmstart.load(str(path))["e"].shape) == (2**30, 2**30, 0)
    assert warmstart.load(str(path), framework="numpy")["z"].shape == (0, 2**62)

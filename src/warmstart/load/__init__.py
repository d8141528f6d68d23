"""Loading layer: path-based only, it never fetches anything.

>>> from warmstart.load import weight_files, load_paths, SafeOpen      # doctest: +SKIP
>>> state = load_paths(weight_files("/models/llama"), device="cpu")     # zero-copy mmap views
>>> with SafeOpen("/models/llama/model.safetensors") as f:              # lazy, safe_open-like
...     w = f.get_slice("lm_head.weight")[0:1024]

Importing this package does not import torch.
"""

from __future__ import annotations

from warmstart.load.cpu import SafeOpen, load_file
from warmstart.load.model import load_into_module, load_paths, weight_files
from warmstart.load.safetensors import Header, TensorInfo, read_header

from .._callable import make_callable

make_callable(__name__, "load")  # `warmstart.load(...)` stays the API function once this is imported

__all__ = [
    "Header",
    "SafeOpen",
    "TensorInfo",
    "load_file",
    "load_into_module",
    "load_paths",
    "read_header",
    "weight_files",
]

"""Loading layer: path-based only, it never fetches anything.

>>> from warmstart.load import weight_files, load_paths, SafeOpen      # doctest: +SKIP
>>> state = load_paths(weight_files("/models/llama"), device="cpu")     # doctest: +SKIP
>>> with SafeOpen("/models/llama/model.safetensors") as f:              # doctest: +SKIP
...     w = f.get_slice("lm_head.weight")[0:1024]                       # a view: only these pages are read

``warmstart.load`` itself is the API function :func:`warmstart.api.load`; this package is reached with
``from warmstart.load import ...``. Importing the package imports none of its modules (``import warmstart``
imports it, see ``warmstart/__init__.py``): a name below is imported from its module when first used.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (not typing's: importing typing would double this package's import time)
if TYPE_CHECKING:
    from .cpu import SafeOpen, load_file
    from .model import load_into_module, load_paths, weight_files
    from .safetensors import Header, TensorInfo, read_header

#: public name -> the module of this package that defines it
_EXPORTS = {
    "SafeOpen": "cpu", "load_file": "cpu",
    "load_into_module": "model", "load_paths": "model", "weight_files": "model",
    "Header": "safetensors", "TensorInfo": "safetensors", "read_header": "safetensors",
}

__all__ = ["Header", "SafeOpen", "TensorInfo", "load_file", "load_into_module", "load_paths", "read_header",
           "weight_files"]


def __getattr__(name: str) -> object:  # PEP 562
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value

"""warmstart: pull model weights once at the speed of the link, keep them in a persistent
content-addressed cache, and load them at the speed of the hardware.

>>> import warmstart
>>> snap = warmstart.pull("hf://sentence-transformers/all-MiniLM-L6-v2")   # doctest: +SKIP
>>> tensors = warmstart.load(snap.path)                                     # doctest: +SKIP

Importing this package is cheap: nothing heavy (torch, huggingface_hub) is imported until used.
"""

from __future__ import annotations

from .errors import (
    CacheFullError,
    ConfigError,
    GatedRepoError,
    IntegrityError,
    InUseError,
    InvalidCheckpointError,
    NotFoundError,
    OfflineError,
    RecipeError,
    RefError,
    TransferError,
    UnsafePathError,
    WarmstartError,
)

__version__ = "0.1.0"

_API = ("pull", "load", "open", "load_into", "cache", "Snapshot", "SnapshotFile", "path",
        "convert", "save_tree", "load_tree", "compile_cache", "aot_compile")


def __getattr__(name: str):  # PEP 562: keep `import warmstart` light
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'warmstart' has no attribute {name!r}")


__all__ = [
    *_API,
    "CacheFullError", "ConfigError", "GatedRepoError", "InUseError", "IntegrityError",
    "InvalidCheckpointError", "NotFoundError", "OfflineError", "RecipeError", "RefError", "TransferError",
    "UnsafePathError", "WarmstartError", "__version__",
]

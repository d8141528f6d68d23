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

# ``warmstart.load`` and ``warmstart.cache`` each name both a subpackage and an API function. Python binds
# a subpackage's name on its parent only when it first imports it, so both are imported here, first, and
# the names unbound again: from then on ``__getattr__`` below answers them with the API functions, whatever
# ``import warmstart.load``/``import warmstart.cache`` runs later. Neither package imports anything heavy.
# (The subpackages themselves: ``from warmstart.load import load_paths``, ``from warmstart.cache import leases``.)
from . import cache, load  # noqa: E402

del cache, load

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

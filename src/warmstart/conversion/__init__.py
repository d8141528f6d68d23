"""Pay conversion once: recipes, converted and pre-sharded weights stored as derived snapshots, and
nested parameter trees. (Cached compiler output lives in :mod:`warmstart.compiled`.)

>>> import warmstart
>>> c = warmstart.convert("hf://org/name", "recipe.yaml")                       # doctest: +SKIP
>>> shard = warmstart.load("hf://org/name", recipe="tp2.yaml", rank=0, world_size=2)   # doctest: +SKIP
>>> warmstart.save_tree({"params": {...}}, "p.safetensors"); warmstart.load_tree("p.safetensors")  # doctest: +SKIP

Importing this package does not import torch.
"""

from __future__ import annotations

from .derived import Converted, convert, derived_key
from .recipe import Recipe, Step

__all__ = ["Converted", "Recipe", "Step", "convert", "derived_key"]

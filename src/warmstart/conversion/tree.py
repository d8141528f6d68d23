"""Nested parameter trees (as Flax, Equinox or Axon keep them) to and from one safetensors file.

Key scheme: a leaf's tensor name is its path from the root, one component per level, joined by ``.``:
dict keys as strings with ``%`` -> ``%25``, ``.`` -> ``%2E``, ``/`` -> ``%2F`` (percent-escaping, so any
key round-trips and names stay readable); list and tuple positions as decimal indices. So
``{"params": {"dense.1": {"kernel": w}}, "layers": [a, b]}`` is stored as tensors
``params.dense%2E1.kernel``, ``layers.0`` and ``layers.1``.

The exact structure is stored in the header's ``__metadata__["warmstart_tree"]`` as JSON::

    {"dict": [[key, child], ...]}   key is ["s", "name"] for str keys, ["i", 3] for int keys
    {"list": [child, ...]}  {"tuple": [child, ...]}
    {"tensor": "params.dense%2E1.kernel"}      a leaf (torch tensor, numpy or JAX array)
    {"value": 3}                               a JSON scalar leaf (None, bool, int, float, str)

so dict order, key types, lists versus tuples and non-tensor leaves all come back exactly.

>>> save_tree({"a.b": [torch.ones(2)], "c": (1, None)}, "tree.safetensors")   # doctest: +SKIP
>>> load_tree("tree.safetensors")                                            # doctest: +SKIP
{'a.b': [tensor([1., 1.])], 'c': (1, None)}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._fs import atomic_path
from ..errors import InvalidCheckpointError, RecipeError

__all__ = ["save_tree", "load_tree", "escape", "unescape", "TREE_KEY"]

TREE_KEY = "warmstart_tree"


def escape(key: str) -> str:
    """Escape one dict key for a tensor name: ``%``, ``.`` and ``/`` become ``%25``, ``%2E``, ``%2F``; ``""`` is ``%``."""
    if key == "":
        return "%"  # a lone % never comes out of escaping anything else
    return key.replace("%", "%25").replace(".", "%2E").replace("/", "%2F")


def unescape(part: str) -> str:
    """Inverse of :func:`escape`."""
    if part == "%":
        return ""
    return part.replace("%2F", "/").replace("%2E", ".").replace("%25", "%")


def _as_torch(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    import numpy as np

    arr = np.asarray(x)  # numpy, JAX (device_get) and anything with __array__
    if arr.dtype.kind == "V" or arr.dtype.name in ("bfloat16",) or arr.dtype.name.startswith("float8"):
        from .plan import torch_dtype_of

        dt = torch_dtype_of(arr.dtype.name)
        return torch.from_numpy(arr.view(f"u{arr.dtype.itemsize}").copy()).view(dt)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _is_leaf_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (str, bytes))


def _flatten(node: Any, path: list[str], out: dict[str, Any]) -> Any:
    if isinstance(node, Mapping):
        items = []
        for k, v in node.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise RecipeError(f"save_tree: dict key {k!r} at {'.'.join(path) or 'root'} is "
                                  f"{type(k).__name__}; only str and int keys are supported")
            tag = ["s", k] if isinstance(k, str) else ["i", k]
            items.append([tag, _flatten(v, [*path, escape(str(k))], out)])
        return {"dict": items}
    if isinstance(node, (list, tuple)):
        kind = "list" if isinstance(node, list) else "tuple"
        return {kind: [_flatten(v, [*path, str(i)], out) for i, v in enumerate(node)]}
    if _is_leaf_array(node):
        name = ".".join(path) if path else "%root"
        out[name] = _as_torch(node)
        return {"tensor": name}
    if node is None or isinstance(node, (bool, int, float, str)):
        return {"value": node}
    raise RecipeError(f"save_tree: leaf at {'.'.join(path) or 'root'} is a {type(node).__name__}; use tensors, "
                      "arrays, dicts, lists, tuples or JSON scalars")


def save_tree(tree: Any, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a nested tree of tensors/arrays to one safetensors file (see the module docstring).

    >>> save_tree({"params": {"Dense_0": {"kernel": np.ones((2, 3))}}}, "p.safetensors")   # doctest: +SKIP
    """
    import json

    from .writer import ShardWriter

    tensors: dict[str, Any] = {}
    structure = _flatten(tree, [], tensors)
    meta = {**(metadata or {}), TREE_KEY: json.dumps(structure, separators=(",", ":")), "format": "pt"}
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        w = ShardWriter(tmp, [(k, tuple(t.shape), t.dtype) for k, t in tensors.items()], metadata=meta)
        for name, _s, _d in w.items:
            w.write(name, tensors[name])
        w.close()  # fsyncs
    return dest


def _build(node: Any, tensors: Mapping[str, Any], label: str) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise InvalidCheckpointError(f"{label}: malformed {TREE_KEY} metadata node {node!r:.60}; re-save the tree")
    (kind, val), = node.items()
    if kind == "dict":
        return {(k[1] if k[0] == "s" else int(k[1])): _build(v, tensors, label) for k, v in val}
    if kind in ("list", "tuple"):
        items = [_build(v, tensors, label) for v in val]
        return items if kind == "list" else tuple(items)
    if kind == "tensor":
        if val not in tensors:
            raise InvalidCheckpointError(f"{label}: tree names tensor {val!r} that the file lacks; re-save it")
        return tensors[val]
    if kind == "value":
        return val
    raise InvalidCheckpointError(f"{label}: unknown tree node kind {kind!r}; re-save the tree")


def load_tree(path: str | os.PathLike, *, framework: str = "pt") -> Any:
    """Read a file written by :func:`save_tree` back into the same structure (``framework``: pt or numpy).

    A plain safetensors file (no tree metadata) comes back nested by splitting names on ``.``.

    >>> tree = load_tree("p.safetensors", framework="numpy")     # doctest: +SKIP
    """
    import json

    from ..load.cpu import load_file
    from ..load.safetensors import read_header

    header = read_header(path)
    tensors = load_file(path, framework=framework)
    raw = header.metadata.get(TREE_KEY)
    if raw is None:
        tree: dict[str, Any] = {}
        for name, t in tensors.items():
            *parents, leaf = [unescape(p) for p in name.split(".")]
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = t
        return tree
    try:
        structure = json.loads(raw)
    except ValueError:
        raise InvalidCheckpointError(f"{path}: {TREE_KEY} metadata is not JSON; re-save the tree") from None
    return _build(structure, tensors, str(path))

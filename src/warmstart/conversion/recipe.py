"""Recipes: an ordered list of steps that turn a checkpoint's tensors into another layout.

A recipe is data (YAML, JSON or a Python dict), so it can be hashed into a cache key::

    version: 1                      # recipe format version (only 1 exists)
    world_size: 2                   # tensor-parallel ranks (needed by `split` steps)
    shard_size: 5GB                 # largest output file (default 5GB)
    steps:
      - rename:    {pattern: '^model\\.', replace: ''}           # re.sub on every name
      - drop:      {match: 'rotary_emb\\.inv_freq$'}             # re.search
      - cast:      {match: '.*', dtype: bfloat16}                # floating-point tensors only
      - transpose: {match: 'proj\\.weight$', dims: [1, 0]}       # a permutation (default: reverse)
      - reshape:   {match: 'norm\\.weight$', shape: [1, -1]}
      - fuse:      {inputs: ['(.*)\\.q_proj\\.weight', '(.*)\\.k_proj\\.weight', '(.*)\\.v_proj\\.weight'],
                    output: '\\1.qkv_proj.weight', dim: 0}        # concatenate, in `inputs` order
      - split:     {match: 'qkv_proj|gate_proj|up_proj', style: column}   # TP: dim 0 (or `dim: N`)
      - split:     {match: 'o_proj|down_proj', style: row}                 # TP: last dim; 1-D replicated
      - call:      {match: 'lm_head', fn: 'mypkg.fx:scale', version: '2'}  # a Python callable

Every step that names tensors (``match``/``inputs``) must name at least one, unless it says
``optional: true``: a recipe written for another model fails early instead of doing nothing.
A ``call`` step's ``fn`` is ``"module:function"`` (or, from Python, the callable itself) and needs a
``version`` string: the function's code cannot be hashed reliably, so its version enters the cache key —
bump it when the function changes.

>>> r = Recipe.from_dict({"steps": [{"cast": {"dtype": "float16"}}]})
>>> len(r.digest())
64
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import parse_size
from ..errors import RecipeError

__all__ = ["Recipe", "Step", "OPS", "DEFAULT_SHARD_SIZE"]

#: the operations a step may name, with the keys each accepts
OPS: dict[str, set[str]] = {
    "rename": {"pattern", "replace"},
    "drop": {"match", "optional"},
    "cast": {"match", "dtype", "optional"},
    "transpose": {"match", "dims", "optional"},
    "reshape": {"match", "shape", "optional"},
    "fuse": {"inputs", "output", "dim", "optional"},
    "split": {"match", "dim", "style", "optional"},
    "call": {"match", "fn", "version", "optional"},
}
_REQUIRED = {"rename": {"pattern", "replace"}, "drop": {"match"}, "cast": {"dtype"}, "transpose": {"match"},
             "reshape": {"match", "shape"}, "fuse": {"inputs", "output"}, "split": {"match"},
             "call": {"match", "fn"}}

DEFAULT_SHARD_SIZE = 5 * 10**9


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its operation name and arguments (``fn`` resolved to a callable for ``call``)."""

    op: str
    args: Mapping[str, Any]

    def key(self) -> dict:
        """The step as it enters the recipe digest (callables by name and version)."""
        args = dict(self.args)
        if self.op == "call":
            fn = args["fn"]
            args["fn"] = fn if isinstance(fn, str) else f"{getattr(fn, '__module__', '?')}:" \
                                                        f"{getattr(fn, '__qualname__', repr(fn))}"
        return {self.op: args}


def _resolve_fn(spec: Any) -> Callable:
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise RecipeError(f"call step: fn={spec!r} must be 'module:function' or a callable")
    mod, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise RecipeError(f"call step: cannot import {spec!r} ({e}); check the module is importable") from None
    if not callable(obj):
        raise RecipeError(f"call step: {spec!r} is not callable")
    return obj


def _check_step(i: int, raw: Any) -> Step:
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise RecipeError(f"recipe step {i + 1}: must be a one-key mapping like {{cast: {{dtype: bfloat16}}}}, "
                          f"got {raw!r:.80}")
    (op, args), = raw.items()
    if op not in OPS:
        raise RecipeError(f"recipe step {i + 1}: unknown operation {op!r}; use one of {', '.join(OPS)}")
    if not isinstance(args, Mapping):
        raise RecipeError(f"recipe step {i + 1} ({op}): arguments must be a mapping, got {args!r:.80}")
    unknown = set(args) - OPS[op]
    missing = _REQUIRED[op] - set(args)
    if unknown or missing:
        what = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise RecipeError(f"recipe step {i + 1} ({op}): {what}; it takes {sorted(OPS[op])}")
    args = dict(args)
    if op == "call":
        version = args.get("version")
        if not isinstance(version, str) or not version.strip():
            raise RecipeError(f"recipe step {i + 1} (call {args['fn']!r}): a callable needs an explicit "
                              "version string (e.g. version: '1'); bump it whenever the function changes")
        args["fn"] = _resolve_fn(args["fn"]) if not isinstance(args["fn"], str) else args["fn"]
    if op == "split" and args.get("style", "column") not in ("column", "row"):
        raise RecipeError(f"recipe step {i + 1} (split): style must be 'column' or 'row'")
    if op == "fuse" and (not isinstance(args["inputs"], list) or len(args["inputs"]) < 2):
        raise RecipeError(f"recipe step {i + 1} (fuse): inputs must be a list of at least two regexes")
    return Step(op, args)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe. Build with :meth:`from_dict`, :meth:`from_file` or :meth:`load`.

    >>> Recipe.from_dict({"world_size": 2, "steps": [{"split": {"match": "proj"}}]}).world_size
    2
    """

    steps: tuple[Step, ...]
    world_size: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    name: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | list) -> Recipe:
        """A recipe from a mapping (``steps``, ``world_size``, ``shard_size``, ``version``) or a list of steps."""
        if isinstance(data, list):
            data = {"steps": data}
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe must be a mapping with 'steps', got {type(data).__name__}")
        unknown = set(data) - {"version", "steps", "world_size", "shard_size", "name"}
        if unknown:
            raise RecipeError(f"recipe: unknown keys {sorted(unknown)}; use steps, world_size, shard_size, name")
        if data.get("version", 1) != 1:
            raise RecipeError(f"recipe version {data.get('version')!r} is not supported; this warmstart reads 1")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise RecipeError("recipe: 'steps' must be a list of steps")
        ws = data.get("world_size")
        if ws is not None and (not isinstance(ws, int) or isinstance(ws, bool) or ws < 1):
            raise RecipeError(f"recipe: world_size must be a positive integer, got {ws!r}")
        try:
            shard = parse_size(data.get("shard_size")) or DEFAULT_SHARD_SIZE
        except ValueError as e:
            raise RecipeError(f"recipe: shard_size: {e}") from None
        return cls(tuple(_check_step(i, s) for i, s in enumerate(steps)), ws, shard, data.get("name"))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Recipe:
        """Read a ``.yaml``/``.yml`` or ``.json`` recipe file."""
        p = Path(path)
        try:
            text = p.read_text("utf-8")
        except FileNotFoundError:
            raise RecipeError(f"{p}: recipe file not found; check the path") from None
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - yaml and json raise many types
            raise RecipeError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} ({e}); fix the file") \
                from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, recipe: Recipe | Mapping | list | str | os.PathLike) -> Recipe:
        """Accept a Recipe, a dict or list of steps, or a path to a YAML/JSON file."""
        if isinstance(recipe, Recipe):
            return recipe
        if isinstance(recipe, (str, os.PathLike)):
            return cls.from_file(recipe)
        return cls.from_dict(recipe)

    def with_world_size(self, world_size: int | None) -> Recipe:
        """This recipe with ``world_size`` set (an explicit argument must agree with the recipe's own)."""
        if world_size is None:
            return self
        if self.world_size not in (None, world_size):
            raise RecipeError(f"world_size={world_size} but the recipe says world_size: {self.world_size}; "
                              "use the recipe's value or change the recipe")
        return dataclasses.replace(self, world_size=world_size)

    @property
    def splits(self) -> bool:
        return any(s.op == "split" for s in self.steps)

    def to_json(self) -> dict:
        """A canonical, JSON-serialisable form (callables as ``module:qualname``)."""
        return {"version": 1, "world_size": self.world_size, "shard_size": self.shard_size,
                "steps": [s.key() for s in self.steps]}

    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal recipes give equal digests."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

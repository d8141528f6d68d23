"""Planning a conversion: apply a recipe to tensor *descriptions* (names, shapes, dtypes), not to data.

Each output tensor is a small expression over source tensors::

    Src(file, name) ─► Cast / Transpose / Reshape / Call ─► Concat([...]) ─► Shard(dim, n)

Planning checks every step against the model (names that match nothing, splits that do not divide,
reshapes that change the element count) before a byte is written, and gives every output's shape and
dtype, so each output file's header can be written first. :func:`evaluate` later computes one output
tensor from zero-copy views of the source files; only that tensor's intermediates are ever in memory.

>>> plan = make_plan(recipe, sources)                       # doctest: +SKIP
>>> [(o.name, o.shape, o.dtype) for o in plan.outputs[:2]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from ..errors import RecipeError
from .recipe import Recipe, Step

__all__ = ["Node", "Plan", "make_plan", "evaluate", "torch_dtype_of"]


@dataclasses.dataclass(frozen=True)
class Node:
    """One expression node. ``op``: src, cast, transpose, reshape, concat, shard, call."""

    op: str
    shape: tuple[int, ...]
    dtype: Any  # a torch dtype
    inputs: tuple[Node, ...] = ()
    arg: Any = None

    @property
    def sharded(self) -> bool:
        return self.op == "shard" or any(i.sharded for i in self.inputs)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def sources(self) -> list[Node]:
        if self.op == "src":
            return [self]
        return [s for i in self.inputs for s in i.sources()]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The outputs in order (name, expression). ``world_size`` is 1 when nothing is split."""

    outputs: tuple[tuple[str, Node], ...]
    world_size: int


def torch_dtype_of(name: Any) -> Any:
    """``"bfloat16"``, ``"torch.float8_e4m3fn"``, ``"BF16"`` or a torch dtype -> the torch dtype."""
    import torch

    from ..load.cpu import torch_dtype

    if isinstance(name, torch.dtype):
        return name
    text = str(name).removeprefix("torch.")
    try:
        return torch_dtype(text)
    except KeyError:
        pass
    dt = getattr(torch, text, None)
    if not isinstance(dt, torch.dtype):
        raise RecipeError(f"unknown dtype {name!r}; use a torch dtype name such as bfloat16, float16, "
                          "float8_e4m3fn")
    return dt


def _matching(state: dict[str, Node], step: Step, i: int, key: str = "match") -> list[str]:
    try:
        rx = re.compile(step.args.get(key, ".*"))
    except re.error as e:
        raise RecipeError(f"recipe step {i + 1} ({step.op}): bad regex {step.args.get(key)!r} ({e})") from None
    names = [n for n in state if rx.search(n)]
    if not names and not step.args.get("optional"):
        raise RecipeError(f"recipe step {i + 1} ({step.op}): {step.args.get(key)!r} matches no tensor of this "
                          f"model (e.g. {next(iter(state), 'none')!r}); fix the regex or add optional: true")
    return names


def _fail(i: int, step: Step, name: str, why: str) -> RecipeError:
    return RecipeError(f"recipe step {i + 1} ({step.op}): tensor {name!r}: {why}")


def _transpose(node: Node, step: Step, i: int, name: str) -> Node:
    dims = step.args.get("dims") or list(range(len(node.shape)))[::-1]
    if sorted(dims) != list(range(len(node.shape))):
        raise _fail(i, step, name, f"dims {dims} is not a permutation of the tensor's {len(node.shape)} dims")
    return Node("transpose", tuple(node.shape[d] for d in dims), node.dtype, (node,), tuple(dims))


def _reshape(node: Node, step: Step, i: int, name: str) -> Node:
    shape = list(step.args["shape"])
    numel = math.prod(node.shape)
    if shape.count(-1) > 1:
        raise _fail(i, step, name, f"shape {shape} has more than one -1")
    if -1 in shape:
        rest = math.prod(d for d in shape if d != -1)
        if rest == 0 or numel % rest:
            raise _fail(i, step, name, f"cannot reshape {list(node.shape)} to {shape}")
        shape[shape.index(-1)] = numel // rest
    if math.prod(shape) != numel:
        raise _fail(i, step, name, f"cannot reshape {list(node.shape)} ({numel} elements) to {shape}")
    return Node("reshape", tuple(shape), node.dtype, (node,), tuple(shape))


def _split(node: Node, step: Step, i: int, name: str, n: int) -> Node | None:
    if "dim" in step.args:
        dim = int(step.args["dim"])
    elif step.args.get("style", "column") == "row":
        if len(node.shape) < 2:
            return None  # a row-parallel bias is replicated
        dim = len(node.shape) - 1
    else:
        dim = 0
    if not node.shape:
        raise _fail(i, step, name, "cannot split a scalar; narrow the regex")
    dim = dim % len(node.shape)
    if node.shape[dim] % n:
        raise _fail(i, step, name, f"dim {dim} of size {node.shape[dim]} does not divide into {n} ranks; "
                    "choose another dim or world_size")
    if node.sharded:
        raise _fail(i, step, name, "already split by an earlier step")
    shape = list(node.shape)
    shape[dim] //= n
    return Node("shard", tuple(shape), node.dtype, (node,), (dim, n))


def _call(node: Node, step: Step, i: int, name: str) -> Node:
    import torch

    from .recipe import _resolve_fn

    fn = _resolve_fn(step.args["fn"])
    try:
        out = fn(torch.empty(node.shape, dtype=node.dtype, device="meta"))
    except Exception as e:  # noqa: BLE001 - user code
        raise _fail(i, step, name, f"{step.args['fn']!r} failed on a meta tensor ({type(e).__name__}: {e}); "
                    "the function must accept and return a torch.Tensor") from None
    if not isinstance(out, torch.Tensor):
        raise _fail(i, step, name, f"{step.args['fn']!r} returned {type(out).__name__}, not a tensor")
    return Node("call", tuple(out.shape), out.dtype, (node,), fn)


def _fuse(state: dict[str, Node], step: Step, i: int) -> dict[str, Node]:
    inputs = [re.compile(p) for p in step.args["inputs"]]
    template, dim = step.args["output"], int(step.args.get("dim", 0))
    groups: dict[str, list[str | None]] = {}
    for name in state:
        for k, rx in enumerate(inputs):
            m = rx.fullmatch(name)
            if m:
                groups.setdefault(m.expand(template), [None] * len(inputs))[k] = name
                break
    if not groups and not step.args.get("optional"):
        raise RecipeError(f"recipe step {i + 1} (fuse): inputs {step.args['inputs']} match no tensor; fix the "
                          "regexes (they must match whole names)")
    out: dict[str, Node] = {}
    owner = {m: out_name for out_name, g in groups.items() for m in g if m}
    for name, node in state.items():
        if name not in owner:
            if name in groups:
                raise _fail(i, step, name, "the fused output name already exists")
            out[name] = node
            continue
        out_name, members = owner[name], groups[owner[name]]
        if out_name in out:
            continue
        missing = [step.args["inputs"][k] for k, m in enumerate(members) if m is None]
        if missing:
            raise RecipeError(f"recipe step {i + 1} (fuse): {out_name!r} lacks an input matching "
                              f"{missing[0]!r}; every group needs one tensor per input")
        parts = [state[m] for m in members if m]
        _check_concat(parts, dim, step, i, out_name)
        d = dim % len(parts[0].shape)
        shape = list(parts[0].shape)
        shape[d] = sum(p.shape[d] for p in parts)
        out[out_name] = Node("concat", tuple(shape), parts[0].dtype, tuple(parts), d)
    return out


def _check_concat(parts: list[Node], dim: int, step: Step, i: int, name: str) -> None:
    first = parts[0]
    nd = len(first.shape)
    if nd == 0 or not -nd <= dim < nd:
        raise _fail(i, step, name, f"dim {dim} is out of range for shape {list(first.shape)}")
    d = dim % nd
    for p in parts[1:]:
        if p.dtype != first.dtype or len(p.shape) != nd or any(
                a != b for k, (a, b) in enumerate(zip(p.shape, first.shape, strict=True)) if k != d):
            raise _fail(i, step, name, f"inputs {list(first.shape)} {first.dtype} and {list(p.shape)} {p.dtype} "
                        f"cannot be concatenated on dim {d}")


def make_plan(recipe: Recipe, sources: list[tuple[int, str, tuple[int, ...], str]]) -> Plan:
    """Apply ``recipe`` to ``sources`` (``(file index, name, shape, safetensors dtype)`` in read order)."""
    from ..load.cpu import torch_dtype

    state: dict[str, Node] = {}
    for fi, name, shape, dt in sources:
        try:
            tdt = torch_dtype(dt)
        except KeyError:
            raise RecipeError(f"tensor {name!r}: dtype {dt} has no torch equivalent; drop it in the recipe") from None
        state[name] = Node("src", tuple(shape), tdt, (), (fi, name))
    n = recipe.world_size or 1
    if recipe.splits and recipe.world_size is None:
        raise RecipeError("the recipe splits tensors but names no world_size; add world_size: N or pass "
                          "world_size=N")
    for i, step in enumerate(recipe.steps):
        state = _apply(state, step, i, n)
    if not state:
        raise RecipeError("the recipe leaves no tensor at all; check its drop steps")
    return Plan(tuple(state.items()), n)


def _apply(state: dict[str, Node], step: Step, i: int, n: int) -> dict[str, Node]:
    op = step.op
    if op == "rename":
        try:
            rx = re.compile(step.args["pattern"])
        except re.error as e:
            raise RecipeError(f"recipe step {i + 1} (rename): bad regex {step.args['pattern']!r} ({e})") from None
        out: dict[str, Node] = {}
        for name, node in state.items():
            new = rx.sub(step.args["replace"], name)
            if new in out:
                raise _fail(i, step, name, f"renamed to {new!r}, which another tensor already has")
            out[new] = node
        return out
    if op == "fuse":
        return _fuse(state, step, i)
    names = set(_matching(state, step, i))
    if op == "drop":
        return {k: v for k, v in state.items() if k not in names}
    out = {}
    for name, node in state.items():
        if name not in names:
            out[name] = node
        elif op == "cast":
            dt = torch_dtype_of(step.args["dtype"])
            out[name] = Node("cast", node.shape, dt, (node,), dt) if node.dtype.is_floating_point else node
        elif op == "transpose":
            out[name] = _transpose(node, step, i, name)
        elif op == "reshape":
            out[name] = _reshape(node, step, i, name)
        elif op == "split":
            out[name] = _split(node, step, i, name, n) or node
        else:
            out[name] = _call(node, step, i, name)
    return out


def evaluate(node: Node, rank: int, tensor_of: Any) -> Any:
    """Compute ``node`` for ``rank``; ``tensor_of(file_index, name)`` returns a zero-copy source tensor.

    A shard of a source (or of a cast of one) narrows before computing, so a rank touches only its bytes.
    """
    op = node.op
    if op == "src":
        return tensor_of(*node.arg)
    if op == "shard":
        dim, n = node.arg
        inner = node.inputs[0]
        if inner.op == "cast":  # narrow first, cast only this rank's part
            x = evaluate(Node("shard", node.shape, inner.inputs[0].dtype, inner.inputs, node.arg), rank, tensor_of)
            return x.to(inner.arg)
        size = node.shape[dim]
        return evaluate(inner, rank, tensor_of).narrow(dim, rank * size, size)
    xs = [evaluate(i, rank, tensor_of) for i in node.inputs]
    if op == "cast":
        return xs[0].to(node.arg)
    if op == "transpose":
        return xs[0].permute(*node.arg)
    if op == "reshape":
        return xs[0].reshape(node.arg)
    if op == "concat":
        import torch

        return torch.cat([x.contiguous() for x in xs], dim=node.arg)
    if op == "call":
        out = node.arg(xs[0])
        if tuple(out.shape) != node.shape or out.dtype != node.dtype:
            raise RecipeError(f"a call step returned {list(out.shape)} {out.dtype} but gave {list(node.shape)} "
                              f"{node.dtype} on a meta tensor; make the function deterministic in shape and dtype")
        return out
    raise AssertionError(op)

"""Whole models: find the weight files of a directory, load them all, fill an ``nn.Module``.

>>> paths = weight_files("/models/llama")                              # doctest: +SKIP
>>> state = load_paths(paths, device="cpu", populate=True)              # doctest: +SKIP
>>> with torch.device("meta"): model = MyModel()                        # doctest: +SKIP
>>> load_into_module(model, paths, device="cpu")                        # doctest: +SKIP
_IncompatibleKeys(missing_keys=[], unexpected_keys=[])
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from warmstart.errors import InvalidCheckpointError, NotFoundError
from warmstart.load.cpu import MappedFile, resolve_dtype

__all__ = ["weight_files", "load_paths", "load_into_module"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def weight_files(directory: PathLike) -> list[Path]:
    """The safetensors files of a model directory, following ``*.safetensors.index.json`` if present.

    >>> weight_files("/models/llama")       # doctest: +SKIP
    [PosixPath('/models/llama/model-00001-of-00002.safetensors'), ...]
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotFoundError(f"{root}: not a directory; pass a model directory or a list of files")
    indexes = sorted(root.glob("*.safetensors.index.json"))
    preferred = root / "model.safetensors.index.json"
    if preferred in indexes:
        indexes = [preferred]
    if indexes:
        return _from_index(root, indexes[0])
    files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if not files:
        raise NotFoundError(f"{root}: no *.safetensors files; pull the model's weights or check the path")
    return files


def _from_index(root: Path, index: Path) -> list[Path]:
    try:
        data = json.loads(index.read_text("utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidCheckpointError(f"{index}: invalid index ({e}); re-download the model's index file") from None
    shards: list[Path] = []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise InvalidCheckpointError(f"{index}: tensor {tensor!r}: shard name must be a string; fix the index")
        parts = PurePosixPath(shard).parts
        if (shard.startswith(("/", "\\")) or "\\" in shard or len(parts) != 1 or parts[0] in (".", "..")
                or ":" in shard):
            raise InvalidCheckpointError(f"{index}: tensor {tensor!r}: shard {shard!r} escapes the model "
                                         "directory; the index is malicious or corrupt")
        path = root / shard
        if path not in shards:
            shards.append(path)
    for path in shards:
        if not path.is_file():
            raise NotFoundError(f"{index}: shard {path.name!r} is missing; pull the complete model")
    return shards


def load_paths(paths: Iterable[PathLike] | PathLike, *, device: str = "cpu", dtype: Any = None,
               framework: str = "pt", populate: bool | str = False, staging_bytes: int | None = None,
               stream: bool = False) -> dict[str, Any]:
    """Load every tensor of the given files (or model directory) into one dict.

    ``device="cpu"`` gives zero-copy views of the page cache (see :mod:`warmstart.load.cpu`);
    any other device (or ``stream=True``) runs the streaming engine with a bounded staging pool.

    >>> state = load_paths(["a.safetensors", "b.safetensors"], dtype="bfloat16")   # doctest: +SKIP
    """
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        paths = weight_files(p) if p.is_dir() else [p]
    paths = [Path(p) for p in paths]
    if str(device) != "cpu" or stream:
        if framework != "pt":
            raise ValueError(f"device={device!r} needs framework='pt'")
        from warmstart.load.stream import StreamEngine

        engine = StreamEngine(device=device, staging_bytes=staging_bytes)
        return engine.load(paths, dtype=dtype)
    if framework not in ("pt", "numpy"):
        raise ValueError(f"framework={framework!r}: use 'pt' or 'numpy'")
    dt = resolve_dtype(dtype, framework)
    out: dict[str, Any] = {}
    owner: dict[str, Path] = {}
    files = [MappedFile(p) for p in paths]
    for mf in files:
        for name in mf.header.tensors:
            if name in owner:
                raise InvalidCheckpointError(f"{mf.path}: tensor {name!r}: also in {owner[name]}; "
                                             "shards must not repeat tensor names")
            owner[name] = Path(mf.path)
    for mf in files:
        if populate:
            mf.populate("madvise" if populate is True else str(populate))
        for name in mf.header.tensors:
            out[name] = mf.tensor(name, framework, dt)
    return out


def _tied_groups(module: Any) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def _set_by_name(module: Any, name: str, value: Any) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, attr, value)


def load_into_module(module: Any, paths: Iterable[PathLike] | PathLike | Mapping[str, Any], *,
                     device: str = "cpu", dtype: Any = None, strict: bool = True) -> Any:
    """Fill ``module`` (possibly built on the meta device) with the checkpoint's tensors, zero-copy on CPU.

    Parameters become the loaded tensors themselves (``load_state_dict(assign=True)``). Tied
    parameters stay tied. A checkpoint tensor is cast to the parameter's dtype when both are
    floating point (as ``load_state_dict`` does); other mismatches raise. Returns torch's
    ``_IncompatibleKeys``; with ``strict=True`` missing/unexpected keys raise ``RuntimeError``.

    >>> with torch.device("meta"): model = torch.nn.Linear(4, 2)            # doctest: +SKIP
    >>> load_into_module(model, "linear.safetensors")                      # doctest: +SKIP
    _IncompatibleKeys(missing_keys=[], unexpected_keys=[])
    """
    if isinstance(paths, Mapping):
        state = dict(paths)
        if str(device) != "cpu" or dtype is not None:
            dt = resolve_dtype(dtype, "pt")
            state = {k: v.to(device=device, dtype=dt or v.dtype) for k, v in state.items()}
    else:
        state = load_paths(paths, device=device, dtype=dtype)
    expected = module.state_dict(keep_vars=True)
    tied = _tied_groups(module)
    for group in tied:  # a tied weight saved under one name fills all its aliases
        have = [n for n in group if n in state]
        if have:
            for n in group:
                state.setdefault(n, state[have[0]])
    errors: list[str] = []
    for name, target in expected.items():
        src = state.get(name)
        if src is None:
            continue
        if tuple(src.shape) != tuple(target.shape):
            errors.append(f"size mismatch for {name}: copying a param with shape {tuple(src.shape)} "
                          f"from checkpoint, the shape in current model is {tuple(target.shape)}.")
        elif dtype is None and src.dtype != target.dtype:
            if src.is_floating_point() and target.is_floating_point():
                logger.debug("casting %s from %s to %s", name, src.dtype, target.dtype)
                state[name] = src.to(target.dtype)
            else:
                errors.append(f"dtype mismatch for {name}: checkpoint has {src.dtype}, the model "
                              f"expects {target.dtype}; pass dtype= or fix the model")
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}:\n\t" + "\n\t".join(errors))
    result = module.load_state_dict(state, strict=strict, assign=True)
    for group in tied:  # assign=True created one Parameter per alias: share the first again
        first = module.get_parameter(group[0])
        for n in group[1:]:
            _set_by_name(module, n, first)
    leftover = [n for n, t in module.state_dict(keep_vars=True).items() if t.is_meta]
    if leftover:
        logger.warning("%d tensors are still on the meta device (first: %s)", len(leftover), leftover[0])
    return result

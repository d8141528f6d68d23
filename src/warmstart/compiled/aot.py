"""AOTInductor packages, cached: export and compile a model once, load it in every later process.

``aot_compile(model, example_args, key=...)`` runs ``torch.export.export`` and
``torch._inductor.aoti_compile_and_package`` on a miss and stores the ``.pt2`` package in the compile
cache (``<home>/compile/`` or Redis, as :mod:`.compile_cache`). A hit only loads the package (with
torch's C++ package loader): no dynamo, no AOTAutograd, no Inductor import, no C++ compiler. A package is
native code: one from Redis or a shared directory is loaded only when authenticated (see
:mod:`.compile_cache`, **Trust**), and the check runs before the package is written out or opened.

**Weights are not in the package.** It is built with ``aot_inductor.package_constants_in_so=False`` (and
``always_keep_tensor_constants=True``, so Inductor does not inline small 1-D weights such as a bias of
<= 8 elements into the generated code), and the model's own parameters and buffers are handed to the
loaded package with ``load_constants(..., user_managed=True)``: the package reads them in place, no copy,
so weights loaded zero-copy by :func:`warmstart.load` stay zero-copy. Hence the package depends only on
the model's *structure*, and one entry serves every checkpoint of that architecture.

The entry's digest covers: ``key``, torch version, device kind and capability, Python version, the CPU
model (packages are built with ``-march=native``), the model's class, ``repr`` and training flag, every
parameter's and buffer's name, shape, stride, dtype and device, the example inputs' structure, shapes,
strides and dtypes, ``dynamic_shapes`` and ``inductor_configs``. It does not cover the model's Python
code: change ``key`` when ``forward`` changes.

>>> fast = aot_compile(model, (x,), key="encoder-v1")          # doctest: +SKIP
>>> y = fast(x)                                                # same outputs as model(x)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import json
import logging
import os
import platform
import tempfile
import time
from typing import Any

from ..config import Settings
from .compile_cache import CompileCache

__all__ = ["AotCache", "AotModel", "aot_compile", "counters"]

log = logging.getLogger(__name__)
FORMAT = "aoti-1"

#: per-process counts: ``compiles`` (export + AOTInductor runs), ``hits``, ``misses``, ``load_failures``
counters: collections.Counter[str] = collections.Counter()

#: always applied on top of the caller's ``inductor_configs``: weights stay outside the package
PACKAGE_CONFIG = {"aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _describe(value: Any) -> Any:
    """A JSON-able description of a value's structure: tensors by layout, others by repr."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "stride": list(value.stride()), "dtype": str(value.dtype),
                "device": value.device.type}
    if isinstance(value, dict):
        return {"dict": [[repr(k), _describe(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_describe(v) for v in value]}
    return repr(value)


def structure(model: Any, example_args: tuple, example_kwargs: dict | None = None,
              dynamic_shapes: Any = None, inductor_configs: dict | None = None) -> dict[str, Any]:
    """What a package built from ``model`` and these example inputs depends on (values excluded)."""
    tensors = [(n, _describe(t)) for n, t in model.named_parameters(remove_duplicate=False)]
    tensors += [(n, _describe(t)) for n, t in model.named_buffers(remove_duplicate=False)]
    return {"format": FORMAT, "cpu": _cpu_model(),
            "model": f"{type(model).__module__}.{type(model).__qualname__}", "repr": repr(model),
            "training": bool(model.training), "tensors": tensors,
            "args": _describe(tuple(example_args)), "kwargs": _describe(example_kwargs or {}),
            "dynamic_shapes": _describe(dynamic_shapes),
            "inductor_configs": _describe(dict(sorted((inductor_configs or {}).items())))}


class AotCache(CompileCache):
    """The compile-cache entry of one AOTInductor package (same storage, entry format, authentication and
    fault handling: a package from Redis or a shared directory is loaded, i.e. its native code run, only when
    its tag verifies with ``WARMSTART_COMPILE_CACHE_KEY`` or the user set ``WARMSTART_COMPILE_CACHE_TRUST=1``)."""

    KIND = "aot"

    def __init__(self, key: str, parts: dict[str, Any], *, url: str | None = None,
                 settings: Settings | None = None) -> None:
        self.parts = parts
        super().__init__(key, url=url, settings=settings)

    def _key_extra(self) -> dict[str, Any]:
        return {"aot": json.dumps(self.parts, sort_keys=True)}


class _Runner:
    """Calls a loaded package like the exported model: inputs flattened as export saw them, outputs rebuilt.

    Built on ``torch._C._aoti.AOTIModelPackageLoader`` directly rather than ``aoti_load_package``: that
    one imports Inductor and, in a process whose Inductor cache is empty, compiles six CPU ISA probe
    programs, only to warn on a mismatch the cache key already rules out (what that costs: docs/convert.md).
    """

    def __init__(self, loader: Any) -> None:
        from torch.utils import _pytree as pytree

        self.loader = loader
        ins, outs = loader.get_call_spec()
        self.in_spec, self.out_spec = pytree.treespec_loads(ins), pytree.treespec_loads(outs)
        kw = self.in_spec.child(1) if self.in_spec.num_children == 2 else None
        self.kwarg_names = list(kw.context) if kw is not None and kw.type is dict else []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch
        from torch.utils import _pytree as pytree

        if kwargs:
            kwargs = {k: kwargs[k] for k in self.kwarg_names if k in kwargs}  # in the exported order
        flat = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        return pytree.tree_unflatten(self.loader.boxed_run(flat), self.out_spec)

    def get_constant_fqns(self) -> list[str]:
        return list(self.loader.get_constant_fqns())

    def load_constants(self, constants: dict, *, check_full_update: bool, user_managed: bool) -> None:
        # (map, use_inactive, check_full_update, user_managed, allow_h2d_copy)
        self.loader.load_constants(constants, False, check_full_update, user_managed, False)


class AotModel:
    """A loaded AOTInductor package bound to a model's weights; call it like the model.

    ``hit``: the package came from the cache (nothing was exported or compiled in this process);
    ``saved``: a new package was stored; ``package_bytes``; ``seconds`` (export + compile or load);
    ``digest``: the cache entry.
    """

    def __init__(self, runner: Any, constants: dict, *, key: str, digest: str, hit: bool, saved: bool,
                 package_bytes: int, seconds: float) -> None:
        self.runner = runner
        self.constants = constants  # the package holds raw pointers to these: keep them alive
        self.key, self.digest, self.hit, self.saved = key, digest, hit, saved
        self.package_bytes, self.seconds = package_bytes, seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner(*args, **kwargs)

    def __repr__(self) -> str:
        return (f"AotModel(key={self.key!r}, hit={self.hit}, package_bytes={self.package_bytes}, "
                f"constants={len(self.constants)})")


def _compile_package(model: Any, args: tuple, kwargs: dict | None, dynamic_shapes: Any,
                     inductor_configs: dict | None) -> bytes:
    """Export ``model`` and compile it with AOTInductor into a ``.pt2`` package without its weights."""
    import torch

    counters["compiles"] += 1
    exported = torch.export.export(model, tuple(args), kwargs, dynamic_shapes=dynamic_shapes)
    with tempfile.TemporaryDirectory(prefix="warmstart-aot-") as d:
        path = os.path.join(d, "model.pt2")
        torch._inductor.aoti_compile_and_package(exported, package_path=path,
                                                 inductor_configs={**(inductor_configs or {}), **PACKAGE_CONFIG})
        with open(path, "rb") as f:
            return f.read()


def _resolve(model: Any, fqn: str) -> Any:
    obj = model
    for part in fqn.split("."):
        obj = getattr(obj, part)
    return obj


def _load_package(payload: bytes, model: Any) -> tuple[Any, dict]:
    """Load a package and bind it to ``model``'s tensors (in place, no copy). Raises on any problem."""
    import torch

    with tempfile.NamedTemporaryFile(prefix="warmstart-aot-", suffix=".pt2") as f:
        f.write(payload)
        f.flush()
        # (path, model name, run_single_threaded, num_runners, device_index); extracts, so the file can go
        runner = _Runner(torch._C._aoti.AOTIModelPackageLoader(f.name, "model", False, 1, -1))
    constants = {}
    for fqn in runner.get_constant_fqns():
        t = _resolve(model, fqn)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"the package needs tensor {fqn!r}; the model has {type(t).__name__}")
        constants[fqn] = t.detach()
    # never call a package without its constants: AOTInductor dereferences them unchecked
    runner.load_constants(constants, check_full_update=True, user_managed=True)
    return runner, constants


def aot_compile(model: Any, example_args: tuple, *, key: str, example_kwargs: dict | None = None,
                dynamic_shapes: Any = None, inductor_configs: dict | None = None, url: str | None = None,
                settings: Settings | None = None) -> AotModel:
    """``model`` compiled ahead of time with AOTInductor, from the compile cache when it holds the package.

    A miss exports (``torch.export.export(model, example_args, example_kwargs,
    dynamic_shapes=dynamic_shapes)``), compiles and stores the package; a hit only loads it. Either way
    the result runs on ``model``'s own parameters and buffers, read in place (updating them in place
    updates the compiled model). Inputs must match the example inputs' shapes except where
    ``dynamic_shapes`` allows otherwise. A corrupt entry, one from another environment, or a package
    that fails to load is logged and replaced by a fresh compile; an unreachable Redis is logged and the
    local cache home is used instead. Errors of export or compilation itself propagate.
    """
    if not isinstance(example_args, tuple):
        raise TypeError("aot_compile needs example_args as a tuple, e.g. (x,)")
    parts = structure(model, example_args, example_kwargs, dynamic_shapes, inductor_configs)
    entry = AotCache(key, parts, url=url, settings=settings)
    t0 = time.perf_counter()
    payload = entry.fetch_payload()
    if payload is not None:
        try:
            runner, constants = _load_package(payload, model)
        except Exception as e:  # noqa: BLE001 - a bad package must never break the run
            counters["load_failures"] += 1
            log.warning("AOT package for %r could not be loaded (%s: %s); compiling afresh", key,
                        type(e).__name__, e)
        else:
            counters["hits"] += 1
            dt = time.perf_counter() - t0
            log.info("AOT compile cache hit for %r: %d bytes from %s loaded in %.3f s", key, len(payload),
                     entry.backend.where, dt)
            return AotModel(runner, constants, key=key, digest=entry.digest, hit=True, saved=False,
                            package_bytes=len(payload), seconds=dt)
    counters["misses"] += 1
    payload = _compile_package(model, example_args, example_kwargs, dynamic_shapes, inductor_configs)
    runner, constants = _load_package(payload, model)
    saved = entry.store_payload(payload)
    dt = time.perf_counter() - t0
    log.info("AOT compile for %r: exported and compiled in %.1f s, %d-byte package %s %s", key, dt,
             len(payload), "saved to" if saved else "not saved to", entry.backend.where)
    return AotModel(runner, constants, key=key, digest=entry.digest, hit=False, saved=saved,
                    package_bytes=len(payload), seconds=dt)

"""The public Python API: thin compositions of sources, transfer, cache and load.

>>> import warmstart
>>> snap = warmstart.pull("hf://sentence-transformers/all-MiniLM-L6-v2")     # doctest: +SKIP
>>> tensors = warmstart.load(snap.path)                                       # doctest: +SKIP
>>> with warmstart.open(snap.path / "model.safetensors") as f:                # doctest: +SKIP
...     w = f.get_slice("embeddings.word_embeddings.weight")[0:1024]
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .cache.home import Cache
from .config import Settings
from .errors import ConfigError, NotFoundError, OfflineError, ReadOnlyCacheError
from .pipeline import PullOptions
from .pipeline import pull as pipeline_pull
from .progress import terminal_progress
from .snapshot import Snapshot, SnapshotFile
from .sources.registry import parse as parse_ref
from .weights import weight_paths

__all__ = ["pull", "load", "open", "load_into", "cache", "path", "Snapshot", "SnapshotFile", "convert",
           "save_tree", "load_tree", "compile_cache", "aot_compile"]

def _globs(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _agent_client():
    """The node agent's client (standard library only; it never imports the agent's server)."""
    from .agent import client

    return client


def pull(
    ref: str,
    *,
    revision: str | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    to: str | os.PathLike | None = None,
    link: str = "symlink",
    quiet: bool | None = None,
    settings: Settings | None = None,
    tier: str | None = None,
    in_place: bool = False,
    progress: Any = None,
    agent: bool | None = None,
) -> Snapshot:
    """Make ``ref`` complete in the cache and return its :class:`Snapshot`.

    ``include``/``exclude`` are glob patterns on file paths; ``to`` also makes a plain directory of
    the files (``link``: ``symlink``, ``hardlink`` or ``copy``). A cached commit needs no request; a
    cached branch needs one; offline, the cache answers alone. ``tier="memory"`` also copies it into the
    RAM tier and returns that view as ``path`` (unless ``to`` is given).

    With a node agent (``WARMSTART_AGENT``, or an answering ``<home>/agent.sock``) the agent pulls and
    this process reads the result from the cache (``agent=False``: never delegate). ``progress``: a sink
    with ``start(total_bytes, total_files)``, ``advance(n)``, ``file_done()``, ``close()``.

    >>> snap = pull("hf://org/name@main", include="*.safetensors")    # doctest: +SKIP
    >>> snap.path, snap.revision                                        # doctest: +SKIP
    """
    settings = settings or Settings.from_env()
    r = parse_ref(ref, revision=revision)
    maybe_agent = bool(settings.agent) or (settings.home / "agent.sock").exists()  # no client import otherwise
    address = None if agent is False or in_place or not maybe_agent else _agent_client().find_agent(settings.home)
    if address is not None:  # the agent writes; this process reads the cached result, offline
        done = _agent_client().pull(address, ref, revision=revision, include=_globs(include),
                                    exclude=_globs(exclude), tier=tier)
        r = parse_ref(done["ref"])
        settings = dataclasses.replace(settings, offline=True)
    bar = contextlib.nullcontext(progress) if progress is not None else \
        terminal_progress(settings.quiet if quiet is None else quiet)
    with bar as shown:
        opts = PullOptions(_globs(include), _globs(exclude), Path(to) if to else None, link, shown, in_place)
        try:
            snap = pipeline_pull(r, settings, opts)
        except OfflineError:
            if address is None:
                raise
            raise NotFoundError(f"the agent at {address} pulled {ref}, but it is not in this process's cache "
                                f"home {settings.home}; set WARMSTART_HOME to the agent's home (mounted here)") from None
        except ReadOnlyCacheError as exc:
            if address is not None or agent is False:
                raise
            raise ReadOnlyCacheError(f"{exc}, or start the node agent (`warmstart agent`) or set WARMSTART_AGENT "
                                     "to its socket or http://HOST:PORT so that it pulls for you") from None
    if tier in (None, "disk"):
        return snap
    if tier != "memory":
        raise builtins.ValueError(f"unknown tier {tier!r}: use 'disk' or 'memory'")
    c = Cache.from_settings(settings)
    if c.memory is None:
        raise ConfigError("--tier memory needs a RAM tier: set WARMSTART_MEMORY_DIR (e.g. /dev/shm/warmstart)")
    view = c.memory.promote(*snap.ref.rpartition("@")[::2], snap.files)
    return snap if to else dataclasses.replace(snap, path=view)


def load(
    path_or_ref: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: Any = None,
    framework: str = "pt",
    populate: bool | str = False,
    staging_bytes: int | None = None,
    settings: Settings | None = None,
    tier: str | None = None,
    recipe: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Load every tensor of a file, a model directory or a ref (pulled first if needed).

    On CPU the tensors are zero-copy views of a shared read-only mapping of the cached file, so
    processes loading the same model share one copy in the page cache. ``device="cuda:N"`` streams
    through a bounded pool of pinned buffers. ``populate`` makes every page resident up front.
    ``tier="memory"`` keeps the model's blobs in the RAM tier (``WARMSTART_MEMORY_DIR``) and reads them there.

    ``recipe`` (a YAML/JSON path, dict or :class:`~warmstart.conversion.Recipe`) converts the model on the
    first call and loads the stored result on every later one; for a tensor-parallel split, ``rank`` and
    ``world_size`` select (and read) only that rank's files.

    >>> tensors = load("hf://sentence-transformers/all-MiniLM-L6-v2")     # doctest: +SKIP
    >>> part = load("hf://org/name", recipe="tp2.yaml", rank=1, world_size=2)   # doctest: +SKIP
    """
    from .load.model import load_paths

    if recipe is not None:
        converted = convert(path_or_ref, recipe, world_size=world_size, settings=settings)
        paths = converted.weight_paths(rank if converted.world_size > 1 else None)
    elif rank is not None or world_size is not None:
        raise builtins.ValueError("rank= and world_size= need a recipe= that splits the model")
    else:
        paths = weight_paths(path_or_ref, settings, tier)
    return load_paths(paths, device=device, dtype=dtype, framework=framework, populate=populate,
                      staging_bytes=staging_bytes)


def open(path_or_ref: str | os.PathLike, *, framework: str = "pt", settings: Settings | None = None):  # noqa: A001
    """A lazy handle on one safetensors file, like ``safetensors.safe_open``.

    A ref or a directory must hold exactly one weight file (else pass that file's path).
    """
    from .load.cpu import SafeOpen

    paths = weight_paths(path_or_ref, settings)
    if len(paths) != 1:
        names = ", ".join(p.name for p in paths[:4])
        raise NotFoundError(f"{path_or_ref} has {len(paths)} weight files ({names}…); open one of them by path")
    return SafeOpen(paths[0], framework=framework)


def load_into(module: Any, path_or_ref: str | os.PathLike, *, device: str = "cpu", dtype: Any = None,
              strict: bool = True, settings: Settings | None = None, tier: str | None = None):
    """Fill ``module`` (an ``nn.Module``, possibly on the meta device) with the weights of a file,
    directory or ref; returns ``(missing_keys, unexpected_keys)`` as ``load_state_dict`` does."""
    from .load.model import load_into_module

    return load_into_module(module, weight_paths(path_or_ref, settings, tier), device=device, dtype=dtype, strict=strict)


def cache(*, settings: Settings | None = None):
    """The cache home as a management object (:class:`warmstart.cache.manage.CacheManager`, a ``Cache``):
    ``ls()``, ``du()``, ``rm()``, ``gc()``, ``verify()``, ``pin()``, ``unpin()``, ``adopt()``, ``promote()``.

    >>> c = cache(); [e.model for e in c.ls()]      # doctest: +SKIP
    """
    from .cache.manage import CacheManager

    settings = settings or Settings.from_env()
    return CacheManager.open(settings, refetch=lambda ref: pull(ref, quiet=True, settings=settings), parse=parse_ref)


def path(what: str = "home", *, settings: Settings | None = None) -> Path:
    """Where things live: ``home``, ``hub`` (for ``HF_HUB_CACHE``), ``blobs``."""
    settings = settings or Settings.from_env()
    c = Cache(settings.home)
    paths = {"home": c.layout.home, "hub": c.layout.hub, "blobs": c.layout.blobs, "tmp": c.layout.tmp}
    if what not in paths:
        raise builtins.ValueError(f"unknown path {what!r}: use one of {', '.join(paths)}")
    return paths[what]


def convert(path_or_ref: str | os.PathLike, recipe: Any, *, world_size: int | None = None,
            shard_size: int | str | None = None, settings: Settings | None = None, force: bool = False):
    """Convert a model by ``recipe`` once and store the result in the cache as a derived snapshot
    (keyed by the source's content digests, the recipe's digest and the format version); later calls
    return the stored one. Returns a :class:`~warmstart.conversion.Converted` (``.path``, ``.files``).

    >>> c = convert("hf://org/name", {"steps": [{"cast": {"dtype": "float8_e4m3fn"}}]})   # doctest: +SKIP
    >>> c.path, c.converted                                                            # doctest: +SKIP
    """
    from .conversion import convert as _convert

    return _convert(path_or_ref, recipe, world_size=world_size, shard_size=shard_size, settings=settings,
                    force=force)


def save_tree(tree: Any, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> Path:
    """Save a nested tree (dicts, lists, tuples of tensors/arrays) to one safetensors file.

    >>> save_tree({"params": {"Dense_0": {"kernel": w}}}, "params.safetensors")    # doctest: +SKIP
    """
    from .conversion.tree import save_tree as _save

    return _save(tree, path, metadata=metadata)


def load_tree(path: str | os.PathLike, *, framework: str = "pt") -> Any:
    """Load a file written by :func:`save_tree` back into exactly the same structure.

    >>> tree = load_tree("params.safetensors", framework="numpy")                  # doctest: +SKIP
    """
    from .conversion.tree import load_tree as _load

    return _load(path, framework=framework)


def compile_cache(key: str, *, url: str | None = None, settings: Settings | None = None):
    """Persisted ``torch.compile`` artifacts: ``with compile_cache(key): model = torch.compile(m); model(x)``.

    Stored in the cache home, or in Redis with ``WARMSTART_COMPILE_CACHE=redis://HOST:PORT``.

    >>> with compile_cache("llama-decode"):                                         # doctest: +SKIP
    ...     out = torch.compile(model)(x)
    """
    from .compiled.compile_cache import compile_cache as _cc

    return _cc(key, url=url, settings=settings)


def aot_compile(model, example_args: tuple, *, key: str, example_kwargs: dict | None = None,
                dynamic_shapes=None, inductor_configs: dict | None = None, url: str | None = None,
                settings: Settings | None = None):
    """``model`` compiled ahead of time with AOTInductor; the package is cached, so later processes only load it.

    Returns a callable (:class:`warmstart.compiled.aot.AotModel`) that runs on ``model``'s own weights,
    read in place. Stored like :func:`compile_cache` (cache home, or ``WARMSTART_COMPILE_CACHE=redis://…``).

    >>> fast = aot_compile(model, (x,), key="encoder-v1")                          # doctest: +SKIP
    >>> y = fast(x)                                                                  # doctest: +SKIP
    """
    from .compiled.aot import aot_compile as _aot

    return _aot(model, example_args, key=key, example_kwargs=example_kwargs, dynamic_shapes=dynamic_shapes,
                inductor_configs=inductor_configs, url=url, settings=settings)

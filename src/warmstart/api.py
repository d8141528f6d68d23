"""The public Python API: thin compositions of sources, transfer, cache and load.

>>> import warmstart
>>> snap = warmstart.pull("hf://sentence-transformers/all-MiniLM-L6-v2")     # doctest: +SKIP
>>> tensors = warmstart.load(snap.path)                                       # doctest: +SKIP
>>> with warmstart.open(snap.path / "model.safetensors") as f:                # doctest: +SKIP
...     w = f.get_slice("embeddings.word_embeddings.weight")[0:1024]
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import fetch, refs
from .cache.manager import Cache
from .config import Settings
from .errors import NotFoundError
from .snapshot import Snapshot, SnapshotFile

__all__ = ["pull", "load", "open", "load_into", "cache", "path", "Snapshot", "SnapshotFile"]

#: what ``load(ref)`` pulls when the model is not cached yet (weights, their index, small configs)
LOAD_INCLUDE = ("*.safetensors", "*.safetensors.index.json", "*.json")


def _globs(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _auto_progress(settings: Settings, quiet: bool | None):
    if quiet or (quiet is None and settings.quiet) or not sys.stderr.isatty():
        return None
    from .progress import RichProgress

    return RichProgress()


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
) -> Snapshot:
    """Make ``ref`` complete in the cache and return its :class:`Snapshot`.

    ``include``/``exclude`` are glob patterns on file paths; ``to`` also makes a plain directory of
    the files (``link``: ``symlink``, ``hardlink`` or ``copy``). A cached commit needs no request; a
    cached branch needs one; offline, the cache answers alone.

    >>> snap = pull("hf://org/name@main", include="*.safetensors")    # doctest: +SKIP
    >>> snap.path, snap.revision                                        # doctest: +SKIP
    """
    settings = settings or Settings.from_env()
    r = refs.parse(ref, revision=revision)
    progress = _auto_progress(settings, quiet)
    opts = fetch.PullOptions(_globs(include), _globs(exclude), Path(to) if to else None, link, progress)
    try:
        return fetch.pull(r, settings, opts)
    finally:
        if progress is not None:
            progress.close()


def _weight_paths(path_or_ref: str | os.PathLike, settings: Settings | None) -> list[Path]:
    from .load import weight_files

    p = Path(path_or_ref) if isinstance(path_or_ref, os.PathLike) else None
    if p is None and isinstance(path_or_ref, str) and os.path.exists(path_or_ref):
        p = Path(path_or_ref)
    if p is not None:
        if not p.exists():
            raise NotFoundError(f"{p}: no such file or directory")
        return [p] if p.is_file() else weight_files(p)
    snap = pull(str(path_or_ref), include=LOAD_INCLUDE, settings=settings)
    return weight_files(snap.cache_path or snap.path)


def load(
    path_or_ref: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: Any = None,
    framework: str = "pt",
    populate: bool | str = False,
    staging_bytes: int | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Load every tensor of a file, a model directory or a ref (pulled first if needed).

    On CPU the tensors are zero-copy views of a shared read-only mapping of the cached file, so
    processes loading the same model share one copy in the page cache. ``device="cuda:N"`` streams
    through a bounded pool of pinned buffers. ``populate`` makes every page resident up front.

    >>> tensors = load("hf://sentence-transformers/all-MiniLM-L6-v2")     # doctest: +SKIP
    """
    from .load import load_paths

    paths = _weight_paths(path_or_ref, settings)
    return load_paths(paths, device=device, dtype=dtype, framework=framework, populate=populate,
                      staging_bytes=staging_bytes)


def open(path_or_ref: str | os.PathLike, *, framework: str = "pt", settings: Settings | None = None):  # noqa: A001
    """A lazy handle on one safetensors file, like ``safetensors.safe_open``.

    A ref or a directory must hold exactly one weight file (else pass that file's path).
    """
    from .load import SafeOpen

    paths = _weight_paths(path_or_ref, settings)
    if len(paths) != 1:
        names = ", ".join(p.name for p in paths[:4])
        raise NotFoundError(f"{path_or_ref} has {len(paths)} weight files ({names}…); open one of them by path")
    return SafeOpen(paths[0], framework=framework)


def load_into(module: Any, path_or_ref: str | os.PathLike, *, device: str = "cpu", dtype: Any = None,
              strict: bool = True, settings: Settings | None = None):
    """Fill ``module`` (an ``nn.Module``, possibly on the meta device) with the weights of a file,
    directory or ref; returns ``(missing_keys, unexpected_keys)`` as ``load_state_dict`` does."""
    from .load import load_into_module

    return load_into_module(module, _weight_paths(path_or_ref, settings), device=device, dtype=dtype, strict=strict)


def cache(*, settings: Settings | None = None) -> Cache:
    """The cache home as an object (see :class:`warmstart.cache.manager.Cache`)."""
    settings = settings or Settings.from_env()
    return Cache(settings.home, max_size=settings.max_size)


def path(what: str = "home", *, settings: Settings | None = None) -> Path:
    """Where things live: ``home``, ``hub`` (for ``HF_HUB_CACHE``), ``blobs``."""
    settings = settings or Settings.from_env()
    c = Cache(settings.home)
    paths = {"home": c.layout.home, "hub": c.layout.hub, "blobs": c.layout.blobs, "tmp": c.layout.tmp}
    if what not in paths:
        raise builtins.ValueError(f"unknown path {what!r}: use one of {', '.join(paths)}")
    return paths[what]

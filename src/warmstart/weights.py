"""A path or a ref -> the local weight files to read, held against eviction.

What ``warmstart.load()``, ``open()``, ``load_into()`` and ``convert()`` all need before they read a byte:
a file or directory is taken as it is; a ref is pulled (weights, their index and small configs only),
this process takes a lease on the snapshot so that no ``gc`` or eviction removes its blobs while they are
mapped, and its weight files are listed — from the RAM tier when asked or when they are already there.
It sits below ``api`` and ``conversion`` and above the pipeline and the cache, so both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .cache.home import Cache
from .config import Settings
from .errors import ConfigError, NotFoundError
from .pipeline import PullOptions, pull
from .progress import terminal_progress
from .refs import is_path
from .snapshot import Snapshot
from .sources.registry import parse as parse_ref

# load/ (ctypes, mmap, thread pools) and the leases are imported when first used: the CLI imports this
# module through api for every command, and most commands never load a tensor

__all__ = ["LOAD_INCLUDE", "leased_weights", "local_path", "pull_weights", "weight_paths"]

#: what loading a ref pulls when the model is not cached yet (weights, their index, small configs)
LOAD_INCLUDE = ("*.safetensors", "*.safetensors.index.json", "*.json")


def local_path(path_or_ref: str | os.PathLike) -> Path | None:
    """The local file or directory meant, or None for a ref (``refs.is_path`` is the one rule).

    >>> local_path("hf://org/name") is None, local_path(Path("/nowhere/x.safetensors"))
    (True, PosixPath('/nowhere/x.safetensors'))
    """
    return Path(os.path.expanduser(path_or_ref)) if is_path(path_or_ref) else None


def pull_weights(ref: str, settings: Settings, *, quiet: bool | None = None) -> Snapshot:
    """Pull ``ref``'s weights, weight index and JSON configs (a progress bar on a terminal unless quiet)."""
    with terminal_progress(settings.quiet if quiet is None else quiet) as bar:
        return pull(parse_ref(ref), settings, PullOptions(include=LOAD_INCLUDE, progress=bar))


def weight_paths(path_or_ref: str | os.PathLike, settings: Settings | None, tier: str | None = None) -> list[Path]:
    """The weight files of a file, a directory, or a ref (pulled first when needed, and leased)."""
    from .load.model import weight_files

    p = local_path(path_or_ref)
    if p is not None:
        if not p.exists():
            raise NotFoundError(f"{p}: no such file or directory")
        return [p] if p.is_file() else weight_files(p)
    settings = settings or Settings.from_env()
    return leased_weights(pull_weights(str(path_or_ref), settings), settings, tier)


def leased_weights(snap: Snapshot, settings: Settings, tier: str | None) -> list[Path]:
    """Hold this process's lease on the snapshot (kept for the process's life, see cache/leases.py), then
    list its weight files — from the RAM tier when ``tier="memory"`` or when it is already there."""
    from .cache import leases
    from .load.model import weight_files

    c = Cache.from_settings(settings)
    leases.hold(c.layout, snap.ref, [f.digest for f in snap.files])
    if not all(c.store.has(f.digest) for f in snap.files):  # a gc won the race before the lease: fetch again
        snap = pull_weights(snap.ref, settings, quiet=True)
    if tier not in (None, "disk", "memory"):
        raise ValueError(f"unknown tier {tier!r}: use 'disk' or 'memory'")
    if c.memory is not None and tier != "disk":
        in_ram = all(c.memory.has(f.digest, f.size) for f in snap.files)
        if tier == "memory" or in_ram:
            source, _, revision = snap.ref.rpartition("@")
            return weight_files(c.memory.promote(source, revision, snap.files))
    elif tier == "memory":
        raise ConfigError("tier='memory' needs a RAM tier: set WARMSTART_MEMORY_DIR (e.g. /dev/shm/warmstart)")
    return weight_files(snap.cache_path or snap.path)

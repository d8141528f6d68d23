"""Execute a plan: read sources through zero-copy mappings, write output shards streaming.

Memory stays bounded by the largest output tensor and its intermediates: each output tensor is computed
from mmap views, written, and the source pages it touched are dropped from this process
(``MADV_DONTNEED``; they stay in the page cache for others), so converting a model larger than RAM works.

Output files, relative to the derived snapshot::

    model.safetensors                                   (one shard, no split)
    model-00001-of-00003.safetensors ... + model.safetensors.index.json
    rank-00000-of-00002/model-00001-of-00002.safetensors ... + rank-00000-of-00002/model.safetensors.index.json

>>> files = execute(plan, paths, out_dir, shard_size=5 * 10**9)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..load.cpu import MappedFile
from .plan import Node, Plan, evaluate
from .writer import ShardWriter

__all__ = ["OutputFile", "execute", "rank_dir"]

log = logging.getLogger(__name__)
_PAGE = mmap.PAGESIZE


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One written output file: its path in the derived snapshot, where it lies now, digest and size."""

    path: str
    tmp: Path
    digest: str
    size: int


def rank_dir(rank: int, world_size: int) -> str:
    """``rank-00001-of-00004`` (empty for an unsplit model)."""
    return "" if world_size <= 1 else f"rank-{rank:05d}-of-{world_size:05d}"


def _group(items: list[tuple[str, Node]], shard_size: int) -> list[list[tuple[str, Node]]]:
    groups: list[list[tuple[str, Node]]] = [[]]
    size = 0
    for name, node in items:
        if groups[-1] and size + node.nbytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append((name, node))
        size += node.nbytes
    return groups


class _Sources:
    def __init__(self, paths: list[Path]) -> None:
        self.files = [MappedFile(p) for p in paths]

    def tensor(self, fi: int, name: str) -> Any:
        return self.files[fi].tensor(name)

    def release(self, node: Node) -> None:
        """Drop the source pages ``node`` read from this process's resident set."""
        for src in node.sources():
            fi, name = src.arg
            mf = self.files[fi]
            info = mf.header.tensors[name]
            start = info.start - info.start % _PAGE
            try:
                mf.mm.madvise(mmap.MADV_DONTNEED, start, info.end - start)
            except (OSError, ValueError, AttributeError):
                pass


def execute(plan: Plan, paths: list[Path], out_dir: Path, *, shard_size: int, metadata: dict[str, str],
            on_file: Callable[[OutputFile], None] | None = None) -> list[OutputFile]:
    """Write every rank's shards under ``out_dir`` (a scratch directory); returns the files written.

    ``on_file`` is called after each file is complete (the caller may publish it at once).
    On any error the partial file is deleted and the error propagates.
    """
    src = _Sources(paths)
    out: list[OutputFile] = []
    n = plan.world_size
    groups = _group(list(plan.outputs), shard_size)
    for rank in range(n):
        prefix = rank_dir(rank, n)
        weight_map: dict[str, str] = {}
        total = 0
        for k, group in enumerate(groups):
            fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
            rel = f"{prefix}/{fname}" if prefix else fname
            tmp = out_dir / f"{uuid.uuid4().hex}.safetensors"
            meta = {**metadata, "format": "pt"}
            if n > 1:
                meta.update(rank=str(rank), world_size=str(n))
            writer = ShardWriter(tmp, [(name, node.shape, node.dtype) for name, node in group], metadata=meta)
            nodes = dict(group)
            try:
                for name, _shape, _dt in writer.items:
                    t = evaluate(nodes[name], rank, src.tensor)
                    writer.write(name, t)
                    del t
                    src.release(nodes[name])
                digest = writer.close()
            except BaseException:
                writer.abort()
                raise
            f = OutputFile(rel, tmp, digest, writer.size)
            out.append(f)
            if on_file:
                on_file(f)
            weight_map.update((name, fname) for name, _ in group)
            total += writer.data_size
        if len(groups) > 1:
            rel = f"{prefix}/model.safetensors.index.json" if prefix else "model.safetensors.index.json"
            tmp = out_dir / f"{uuid.uuid4().hex}.json"
            text = json.dumps({"metadata": {"total_size": total, **metadata}, "weight_map": weight_map},
                              indent=2, sort_keys=True) + "\n"
            tmp.write_text(text)
            import hashlib

            f = OutputFile(rel, tmp, hashlib.sha256(text.encode()).hexdigest(), len(text.encode()))
            out.append(f)
            if on_file:
                on_file(f)
    log.debug("converted %d tensors into %d files (%d ranks)", len(plan.outputs), len(out), n)
    return out


def source_table(paths: list[Path]) -> list[tuple[int, str, tuple[int, ...], str]]:
    """``(file index, name, shape, dtype)`` of every source tensor, in file and offset order."""
    from ..load.safetensors import read_header

    rows = []
    for fi, p in enumerate(paths):
        h = read_header(p)
        for name, info in sorted(h.tensors.items(), key=lambda kv: kv[1].start):
            rows.append((fi, name, info.shape, info.dtype))
    return rows


def scratch_dir(tmp_root: Path) -> Path:
    d = tmp_root / f"convert-{uuid.uuid4().hex}"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d

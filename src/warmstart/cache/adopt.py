"""Adopt a Hugging Face cache: bring models that ``huggingface_hub`` already downloaded under warmstart's
management without copying their bytes.

Each file of ``<HF_CACHE>/models--ORG--NAME/snapshots/<commit>/`` is hashed (sha256, verifying it), then
hardlinked into ``blobs/sha256/…`` (same filesystem: no bytes copied), recorded in the index as the
snapshot ``hf://ORG/NAME@<commit>`` with the cache's refs, and given a hub view. When the HF cache is
on another filesystem nothing is copied: the report says how many bytes it would copy.

>>> report = adopt(cache, "~/.cache/huggingface/hub")       # doctest: +SKIP
>>> report.adopted, report.would_copy                           # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import uuid
from pathlib import Path

from ..errors import NotFoundError
from .home import Cache
from .index import IndexedFile
from .store import copy_file, sha256_file
from .views import hub_view

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdoptReport:
    """What :func:`adopt` took in (``source@commit``), the bytes it hardlinked or copied, what it would
    copy from another filesystem, and what it skipped and why."""

    adopted: tuple[str, ...]
    linked_bytes: int
    copied_bytes: int
    would_copy: int
    skipped: tuple[str, ...]

    def to_json(self) -> dict:
        return {"adopted": list(self.adopted), "linked_bytes": self.linked_bytes, "copied_bytes": self.copied_bytes,
                "would_copy_bytes": self.would_copy, "skipped": list(self.skipped)}


def default_hf_cache() -> Path:
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    return Path(home).expanduser() / "hub"


def _files(snap: Path) -> list[tuple[str, Path]]:
    out = []
    for p in sorted(snap.rglob("*")):
        if p.is_dir() or not p.exists():  # a dangling link: an incomplete download, skip it
            continue
        out.append((p.relative_to(snap).as_posix(), p.resolve()))
    return out


def _link_in(cache: Cache, path: Path, digest: str) -> None:
    """Hardlink (else copy) an already-hashed file into the blob store."""
    tmp = cache.layout.tmp / f"adopt-{uuid.uuid4().hex}"
    try:
        os.link(path, tmp)
    except OSError:
        copy_file(path, tmp)
    cache.store.publish(tmp, digest)


def adopt(cache: Cache, hf_cache: str | os.PathLike | None = None, *, dry_run: bool = False) -> AdoptReport:
    """Adopt every model snapshot under ``hf_cache`` (default: huggingface_hub's cache)."""
    root = Path(hf_cache).expanduser() if hf_cache else default_hf_cache()
    if not root.is_dir():
        raise NotFoundError(f"{root}: no Hugging Face cache there; pass its directory (HF_HUB_CACHE)")
    same_fs = os.stat(root).st_dev == os.stat(cache.layout.blobs).st_dev
    adopted, skipped = [], []
    linked = copied = would = 0
    for repo in sorted(root.glob("models--*")):
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        refs = {}
        for ref in (repo / "refs").rglob("*") if (repo / "refs").is_dir() else ():
            if ref.is_file():
                refs[ref.relative_to(repo / "refs").as_posix()] = ref.read_text().strip()
        for snap in sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else ():
            files = _files(snap)
            if not files:
                skipped.append(f"hf://{repo_id}@{snap.name} (empty)")
                continue
            size = sum(p.stat().st_size for _, p in files)
            if not same_fs:
                would += size
                skipped.append(f"hf://{repo_id}@{snap.name} (other filesystem: would copy {size} bytes)")
                continue
            if dry_run:
                adopted.append(f"hf://{repo_id}@{snap.name}")
                linked += size
                continue
            with cf.ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # hash different files in parallel
                digests = list(pool.map(lambda fp: sha256_file(fp[1]).hexdigest(), files))
            entries = []
            for (rel, path), digest in zip(files, digests, strict=True):
                if not cache.store.has(digest):
                    _link_in(cache, path, digest)
                    if os.stat(cache.store.path(digest)).st_ino == os.stat(path).st_ino:
                        linked += path.stat().st_size
                    else:
                        copied += path.stat().st_size
                cache.index.add_blob(digest, path.stat().st_size)
                etag = path.name if path.parent.name == "blobs" else None
                entries.append(IndexedFile(rel, digest, path.stat().st_size, etag))
            source = f"hf://{repo_id}"
            cache.index.add_snapshot(source, snap.name, entries)
            mine = {n: r for n, r in refs.items() if r == snap.name}
            for n, r in mine.items():
                cache.index.set_ref(source, n, r)
            hub_view(cache.layout, repo_id, snap.name, entries, mine)
            adopted.append(f"{source}@{snap.name}")
            log.info("adopted %s@%s (%d files)", source, snap.name[:12], len(entries))
    return AdoptReport(tuple(adopted), linked, copied, would, tuple(skipped))

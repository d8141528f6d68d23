"""Read back what the views of a cache home name (:func:`read_views`): what rebuilding a lost index
records (:mod:`warmstart.cache.rebuild`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .index import IndexedFile
from .layout import Layout
from .views import _HEX40, SOURCE_FILE, _blob_of, _walk, source_folder


def read_views(layout: Layout) -> Iterator[tuple[str, str, list[IndexedFile], dict[str, str]]]:
    """Every snapshot the views of ``layout`` name, as ``(source, revision, files, {ref: revision})``:
    what rebuilding a lost index records. A Hub view names its source exactly and its etags (one of 40
    hex is the file's git blob id); a ``snapshots/`` view only as its folder names allow ("--" read as
    "/"). Links are read, not resolved, and only a target inside ``blobs/sha256/`` that exists counts."""
    yield from _read_hub_views(layout)
    root = layout.snapshots
    for scheme_dir in sorted(root.iterdir()) if root.is_dir() else ():
        for name_dir in sorted(scheme_dir.iterdir()) if scheme_dir.is_dir() else ():
            source = _source_of(scheme_dir.name, name_dir)
            for rev_dir in sorted(name_dir.iterdir()) if name_dir.is_dir() else ():
                if rev_dir.name == SOURCE_FILE or not rev_dir.is_dir():
                    continue
                files = []
                for p in _walk(rev_dir):
                    try:
                        blob = _blob_of(layout, p, os.readlink(p))
                    except OSError:
                        continue
                    if blob is not None:
                        files.append(IndexedFile(p.relative_to(rev_dir).as_posix(), *blob))
                if files:
                    yield source, rev_dir.name, files, {}


def _source_of(scheme: str, name_dir: Path) -> str:
    """The source a ``snapshots/<scheme>/<name>`` folder holds: as its ``.source`` file names it when that
    names this very folder, else as the folder name allows ("--" read as "/"; views of earlier versions)."""
    try:
        key = (name_dir / SOURCE_FILE).read_text()[:8192]
        if key.startswith(f"{scheme}://") and source_folder(key) == name_dir.name:
            return key
    except (OSError, UnicodeDecodeError):
        pass
    return f"{scheme}://{name_dir.name.replace('--', '/')}"


def _read_hub_views(layout: Layout) -> Iterator[tuple[str, str, list[IndexedFile], dict[str, str]]]:
    for repo in sorted(layout.hub.glob("models--*")) if layout.hub.is_dir() else ():
        org_name = repo.name[len("models--"):]
        if "--" not in org_name:
            continue
        snaps = repo / "snapshots"
        found = {}
        for snap in sorted(snaps.iterdir()) if snaps.is_dir() else ():
            files = []
            for p in _walk(snap):
                try:
                    etag_link = Path(os.path.normpath(p.parent / os.readlink(p)))
                    if etag_link.parent != repo / "blobs":
                        continue
                    blob = _blob_of(layout, etag_link, os.readlink(etag_link))
                except OSError:
                    continue
                if blob is not None:
                    etag = etag_link.name
                    files.append(IndexedFile(p.relative_to(snap).as_posix(), *blob, etag,
                                             etag if _HEX40.fullmatch(etag) else None))
            if files:
                found[snap.name] = files
        refs = {}
        for ref in _walk(repo / "refs") if (repo / "refs").is_dir() else ():
            try:
                commit = ref.read_text().strip()
            except OSError:
                continue
            if commit in found:
                refs[ref.relative_to(repo / "refs").as_posix()] = commit
        for commit, files in found.items():
            yield ("hf://" + org_name.replace("--", "/", 1), commit, files,
                   {k: v for k, v in refs.items() if v == commit})

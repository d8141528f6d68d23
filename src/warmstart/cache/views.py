"""Views over blobs, and every path of one: the Hugging Face cache layout, generic snapshot folders, the
RAM tier's views and plain directories. Made, checked, repaired, removed and read back here only.

Views hold no data: they are symlinks (or, on request for plain directories, hardlinks or copies)
to ``blobs/sha256/…``. Relative symlinks keep the cache home relocatable. Every link is made under
a temporary name and renamed into place, so a reader never sees a half-made view.

::

    hub/models--org--name/refs/main                              "<commit>"
    hub/models--org--name/blobs/<etag> -> ../../../blobs/sha256/ab/<digest>
    hub/models--org--name/snapshots/<commit>/<path> -> ../../blobs/<etag>   (one ../ more per subdir)
    snapshots/<scheme>/<name>/<revision>/<path> -> …/blobs/sha256/ab/<digest>   (other sources, derived)

Every path made here is checked by :func:`warmstart.cache.paths.inside` first; ``<etag>`` is the
origin's etag only when it is 40 or 64 lowercase hex (else the sha256), ``<commit>`` one path component.

>>> import tempfile
>>> lay = Layout(Path(tempfile.mkdtemp()))
>>> hub_snapshot_dir(lay, "org/name", "a" * 40).relative_to(lay.home).as_posix()[:40]
'hub/models--org--name/snapshots/aaaaaaaa'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from .._fs import atomic_write
from ..errors import UnsafePathError, WarmstartError
from .index import IndexedFile, SnapshotRow
from .layout import Layout
from .paths import check_name, check_relpath, hub_blob_name, inside

log = logging.getLogger(__name__)

_HEX40 = re.compile(r"[0-9a-f]{40}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def link_atomic(target: str, where: Path) -> None:
    """Make ``where`` a symlink to ``target`` unless it already is one."""
    try:
        if os.readlink(where) == target:
            return
    except OSError:
        pass
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(f".{where.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, where)


def _write_text(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def repo_folder(repo_id: str) -> str:
    """The Hugging Face cache folder name of a model repo: ``models--org--name``."""
    return "models--" + repo_id.replace("/", "--")


def hub_snapshot_dir(layout: Layout, repo_id: str, commit: str) -> Path:
    """``hub/models--org--name/snapshots/<commit>``, checked to lie inside the hub directory."""
    repo = layout.hub / check_name(repo_folder(repo_id), "repository folder")
    return inside(layout.hub, repo / "snapshots" / check_name(commit, "commit"), what="hub snapshot")


#: the file in a ``snapshots/<scheme>/<name>/`` folder that names its source exactly (read by ``read_views``)
SOURCE_FILE = ".source"


def source_folder(source_key: str) -> str:
    """The folder name of a non-Hub source: its location made readable (cut to 96 characters), then 12 hex
    of the sha256 of the whole key, so two different keys never share a folder.

    >>> source_folder("http://h/a-b/x.bin") != source_folder("http://h/a~b/x.bin")
    True
    >>> source_folder("http://h/a-b/x.bin")[:14]
    'h--a-b--x.bin-'
    """
    _, _, loc = source_key.partition("://")
    readable = "".join(c if c.isalnum() or c in "-._" else "-" for c in loc.replace("/", "--"))[:96]
    return f"{readable}-{hashlib.sha256(source_key.encode()).hexdigest()[:12]}"


def _legacy_folder(source_key: str) -> str:
    """The folder name earlier versions gave a source (ambiguous: cut at 200, ``a-b`` same as ``a~b``)."""
    _, _, loc = source_key.partition("://")
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in loc.replace("/", "--"))[:200]


def source_snapshot_dir(layout: Layout, source_key: str, revision: str, *, legacy: bool = False) -> Path:
    """``snapshots/<scheme>/<name>/<revision>``, checked to lie inside the snapshots directory
    (``legacy``: under the folder name earlier versions used, to remove views they made)."""
    scheme, _, _ = source_key.partition("://")
    folder = _legacy_folder(source_key) if legacy else source_folder(source_key)
    name = revision.replace("/", "-").replace(":", "-")
    snap = layout.snapshots / check_name(scheme, "scheme") / check_name(folder, "source name") / check_name(
        name, "revision")
    return inside(layout.snapshots, snap, what="snapshot view")


def snapshot_dir(layout: Layout, source: str, revision: str, kind: str = "source") -> Path:
    """The view directory of a recorded snapshot: the Hub layout for Hub sources, else ``snapshots/``."""
    if source.startswith("hf://") and kind != "derived" and "#" not in source:
        return hub_snapshot_dir(layout, source.removeprefix("hf://"), revision)
    return source_snapshot_dir(layout, source, revision)


def hub_view(layout: Layout, repo_id: str, commit: str, files: Iterable[IndexedFile],
             refs: dict[str, str] | None = None) -> Path:
    """Make (or complete, or repair) ``hub/models--org--name/snapshots/<commit>``; returns that directory.
    A link that points elsewhere is re-pointed."""
    snap = hub_snapshot_dir(layout, repo_id, commit)
    repo = snap.parent.parent
    for f in files:
        path = check_relpath(f.path)
        name = hub_blob_name(f.etag, f.digest)
        blob_rel = os.path.relpath(layout.blob(f.digest), repo / "blobs")
        link_atomic(blob_rel, inside(layout.hub, repo / "blobs" / name, what="hub blob link"))
        depth = path.count("/")
        where = inside(layout.hub, inside(snap, snap / path, what="snapshot file"), what="snapshot file")
        link_atomic("../" * (depth + 2) + f"blobs/{name}", where)
    snap.mkdir(parents=True, exist_ok=True)
    for name, rev in (refs or {}).items():
        if name != commit:
            check_relpath(name, "revision")
            _write_text(inside(layout.hub, repo / "refs" / name, what="refs file"), check_name(rev, "commit"))
    return snap


def source_view(layout: Layout, source_key: str, revision: str, files: Iterable[IndexedFile]) -> Path:
    """A snapshot folder for non-Hub sources: ``snapshots/<scheme>/<name>/<revision>/``."""
    snap = source_snapshot_dir(layout, source_key, revision)
    for f in files:
        where = inside(snap, snap / check_relpath(f.path), what="snapshot file")
        inside(layout.snapshots, where, what="snapshot file")
        link_atomic(os.path.relpath(layout.blob(f.digest), where.parent), where)
    snap.mkdir(parents=True, exist_ok=True)
    _write_text(inside(layout.snapshots, snap.parent / SOURCE_FILE, what="source name file"), source_key)
    _remove_legacy_view(layout, source_key, revision, snap)
    return snap


def wrong_entries(layout: Layout, snap: Path, files: Iterable[IndexedFile]) -> list[str]:
    """The files of a view that do not resolve to the blob their snapshot records (missing ones too):
    each must be a symlink whose whole chain ends at ``blobs/sha256/…/<digest>``."""
    wrong = []
    for f in files:
        where = snap / f.path
        try:
            ok = os.path.islink(where) and os.path.realpath(where) == os.path.realpath(layout.blob(f.digest))
        except (OSError, ValueError):
            ok = False
        if not ok:
            wrong.append(f.path)
    return wrong


def view_is_complete(snap: Path, files: Iterable[IndexedFile], layout: Layout | None = None) -> bool:
    """Every file of the view is there and, given ``layout``, resolves to its recorded blob."""
    files = list(files)
    if layout is not None:
        return not wrong_entries(layout, snap, files)
    return all(os.path.lexists(snap / f.path) for f in files)


def clear_entry(root: Path, rel: str, layout: Layout) -> None:
    """Remove what stands where the view entry ``root/rel`` belongs: the entry itself (a wrong link, a
    file, a directory), or the first component on its way that is a link or not a directory. Nothing
    outside ``root`` (nor the cache home) is touched: every removal is checked by :func:`inside`, rmtree
    follows no link."""
    cur = root
    parts = check_relpath(rel).split("/")
    for i, part in enumerate(parts):
        cur = cur / part
        if not os.path.lexists(cur):
            return
        if i == len(parts) - 1 or os.path.islink(cur) or not cur.is_dir():
            where = inside(layout.home, inside(root, cur, what="view entry"), what="view entry")
            if where.is_dir() and not where.is_symlink():
                shutil.rmtree(where)
            else:
                os.unlink(where)
            return


def rebuild_view(layout: Layout, row: SnapshotRow, files: list[IndexedFile], bad: list[str],
                 refs: dict[str, str]) -> Path:
    """Clear what is in the way of each wrong entry ``bad`` (inside the view only), then make the view of
    ``row`` again; ``refs``: the refs naming its revision. No download: the blobs are local."""
    snap = snapshot_dir(layout, row.source, row.revision, row.kind)
    if snap.is_symlink():
        os.unlink(inside(layout.home, snap, what="snapshot view"))
    for p in bad:
        clear_entry(snap, p, layout)
    if not snap.is_relative_to(layout.hub):
        return source_view(layout, row.source, row.revision, files)
    repo = snap.parent.parent
    for f in files:
        link = repo / "blobs" / hub_blob_name(f.etag, f.digest)
        if os.path.lexists(link) and os.path.realpath(link) != os.path.realpath(layout.blob(f.digest)):
            clear_entry(repo / "blobs", link.name, layout)
    return hub_view(layout, row.source.removeprefix("hf://"), row.revision, files, refs)


def remove_views(layout: Layout, row: SnapshotRow, files: Iterable[IndexedFile], *,
                 still_named: set[tuple[str | None, str]], last: bool) -> None:
    """Remove a dropped snapshot's views: its directory and, in the Hub layout, the refs naming its
    revision, the ``blobs/<etag>`` links of ``files`` that no remaining snapshot of the repo names
    (``still_named``: their ``(etag, digest)``), and the repo folder once the ``last`` snapshot is gone.
    Every path is checked to lie inside its directory first; a view whose name would not (a record made
    before names were checked) is left alone and logged."""
    try:
        snap = snapshot_dir(layout, row.source, row.revision, row.kind)
    except UnsafePathError as exc:
        log.warning("not removing the view of %s: %s", row.source, exc)
        return
    if not snap.is_symlink():  # rmtree never follows links inside; a link in its place is not ours
        shutil.rmtree(snap, ignore_errors=True)
    if not snap.is_relative_to(layout.hub):
        _remove_source_folder(layout, row, snap)
        return
    repo = snap.parent.parent
    refs_dir = repo / "refs"
    if refs_dir.is_dir() and not refs_dir.is_symlink():
        for ref in list(refs_dir.rglob("*")):
            try:
                if ref.is_file() and not ref.is_symlink() and ref.read_text().strip() == row.revision:
                    os.unlink(inside(layout.hub, ref, what="refs file"))
            except (OSError, UnsafePathError):
                pass
    still = {hub_blob_name(etag, digest) for etag, digest in still_named}
    for f in files:
        name = hub_blob_name(f.etag, f.digest)
        if name not in still:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(inside(layout.hub, repo / "blobs" / name, what="hub blob link"))
    if last and not repo.is_symlink():
        shutil.rmtree(inside(layout.hub, repo, what="hub repository"), ignore_errors=True)


def _remove_legacy_view(layout: Layout, source_key: str, revision: str, snap: Path) -> None:
    """Remove the view of ``source_key@revision`` an earlier version made under its old folder name (the
    view at ``snap``, under the new name, replaces it)."""
    try:
        old = source_snapshot_dir(layout, source_key, revision, legacy=True)
    except UnsafePathError:
        return
    if old != snap and old.is_dir() and not old.is_symlink() and not old.parent.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            old.parent.rmdir()


def _remove_source_folder(layout: Layout, row: SnapshotRow, snap: Path) -> None:
    """After a non-Hub view is removed: remove the view an earlier version made under its old folder name,
    and the source's folder once no revision is left in it."""
    _remove_legacy_view(layout, row.source, row.revision, snap)
    folder = snap.parent
    with contextlib.suppress(OSError):
        if not folder.is_symlink() and all(p.name == SOURCE_FILE for p in folder.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(inside(layout.snapshots, folder / SOURCE_FILE, what="source name file"))
            folder.rmdir()


def memory_view(root: Path, source: str, revision: str, files: Iterable, blob: Callable[[str], Path]) -> Path:
    """The RAM tier's view of a snapshot, ``<root>/views/<hash of source@revision>/<path>``, each file a
    relative link to ``blob(digest)`` (a blob of that tier); returns the directory."""
    view = root / "views" / hashlib.sha256(f"{source}@{revision}".encode()).hexdigest()[:24]
    for f in files:
        where = inside(root, view / check_relpath(f.path), what="RAM tier view file")
        link_atomic(os.path.relpath(blob(f.digest), where.parent), where)
    return view


def _blob_of(layout: Layout, link: Path, target: str) -> tuple[str, int] | None:
    """``(digest, size)`` of the blob a link's ``target`` (relative to the link's directory) names, if it
    is a blob on disk."""
    where = Path(os.path.normpath(link.parent / target))
    digest = where.name
    if not _DIGEST.fullmatch(digest) or where != layout.blob(digest):
        return None
    try:
        return digest, os.stat(where).st_size
    except OSError:
        return None


def _walk(root: Path) -> list[Path]:
    """Every file and link under ``root``, without following symlinked directories."""
    return [Path(dirpath) / n for dirpath, _dirs, names in os.walk(root) for n in names]


class DirectoryConflict(WarmstartError, FileExistsError):
    """A file in the target directory is not ours to replace."""


def _manifest(layout: Layout, dest: Path) -> Path:
    """Where warmstart records what it copied into a ``--to`` directory (``{path: sha256}``): in the
    cache home, so the directory holds nothing but the model's files."""
    return layout.home / "views" / (hashlib.sha256(str(dest).encode()).hexdigest()[:32] + ".json")


def plain_view(layout: Layout, dest: Path, files: Iterable[IndexedFile], *, mode: str = "symlink") -> Path:
    """Make ``dest`` a plain directory of the model's files for tools that take a path.

    ``mode``: ``symlink`` (default, absolute links to the blobs), ``hardlink`` (same filesystem; falls
    back to copy) or ``copy``. Symlinks, hardlinks of the blob and files that warmstart copied there
    before (recorded in ``<home>/views/``) are replaced when their content differs; any other
    existing file is left untouched and reported.
    """
    if mode not in ("symlink", "hardlink", "copy"):
        raise ValueError(f"unknown view mode {mode!r}: use symlink, hardlink or copy")
    dest = Path(dest).expanduser().absolute()
    dest.mkdir(parents=True, exist_ok=True)
    try:  # {path: [sha256, size, mtime_ns]} of the copies warmstart made here
        made: dict[str, list] = json.loads(_manifest(layout, dest).read_text())
    except (OSError, ValueError):
        made = {}

    def ours(where: Path, path: str) -> bool:
        """An existing copy warmstart made and nobody changed since."""
        rec = made.get(path)
        st = where.stat()
        return isinstance(rec, list) and len(rec) == 3 and [st.st_size, st.st_mtime_ns] == rec[1:]

    files = list(files)
    for f in files:  # check everything before changing anything
        where = inside(dest, dest / check_relpath(f.path), what="--to file")
        if where.exists() and not where.is_symlink() and not ours(where, f.path):
            st, bst = where.stat(), layout.blob(f.digest).stat()
            if (st.st_ino, st.st_dev) != (bst.st_ino, bst.st_dev):
                raise DirectoryConflict(f"{where} exists and was not made by warmstart (or was changed "
                                        "since); remove it or choose another --to directory")
    for f in files:
        blob = layout.blob(f.digest)
        where = inside(dest, dest / f.path, what="--to file")
        if mode == "symlink":
            link_atomic(str(blob), where)
            made.pop(f.path, None)
            continue
        if where.exists() and not where.is_symlink():
            st, bst = where.stat(), blob.stat()
            if (st.st_ino, st.st_dev) == (bst.st_ino, bst.st_dev) or made.get(f.path, [None])[0] == f.digest:
                continue  # already this content
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = where.with_name(f".{where.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            if mode == "hardlink":
                try:
                    os.link(blob, tmp)
                except OSError:
                    shutil.copyfile(blob, tmp)
            else:
                shutil.copyfile(blob, tmp)
            os.replace(tmp, where)
            st = os.stat(where)
            if st.st_ino != blob.stat().st_ino:
                made[f.path] = [f.digest, st.st_size, st.st_mtime_ns]
        finally:
            if tmp.exists():
                tmp.unlink()
    if made:
        _write_text(_manifest(layout, dest), json.dumps(made, indent=0, sort_keys=True))
    return dest

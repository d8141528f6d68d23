"""OCI registries: ``oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]`` holding a CNCF ModelPack artifact.

A ModelPack artifact is an OCI image manifest whose config has media type
``application/vnd.cncf.model.config.v1+json`` and whose layers are the model's files::

    manifest (sha256:M) ─┬─ config   application/vnd.cncf.model.config.v1+json
                         ├─ layer    application/vnd.cncf.model.weight.v1.raw      (one file, as is)
                         │           annotation org.cncf.model.filepath = model.safetensors
                         └─ layer    application/vnd.cncf.model.weight.config.v1.tar (a tar of files)

Raw layers are stored as blobs directly: the layer digest is the file's sha256, so a file pulled
from the Hub and from a registry is one blob. Tar layers (plain or gzip, opened as what their media
type declares) are fetched and verified against their digest; a first pass over their headers counts
the bytes they unpack to, and the cache makes room for that count (budget and disk) before anything is
written; the entries are then written with every write capped by that count (a decompression bomb
stops at the cap). An entry that would escape the snapshot, is a link, device, fifo or sparse file,
appears twice, or has the name of a raw layer (or of another layer's entry) fails the pull before
anything is published. The revision is the manifest digest.
Blobs move through the shared transfer engine (parallel ranged reads, redirects to storage
followed, the bearer token dropped on a host change).

>>> layer_kind("application/vnd.cncf.model.weight.v1.raw"), layer_kind("application/vnd.cncf.model.doc.v1.tar")
('raw', 'tar')
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import threading
import uuid
import zlib
from pathlib import Path

from ..config import format_size
from ..errors import CacheFullError, IntegrityError, TransferError, UnsafePathError, WarmstartError
from ..refs import Ref
from .base import Listing, RemoteFile, Source, safe_relpath
from .ociclient import Registry

log = logging.getLogger(__name__)

MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"
_LAYER = re.compile(r"application/vnd\.cncf\.model\.(weight|weight\.config|doc|code|dataset)\.v1\.(raw|tar|tar\+gzip)")


class UnsupportedArtifactError(WarmstartError, ValueError):
    """The manifest is not a ModelPack artifact warmstart can read (unknown media type)."""


def layer_kind(media_type: str) -> str:
    """``raw`` or ``tar`` (plain or gzip) for a ModelPack layer media type; raises for anything else."""
    m = _LAYER.fullmatch(media_type or "")
    if not m:
        raise UnsupportedArtifactError(
            f"layer media type {media_type!r} is not a ModelPack layer warmstart supports "
            "(application/vnd.cncf.model.<weight|weight.config|doc|code|dataset>.v1.<raw|tar|tar+gzip>)")
    return "raw" if m.group(2) == "raw" else "tar"


def layer_compression(media_type: str) -> str:
    """``gzip`` for a ``tar+gzip`` layer, else ``""`` (a layer is opened as what it declares)."""
    return "gzip" if media_type.endswith("+gzip") else ""


@dataclasses.dataclass(frozen=True)
class OciFile(RemoteFile):
    """A layer: ``kind`` is ``raw`` (the file itself) or ``tar`` (files to unpack)."""

    kind: str = "raw"
    compression: str = ""  # tar layers: "" or "gzip"


class OciSource(Source):
    """ModelPack artifacts in OCI registries."""

    schemes = ("oci",)
    default_revision = "latest"

    def resolve(self, ref: Ref) -> Listing:
        host, repo = ref.location.split("/", 1)
        reg = Registry(self.settings, host, repo)
        try:
            manifest, digest = self._manifest(reg, ref, ref.revision or "latest")
        finally:
            reg.close()
        cfg = manifest.get("config") or {}
        if cfg.get("mediaType") != MODEL_CONFIG and manifest.get("artifactType") != MODEL_ARTIFACT:
            raise UnsupportedArtifactError(
                f"{ref}: not a ModelPack artifact (config media type {cfg.get('mediaType')!r}, artifact type "
                f"{manifest.get('artifactType')!r}); expected {MODEL_CONFIG}")
        files = []
        for layer in manifest.get("layers") or ():
            kind = layer_kind(layer.get("mediaType", ""))
            ldigest = str(layer.get("digest", ""))
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", ldigest):
                raise UnsupportedArtifactError(f"{ref}: layer digest {ldigest!r} is not sha256:<64 hex>")
            size = layer.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 62:
                raise UnsupportedArtifactError(f"{ref}: layer {ldigest} has size {size!r}, not a byte count")
            ann = layer.get("annotations") or {}
            if not isinstance(ann, dict):
                raise UnsupportedArtifactError(f"{ref}: layer {ldigest} has annotations that are not an object")
            path = ann.get(FILEPATH) or ann.get(TITLE)
            if kind == "tar":
                path = f".layers/{ldigest[7:19]}.tar"  # a name for include/exclude; its entries are the files
            elif not path:
                raise UnsupportedArtifactError(f"{ref}: raw layer {ldigest} has no {FILEPATH} annotation")
            files.append(OciFile(
                path=safe_relpath(path), size=size, url=reg.url(f"blobs/{ldigest}"),
                sha256=ldigest[7:], etag=ldigest[7:], headers=dict(reg.auth), kind=kind,
                compression=layer_compression(layer.get("mediaType", "")),
            ))
        return Listing(ref.with_revision(digest), digest, tuple(files))

    def _manifest(self, reg: Registry, ref: Ref, reference: str, depth: int = 0) -> tuple[dict, str]:
        data, headers = reg.get_manifest(reference)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        claimed = headers.get("docker-content-digest", "")
        if (reference.startswith("sha256:") and reference != digest) or (
                claimed.startswith("sha256:") and claimed != digest):
            raise IntegrityError(f"{ref}: the manifest's bytes hash to {digest}, not {claimed or reference}; "
                                 "the registry served corrupt data")
        try:
            manifest = json.loads(data)
        except ValueError:
            raise UnsupportedArtifactError(f"{ref}: the manifest is not JSON") from None
        media = manifest.get("mediaType") or headers.get("content-type", "").split(";")[0]
        if media == OCI_INDEX and depth == 0:
            for m in manifest.get("manifests") or ():
                if isinstance(m, dict) and m.get("artifactType") in (MODEL_ARTIFACT, None):
                    if not re.fullmatch(r"sha256:[0-9a-f]{64}", str(m.get("digest", ""))):
                        raise UnsupportedArtifactError(f"{ref}: the index names a manifest digest that is not "
                                                       "sha256:<64 hex>")
                    return self._manifest(reg, ref, m["digest"], 1)
            raise UnsupportedArtifactError(f"{ref}: the index lists no ModelPack manifest")
        if media not in (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"):
            raise UnsupportedArtifactError(f"{ref}: unknown manifest media type {media!r}; expected {OCI_MANIFEST}")
        return manifest, digest

    def materialize(self, listing, files, cache, settings, opts):
        """Raw-only artifacts go through the usual engine path (``None``); with tar layers, fetch every
        layer here and unpack the tars into blobs. Returns (entries, bytes downloaded, bytes served from
        the cache): files unpacked from a tar fetched now are not "from the cache"."""
        if not any(getattr(f, "kind", "raw") == "tar" for f in files):
            return None
        from ..cache.index import FileEntry
        from ..transfer import FileJob, Transfer

        row = cache.snapshot(self.key(listing.ref), listing.revision)
        if row is not None:
            known = cache.index.snapshot_files(row.id)
            if known and cache.complete(known):
                return known, 0, sum(f.size for f in known)
        entries: list[FileEntry] = []
        reused = 0
        jobs = []
        for f in files:
            if f.kind == "raw" and cache.store.has(f.sha256 or "", f.size):
                entries.append(FileEntry(f.path, f.sha256 or "", f.size or 0, f.etag))
                reused += f.size or 0
            else:
                jobs.append(FileJob(f.path, f.url, f.key, f.size, f.sha256, dict(f.headers), f.ranges))
        by_name = {f.path: f for f in files}
        lock = threading.Lock()
        tars: dict[str, Path] = {}  # tar layer name -> its verified bytes, moved aside until unpacked
        cache.ensure_room(sum(j.size or 0 for j in jobs))  # tar layers: their unpacked size is counted later

        def on_file(result) -> None:
            f = by_name[result.job.name]
            if result.path is None:  # another process fetched it
                if f.kind == "tar":
                    raise TransferError(f"tar layer {f.path}: another process's download vanished; pull again")
                return
            if f.kind == "raw":
                cache.store.publish(result.path, result.digest)
                cache.index.add_blob(result.digest, result.size)
                with lock:
                    entries.append(FileEntry(f.path, result.digest, result.size, f.etag))
            else:
                aside = cache.layout.tmp / f"oci-layer-{uuid.uuid4().hex}.tar"
                os.replace(result.path, aside)
                with lock:
                    tars[f.path] = aside

        engine = Transfer(cache.layout.tmp, cache.layout.locks, min_connections=settings.min_connections,
                          max_connections=settings.max_connections, chunk_size=settings.chunk_size,
                          progress=getattr(opts, "progress", None))
        try:
            stats = engine.run(jobs, on_file)
            # every name the snapshot will hold, and where it came from: raw layers of the whole listing
            taken = {f.path: "a raw layer" for f in listing.files if getattr(f, "kind", "raw") == "raw"}
            for f in files:  # one layer at a time, in manifest order: each counted, then unpacked
                if f.path in tars:
                    entries.extend(unpack_tar(cache, tars[f.path], f.path, getattr(f, "compression", ""),
                                              taken=taken, protect={e.digest for e in entries}))
        finally:
            for path in tars.values():
                path.unlink(missing_ok=True)
        return entries, stats.downloaded, reused


# -- tar layers ---------------------------------------------------------------------------------------
#: a layer with more entries than this is refused (every entry costs memory while it is checked)
MAX_TAR_ENTRIES = 100_000
#: pax and GNU long-name headers larger than this are refused (they are read into memory)
MAX_TAR_META = 1 << 20
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)
_PLAIN_FILES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeError)


def _bad_tar(layer: str, why: str) -> IntegrityError:
    return IntegrityError(f"tar layer {layer}: {why}; its bytes match the layer digest, so the registry serves "
                          "a broken artifact: ask its publisher to rebuild it")


def _not_regular(layer: str, name: str, kind: str) -> UnsafePathError:
    return UnsafePathError(f"tar layer {layer}: entry {name!r} is a {kind}; ModelPack layers may hold only "
                           "regular files, refusing to write anything")


def _open_layer(path: Path, compression: str):
    return gzip.open(path, "rb") if compression == "gzip" else open(path, "rb")  # noqa: SIM115


def _skip(fh, n: int, layer: str) -> None:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            raise _bad_tar(layer, "it ends inside an entry")
        n -= len(chunk)


def _pax(data: bytes, layer: str) -> dict[str, str]:
    """The records of a pax extended header (``"<len> key=value\\n"``...)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        m = re.match(rb"(\d{1,7}) ", data[pos:pos + 9])
        length = int(m.group(1)) if m else 0
        if not m or length <= len(m.group(0)) or pos + length > len(data):
            raise _bad_tar(layer, "it has a malformed pax header")
        key, _, value = data[pos + len(m.group(0)):pos + length].rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def scan_tar(path: Path, layer: str, compression: str, limit: int) -> int:
    """First pass over a tar layer's headers, writing nothing: the bytes its entries unpack to.

    Raises before anything is written: :class:`CacheFullError` as soon as the declared sizes pass
    ``limit`` (so a decompression bomb costs at most ``limit`` bytes of inflating, never of disk),
    :class:`UnsafePathError` for links, devices, fifos and sparse files, and :class:`IntegrityError`
    for a malformed archive, more than :data:`MAX_TAR_ENTRIES` entries or oversized metadata headers.
    Stops where :mod:`tarfile` stops (the first zero or invalid block)."""
    total = entries = 0
    pax_size: int | None = None
    long_name: str | None = None
    try:
        with _open_layer(path, compression) as fh:
            while True:
                block = fh.read(tarfile.BLOCKSIZE)
                try:
                    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                except tarfile.EOFHeaderError:
                    break
                except tarfile.HeaderError as exc:
                    if entries == 0 and total == 0:
                        raise _bad_tar(layer, f"it is not a tar archive ({exc})") from None
                    break  # tarfile ends the archive here too
                entries += 1
                if entries > MAX_TAR_ENTRIES:
                    raise _bad_tar(layer, f"it has more than {MAX_TAR_ENTRIES} entries")
                if info.size < 0:
                    raise _bad_tar(layer, f"entry {info.name!r} has a negative size")
                if info.type in _META_TYPES:
                    if info.size > MAX_TAR_META:
                        raise _bad_tar(layer, f"it has a {info.size}-byte metadata header (at most {MAX_TAR_META})")
                    data = fh.read(-(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)[:info.size]
                    if len(data) < info.size:
                        raise _bad_tar(layer, "it ends inside a metadata header")
                    if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                        long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
                        continue
                    records = _pax(data, layer)
                    if any(k.startswith("GNU.sparse") for k in records):
                        raise _not_regular(layer, records.get("path", info.name), "sparse file")
                    if "size" in records:
                        if info.type == tarfile.XGLTYPE or not records["size"].isdigit():
                            raise _bad_tar(layer, f"it has a pax size {records['size']!r} it cannot apply")
                        pax_size = int(records["size"])
                    long_name = records.get("path", long_name)
                    continue
                name, size = long_name or info.name, info.size if pax_size is None else pax_size
                long_name, pax_size = None, None
                if info.type == tarfile.DIRTYPE:
                    continue
                if info.type not in _PLAIN_FILES:
                    kind = ("link" if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else
                            "sparse file" if info.type == tarfile.GNUTYPE_SPARSE else "special file")
                    raise _not_regular(layer, name, kind)
                total += size
                if total > limit:
                    raise CacheFullError(
                        f"tar layer {layer} unpacks to more than {format_size(limit)}, the room the cache has "
                        "(WARMSTART_MAX_SIZE, else the free disk); nothing was written. Raise the budget or "
                        "free space if the model is really this large")
                _skip(fh, -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, layer)
    except _TAR_ERRORS as exc:
        raise _bad_tar(layer, f"it is not a valid tar{'+gzip' if compression else ''} ({exc})") from None
    return total


def _room(cache) -> int:
    """The most bytes a layer may unpack to: the budget, else the free disk above the reserve."""
    from ..cache.manager import DISK_RESERVE

    if cache.max_size is not None:
        return cache.max_size
    return max(0, shutil.disk_usage(cache.layout.home).free - DISK_RESERVE)




def _check_names(layer: str, names: list[str], taken: dict[str, str]) -> None:
    """No name twice (within a layer, across layers, or over a raw layer), and no file that is also
    another file's directory: each would leave which bytes a path holds to the order of writes."""
    for name in names:
        if name in taken:
            raise UnsafePathError(f"tar layer {layer}: entry {name!r} is also in {taken[name]}; refusing an "
                                  "artifact that names one file twice")
        taken[name] = f"tar layer {layer}"
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in taken:
                raise UnsafePathError(f"tar layer {layer}: entry {name!r} lies under {parent!r}, which is a file "
                                      f"in {taken[parent]}; refusing to write anything")


def unpack_tar(cache, tar_path: Path, layer: str, compression: str = "", *, taken: dict[str, str] | None = None,
               protect: set[str] = frozenset()) -> list:
    """Unpack a verified tar layer into blobs, all or nothing.

    First :func:`scan_tar` counts the unpacked bytes and the cache makes room for them (the budget
    and the disk); then every entry is written to ``tmp/`` with each write checked against the sizes
    the scan counted, names are checked (:func:`~warmstart.sources.base.safe_relpath`, no duplicates,
    no collision with a raw layer, see :func:`_check_names`), and only then is anything published.
    A failure removes what was written."""
    from ..cache.index import FileEntry

    taken = {} if taken is None else taken
    allowed = scan_tar(tar_path, layer, compression, _room(cache))
    cache.ensure_room(allowed, protect=set(protect))
    written: list[tuple[str, Path, str, int]] = []
    try:
        try:
            _extract(tar_path, layer, compression, allowed, cache.layout.tmp, written)
        except _TAR_ERRORS as exc:
            raise _bad_tar(layer, f"it is not a valid tar ({exc})") from None
        _check_names(layer, [name for name, *_ in written], taken)
        out = []
        for name, tmp, digest, size in written:
            if cache.store.has(digest):
                os.unlink(tmp)
            else:
                cache.store.publish(tmp, digest)
            cache.index.add_blob(digest, size)
            out.append(FileEntry(name, digest, size, digest))
        return out
    finally:
        for _, tmp, _, _ in written:
            tmp.unlink(missing_ok=True)


def _extract(tar_path: Path, layer: str, compression: str, allowed: int, tmp_dir: Path,
             written: list[tuple[str, Path, str, int]]) -> None:
    """Second pass: write each regular entry to ``tmp_dir`` (appending to ``written`` as it goes, so
    the caller can remove them), never more than ``allowed`` bytes in all nor more than an entry's
    declared size."""
    mode = "r:gz" if compression == "gzip" else "r:"
    total = 0
    with tarfile.open(tar_path, mode) as tf:
        count = 0
        while (m := tf.next()) is not None:
            count += 1
            if count > MAX_TAR_ENTRIES:
                raise _bad_tar(layer, f"it has more than {MAX_TAR_ENTRIES} entries")
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isdir():
                if name not in ("", "."):
                    safe_relpath(name.rstrip("/"))
                continue
            if not m.isreg() or m.sparse is not None or m.type == tarfile.GNUTYPE_SPARSE:
                kind = ("link" if (m.issym() or m.islnk()) else
                        "sparse file" if m.type == tarfile.GNUTYPE_SPARSE or m.sparse is not None else "special file")
                raise _not_regular(layer, m.name, kind)
            name = safe_relpath(name)
            src = tf.extractfile(m)
            assert src is not None
            tmp = tmp_dir / f"untar-{uuid.uuid4().hex}"
            h, size = hashlib.sha256(), 0
            with src, open(tmp, "wb") as dst:
                written.append((name, tmp, "", 0))
                while chunk := src.read(8 << 20):
                    size += len(chunk)
                    if size > m.size or total + size > allowed:
                        raise CacheFullError(
                            f"tar layer {layer}: entry {name!r} unpacks to more bytes than the layer declares "
                            f"({format_size(allowed)} in all); stopped, nothing was kept")
                    h.update(chunk)
                    dst.write(chunk)
            if size != m.size:
                raise _bad_tar(layer, f"entry {name!r} holds {size} bytes, not the {m.size} it declares")
            total += size
            written[-1] = (name, tmp, h.hexdigest(), size)

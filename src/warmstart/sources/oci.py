"""OCI registries: ``oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]`` holding a CNCF ModelPack artifact.

A ModelPack artifact is an OCI image manifest whose config has media type
``application/vnd.cncf.model.config.v1+json`` and whose layers are the model's files::

    manifest (sha256:M) ─┬─ config   application/vnd.cncf.model.config.v1+json
                         ├─ layer    application/vnd.cncf.model.weight.v1.raw      (one file, as is)
                         │           annotation org.cncf.model.filepath = model.safetensors
                         └─ layer    application/vnd.cncf.model.weight.config.v1.tar (a tar of files)

Raw layers are stored as blobs directly: the layer digest is the file's sha256, so a file pulled
from the Hub and from a registry is one blob. Tar layers are fetched (verified against their digest),
then unpacked into the snapshot's files; an entry that would escape the snapshot, or that is a link
or a device, fails the pull before anything is published. The revision is the manifest digest.
Blobs move through the shared transfer engine (parallel ranged reads, redirects to storage
followed, the bearer token dropped on a host change).

>>> layer_kind("application/vnd.cncf.model.weight.v1.raw"), layer_kind("application/vnd.cncf.model.doc.v1.tar")
('raw', 'tar')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tarfile
import threading
import uuid
from pathlib import Path

from ..errors import IntegrityError, UnsafePathError, WarmstartError
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


@dataclasses.dataclass(frozen=True)
class OciFile(RemoteFile):
    """A layer: ``kind`` is ``raw`` (the file itself) or ``tar`` (files to unpack)."""

    kind: str = "raw"


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
            ann = layer.get("annotations") or {}
            path = ann.get(FILEPATH) or ann.get(TITLE)
            if kind == "tar":
                path = f".layers/{ldigest[7:19]}.tar"  # a name for include/exclude; its entries are the files
            elif not path:
                raise UnsupportedArtifactError(f"{ref}: raw layer {ldigest} has no {FILEPATH} annotation")
            files.append(OciFile(
                path=safe_relpath(path), size=int(layer.get("size", 0)), url=reg.url(f"blobs/{ldigest}"),
                sha256=ldigest[7:], etag=ldigest[7:], headers=dict(reg.auth), kind=kind,
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
                if m.get("artifactType") in (MODEL_ARTIFACT, None):
                    return self._manifest(reg, ref, m["digest"], 1)
            raise UnsupportedArtifactError(f"{ref}: the index lists no ModelPack manifest")
        if media not in (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"):
            raise UnsupportedArtifactError(f"{ref}: unknown manifest media type {media!r}; expected {OCI_MANIFEST}")
        return manifest, digest

    def materialize(self, listing, files, cache, settings, opts):
        """Raw-only artifacts go through the usual engine path (``None``); with tar layers, fetch every
        layer here and unpack the tars into blobs."""
        if not any(getattr(f, "kind", "raw") == "tar" for f in files):
            return None
        from ..cache.index import FileEntry
        from ..transfer import FileJob, Transfer

        row = cache.snapshot(self.key(listing.ref), listing.revision)
        if row is not None:
            known = cache.index.snapshot_files(row.id)
            if known and cache.complete(known):
                return known, 0
        entries: list[FileEntry] = []
        lock = threading.Lock()
        jobs = [FileJob(f.path, f.url, f.key, f.size, f.sha256, dict(f.headers), f.ranges) for f in files
                if not (getattr(f, "kind", "raw") == "raw" and cache.store.has(f.sha256 or "", f.size))]
        by_name = {f.path: f for f in files}
        for f in files:
            if f.path not in {j.name for j in jobs}:
                entries.append(FileEntry(f.path, f.sha256 or "", f.size or 0, f.etag))
        cache.ensure_room(2 * sum(j.size or 0 for j in jobs))  # tar layers are unpacked next to the tar

        def on_file(result) -> None:
            f = by_name[result.job.name]
            if result.path is None:  # another process fetched it
                return
            if f.kind == "raw":
                cache.store.publish(result.path, result.digest)
                cache.index.add_blob(result.digest, result.size)
                made = [FileEntry(f.path, result.digest, result.size, f.etag)]
            else:
                try:
                    made = unpack_tar(cache, result.path, f.path)
                finally:
                    result.path.unlink(missing_ok=True)
            with lock:
                entries.extend(made)

        engine = Transfer(cache.layout.tmp, cache.layout.locks, min_connections=settings.min_connections,
                          max_connections=settings.max_connections, chunk_size=settings.chunk_size,
                          progress=getattr(opts, "progress", None))
        stats = engine.run(jobs, on_file)
        return entries, stats.downloaded


def unpack_tar(cache, tar_path: Path, layer_name: str) -> list:
    """Unpack a verified tar layer into blobs; every entry is checked before anything is published."""
    from ..cache.index import FileEntry

    with tarfile.open(tar_path, "r:*") as tf:
        members = tf.getmembers()
        regular = []
        for m in members:
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isdir():
                safe_relpath(name.rstrip("/") or "x")
                continue
            if not m.isreg():
                kind = "link" if (m.issym() or m.islnk()) else "special file"
                raise UnsafePathError(f"tar layer {layer_name}: entry {m.name!r} is a {kind}; ModelPack layers "
                                      "may hold only regular files, refusing to write anything")
            regular.append((safe_relpath(name), m))
        out = []
        for name, m in regular:
            src = tf.extractfile(m)
            assert src is not None
            tmp = cache.layout.tmp / f"untar-{uuid.uuid4().hex}"
            h = hashlib.sha256()
            with src, open(tmp, "wb") as dst:
                while chunk := src.read(8 << 20):
                    h.update(chunk)
                    dst.write(chunk)
            digest = h.hexdigest()
            if cache.store.has(digest):
                os.unlink(tmp)
            else:
                cache.store.publish(tmp, digest)
            cache.index.add_blob(digest, m.size)
            out.append(FileEntry(name, digest, m.size, digest))
        return out

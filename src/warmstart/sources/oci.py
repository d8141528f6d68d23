"""OCI registries: ``oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]`` holding a CNCF ModelPack artifact.

A ModelPack artifact is an OCI image manifest whose config has media type
``application/vnd.cncf.model.config.v1+json`` and whose layers are the model's files::

    manifest (sha256:M) ─┬─ config   application/vnd.cncf.model.config.v1+json
                         ├─ layer    application/vnd.cncf.model.weight.v1.raw      (one file, as is)
                         │           annotation org.cncf.model.filepath = model.safetensors
                         └─ layer    application/vnd.cncf.model.weight.config.v1.tar (a tar of files)

Raw layers are stored as blobs directly: the layer digest is the file's sha256, so a file pulled
from the Hub and from a registry is one blob. Tar layers (plain or gzip, opened as what their media
type declares) are fetched and verified against their digest by the pull pipeline like any blob, then
unpacked by the hook in :mod:`warmstart.sources.ocitar`. The revision is the manifest digest.
Blobs move through the shared transfer engine (parallel ranged reads, redirects to storage
followed, the bearer token dropped on a host change).

>>> layer_kind("application/vnd.cncf.model.weight.v1.raw"), layer_kind("application/vnd.cncf.model.doc.v1.tar")
('raw', 'tar')
>>> r = OciSource.parse_ref("oci", "ghcr.io/org/qwen:0.5b", "oci://ghcr.io/org/qwen:0.5b", False)
>>> str(r), r.pinned, r.key
('oci://ghcr.io/org/qwen:0.5b', False, 'oci://ghcr.io/org/qwen')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re

from ..errors import IntegrityError, WarmstartError
from ..refs import Malformed, Ref
from .base import Listing, RemoteFile, Source, Unpacker, safe_relpath
from .ociclient import Registry
from .ocitar import TarLayers

log = logging.getLogger(__name__)

MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_REPOSITORY = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+(?:[._-][a-z0-9]+)*)+")
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
    forms = ("oci://REGISTRY/REPO[:TAG|@DIGEST]",)
    default_revision = "latest"

    @classmethod
    def parse_ref(cls, scheme: str, body: str, text: str, bare: bool) -> Ref:
        """``REGISTRY/REPO``, then ``@sha256:DIGEST`` or ``:TAG`` (a colon after the first slash)."""
        if "@" in body:
            loc, rev = body.split("@", 1)
            if not _DIGEST.fullmatch(rev):
                raise Malformed("an OCI digest is sha256:<64 hex>")
        else:
            slash = body.find("/")
            colon = body.rfind(":")
            if colon > slash > 0:
                loc, rev = body[:colon], body[colon + 1:]
                if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", rev):
                    raise Malformed(f"bad tag {rev!r}")
            else:
                loc, rev = body, None
        if "/" not in loc or not _REPOSITORY.fullmatch(loc):
            raise Malformed("an OCI reference is REGISTRY/REPOSITORY")
        return cls.make_ref("oci", loc, rev)

    @classmethod
    def format_ref(cls, ref: Ref) -> str:
        """A tag follows ``:``, a digest ``@`` (as docker and oras write them)."""
        rev = ref.revision
        sep = "@" if rev and rev.startswith("sha256:") else ":"
        return f"oci://{ref.location}" + (f"{sep}{rev}" if rev else "")

    @classmethod
    def is_pinned(cls, ref: Ref) -> bool:
        """A manifest digest is immutable; a tag moves."""
        return (ref.revision or "").startswith("sha256:")

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

    def unpacker(self, listing: Listing) -> Unpacker | None:
        """Tar layers are unpacked by :class:`~warmstart.sources.ocitar.TarLayers`; raw layers are files."""
        if any(getattr(f, "kind", "raw") == "tar" for f in listing.files):
            return TarLayers(listing.files)
        return None

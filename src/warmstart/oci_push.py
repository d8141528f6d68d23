"""Package a cached snapshot as a CNCF ModelPack artifact and push it to an OCI registry.

Every file becomes one raw layer (its blob digest is the file's sha256, so nothing is re-hashed and a
registry that already holds a blob skips its upload), annotated with ``org.cncf.model.filepath``::

    warmstart push-oci hf://Qwen/Qwen2.5-0.5B oci://registry.internal/models/qwen:0.5b

>>> media_type_for("model-00001-of-00002.safetensors"), media_type_for("tokenizer.json")
('application/vnd.cncf.model.weight.v1.raw', 'application/vnd.cncf.model.weight.config.v1.raw')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time

from .config import Settings
from .errors import RefError, TransferError
from .snapshot import Snapshot
from .sources.oci import FILEPATH, MODEL_ARTIFACT, MODEL_CONFIG, OCI_MANIFEST
from .sources.ociclient import Registry
from .sources.registry import parse

log = logging.getLogger(__name__)

WEIGHT_EXT = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz")
DOC_EXT = (".md", ".txt", ".rst", ".pdf")
CODE_EXT = (".py", ".sh", ".ipynb")


def media_type_for(path: str) -> str:
    """The ModelPack layer media type for a file, by its name."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(WEIGHT_EXT):
        kind = "weight"
    elif name.endswith(CODE_EXT):
        kind = "code"
    elif name.endswith(DOC_EXT) or name.startswith(("license", "readme", "notice")):
        kind = "doc"
    else:
        kind = "weight.config"
    return f"application/vnd.cncf.model.{kind}.v1.raw"


@dataclasses.dataclass(frozen=True)
class PushResult:
    target: str  # oci://HOST/REPO@sha256:...
    digest: str
    uploaded: int  # bytes sent
    skipped: int  # bytes the registry already had


def push_snapshot(snap: Snapshot, target: str, settings: Settings, *, name: str | None = None) -> PushResult:
    """Push ``snap`` (complete in the cache) to ``target`` (``oci://HOST/REPO[:TAG]``).

    >>> push_snapshot(warmstart.pull("hf://org/name"), "oci://127.0.0.1:5000/m/name:v1", s)  # doctest: +SKIP
    """
    ref = parse(target)
    if ref.scheme != "oci":
        raise RefError(f"push target {target!r} must be oci://REGISTRY/REPOSITORY[:TAG]")
    if ref.revision and ref.revision.startswith("sha256:"):
        raise RefError(f"push target {target!r}: give a tag (a digest is computed from the content)")
    host, repo = ref.location.split("/", 1)
    reg = Registry(settings, host, repo, push=True)
    uploaded = skipped = 0
    try:
        layers = []
        for f in sorted(snap.files, key=lambda f: f.path):
            digest = f"sha256:{f.digest}"
            if _upload(reg, digest, f.size, f.blob):
                uploaded += f.size
            else:
                skipped += f.size
            layers.append({"mediaType": media_type_for(f.path), "digest": digest, "size": f.size,
                           "annotations": {FILEPATH: f.path}})
        config = json.dumps({
            "descriptor": {"name": name or snap.ref.split("://", 1)[-1].split("@")[0],
                           "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "sourceURL": snap.ref, "revision": snap.revision},
            "config": {},
            "modelfs": {"type": "layers", "diffIds": [lyr["digest"] for lyr in layers]},
        }, sort_keys=True).encode()
        cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
        _upload_bytes(reg, cdigest, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MODEL_ARTIFACT,
            "config": {"mediaType": MODEL_CONFIG, "digest": cdigest, "size": len(config)},
            "layers": layers,
        }, sort_keys=True).encode()
        mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        tag = ref.revision or "latest"
        status, _, data = reg.request("PUT", reg.url(f"manifests/{tag}"), {"Content-Type": OCI_MANIFEST},
                                      body=manifest)
        reg.check(status, f"manifest push to tag {tag!r}", data)
    finally:
        reg.close()
    log.info("pushed %s: %d bytes uploaded, %d already there", target, uploaded, skipped)
    return PushResult(f"oci://{host}/{repo}@{mdigest}", mdigest, uploaded, skipped)


def _exists(reg: Registry, digest: str) -> bool:
    status, _, _ = reg.request("HEAD", reg.url(f"blobs/{digest}"))
    return status == 200


def _start(reg: Registry) -> str:
    import urllib.parse

    status, headers, data = reg.request("POST", reg.url("blobs/uploads/"), body=b"")
    reg.check(status, "blob upload", data)
    location = headers.get("location")
    if not location:
        raise TransferError(f"oci://{reg.host}/{reg.repo}: the registry gave no upload location")
    return urllib.parse.urljoin(reg.base + "/", location)


def _finish_url(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + f"digest={digest}"


def _upload(reg: Registry, digest: str, size: int, path) -> bool:
    """Upload one blob from a file, monolithically; False when the registry already had it."""
    if _exists(reg, digest):
        return False
    location = _start(reg)
    with open(path, "rb") as fh:
        status, _, data = reg.request("PUT", _finish_url(location, digest),
                                      {"Content-Type": "application/octet-stream"}, body=fh, length=size)
    reg.check(status, f"blob {digest} upload", data)
    return True


def _upload_bytes(reg: Registry, digest: str, data: bytes) -> None:
    if _exists(reg, digest):
        return
    location = _start(reg)
    status, _, body = reg.request("PUT", _finish_url(location, digest),
                                  {"Content-Type": "application/octet-stream"}, body=data)
    reg.check(status, f"blob {digest} upload", body)

"""The CNCF distribution registry (Debian package ``docker-registry``) on loopback, for tests.

Test artifacts are pushed with the registry's own HTTP API (:func:`push_blob`, :func:`put_manifest`),
independently of warmstart's client.

Example::

    with DistributionRegistry(tmp_path) as reg:         # http://127.0.0.1:PORT
        push_blob(reg.endpoint, "models/tiny", b"...")
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

BINARY = "docker-registry"


def available() -> bool:
    return shutil.which(BINARY) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DistributionRegistry:
    """``docker-registry serve`` with filesystem storage under ``root``; ``htpasswd`` turns on basic auth."""

    def __init__(self, root: Path, *, htpasswd: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.port = _free_port()
        self.htpasswd = htpasswd
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}"

    def start(self) -> DistributionRegistry:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.htpasswd:
            import bcrypt

            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}" for u, p in self.htpasswd.items()]
            (self.root / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {self.root / 'htpasswd'}\n"
        cfg = self.root / "config.yml"
        cfg.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n" + auth
        )
        self.proc = subprocess.Popen([BINARY, "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "registry.log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()[-500:]}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/v2/", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # 401 with auth on: it is up
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not answer /v2/ within 20 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def __enter__(self) -> DistributionRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _req(method: str, url: str, data: bytes | None = None, headers: dict | None = None,
         auth: tuple[str, str] | None = None):
    h = dict(headers or {})
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    return urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=h), timeout=30)


def push_blob(endpoint: str, repo: str, data: bytes, auth: tuple[str, str] | None = None) -> str:
    """Monolithic upload (POST then PUT ?digest=); returns ``sha256:…``."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = _req("POST", f"{endpoint}/v2/{repo}/blobs/uploads/", b"", auth=auth)
    loc = resp.headers["Location"]
    loc = loc if loc.startswith("http") else endpoint + loc
    _req("PUT", loc + ("&" if "?" in loc else "?") + f"digest={digest}", data,
         {"Content-Type": "application/octet-stream"}, auth=auth)
    return digest


def put_manifest(endpoint: str, repo: str, tag: str, manifest: dict,
                 auth: tuple[str, str] | None = None) -> str:
    body = json.dumps(manifest).encode()
    media = manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
    _req("PUT", f"{endpoint}/v2/{repo}/manifests/{tag}", body, {"Content-Type": media}, auth=auth)
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push_modelpack(endpoint: str, repo: str, tag: str, files: dict[str, bytes], *,
                   tar_files: dict[str, bytes] | None = None, layer_type: str | None = None,
                   raw_names: dict[str, str] | None = None, auth: tuple[str, str] | None = None) -> str:
    """Push ``files`` as raw ModelPack layers (plus one tar layer of ``tar_files``); returns the digest."""
    import io
    import tarfile

    layers = []
    for path, data in files.items():
        d = push_blob(endpoint, repo, data, auth)
        layers.append({"mediaType": layer_type or "application/vnd.cncf.model.weight.v1.raw", "digest": d,
                       "size": len(data),
                       "annotations": {"org.cncf.model.filepath": (raw_names or {}).get(path, path)}})
    if tar_files:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, data in tar_files.items():
                if name.startswith("link:"):
                    info = tarfile.TarInfo(name[5:])
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    tf.addfile(info)
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        tar = buf.getvalue()
        d = push_blob(endpoint, repo, tar, auth)
        layers.append({"mediaType": "application/vnd.cncf.model.weight.config.v1.tar", "digest": d,
                       "size": len(tar), "annotations": {"org.cncf.model.filepath": "configs"}})
    config = json.dumps({"descriptor": {"name": repo}, "modelfs": {"type": "layers"}, "config": {}}).encode()
    cd = push_blob(endpoint, repo, config, auth)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.cncf.model.manifest.v1+json",
                "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": cd,
                           "size": len(config)}, "layers": layers}
    return put_manifest(endpoint, repo, tag, manifest, auth)

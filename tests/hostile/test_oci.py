"""Hostile OCI registries (issue 14, findings 9 and 15), served by a registry written here.

The registry below speaks just enough of the distribution API (``/v2/``, manifests, blobs with Range,
bearer challenges, a token endpoint, blob redirects) to serve artifacts that the real
``docker-registry`` would refuse to hold or that need a misbehaving auth flow: decompression bombs,
tar layers that name a file twice or shadow a raw layer, token realms on another host. All its
digests are correct: every attack gets past digest verification, as it would from a real registry.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import warmstart
from warmstart import ingest
from warmstart.errors import CacheFullError, IntegrityError, TransferError, UnsafePathError
from warmstart.sources import ocitar
from warmstart.sources.ociclient import credentials_refused

RAW = "application/vnd.cncf.model.weight.v1.raw"
TAR = "application/vnd.cncf.model.weight.config.v1.tar"
TGZ = "application/vnd.cncf.model.weight.v1.tar+gzip"
USER, PASSWORD = "alice", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------- the registry
class EvilRegistry:
    """A registry on ``ip`` (any loopback address). ``challenge``: the ``WWW-Authenticate`` answered
    to a ``/v2/`` request whose Authorization is not in ``accept``; ``redirects``: blob digest ->
    absolute URL; ``/token`` answers ``{"token": self.token}``; ``/cdn/<digest>`` serves a blob with
    no auth. ``seen`` records (method, path, Authorization or None) of every request."""

    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.seen: list[tuple[str, str, str | None]] = []
        self.challenge: str | None = None
        self.accept: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.token = "anon-token"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      head: bool = False) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _blob(self, data: bytes, head: bool) -> None:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2) or len(data) - 1), len(data) - 1)
                    self._send(206, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}",
                                                          "Accept-Ranges": "bytes"}, head)
                else:
                    self._send(200, data, {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"},
                               head)

            def _serve(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                owner.seen.append((self.command, path, self.headers.get("Authorization")))
                if path == "/token":
                    return self._send(200, json.dumps({"token": owner.token}).encode(),
                                      {"Content-Type": "application/json"}, head)
                if path.startswith("/cdn/"):
                    return self._blob(owner.blobs[path[5:]], head)
                if not path.startswith("/v2/"):
                    return self._send(404)
                if owner.challenge and self.headers.get("Authorization") not in owner.accept:
                    return self._send(401, b"{}", {"WWW-Authenticate": owner.challenge}, head)
                m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
                if not m:
                    return self._send(200, b"{}", {}, head)
                repo, what, ref = m.groups()
                if what == "manifests":
                    body = owner.manifests.get((repo, ref))
                    if body is None:
                        return self._send(404, b"{}", {}, head)
                    return self._send(200, body, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                                  "Docker-Content-Digest": sha(body)}, head)
                if ref in owner.redirects:
                    return self._send(307, b"", {"Location": owner.redirects[ref]}, head)
                if ref not in owner.blobs:
                    return self._send(404, b"{}", {}, head)
                return self._blob(owner.blobs[ref], head)

        self.server = ThreadingHTTPServer((ip, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        ip, port = self.server.server_address[:2]
        return f"{ip}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def auth_seen(self, prefix: str = "") -> list[str | None]:
        return [a for _, p, a in self.seen if p.startswith(prefix)]

    def add(self, data: bytes) -> str:
        d = sha(data)
        self.blobs[d] = data
        return d

    def push(self, repo: str, tag: str, raw: dict[str, bytes] | None = None,
             tars: list[tuple[bytes, str]] = ()) -> str:
        """An artifact of raw layers (``{path: bytes}``) and tar layers (``[(bytes, media type)]``)."""
        layers = [{"mediaType": RAW, "digest": self.add(data), "size": len(data),
                   "annotations": {"org.cncf.model.filepath": path}} for path, data in (raw or {}).items()]
        layers += [{"mediaType": media, "digest": self.add(data), "size": len(data)} for data, media in tars]
        config = json.dumps({"descriptor": {"name": repo}, "config": {}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": self.add(config),
                       "size": len(config)},
            "layers": layers}).encode()
        self.manifests[(repo, tag)] = self.manifests[(repo, sha(manifest))] = manifest
        return f"oci://{self.host}/{repo}:{tag}"


def tar_of(entries: list, gz: bool = False) -> bytes:
    """A tar (gzip'ed when ``gz``) of ``(name, bytes)`` pairs or ready ``TarInfo`` objects."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
                continue
            name, data = e
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@cache
def bomb(mib: int = 64) -> bytes:
    """A tar+gzip layer of some KB whose one entry unpacks to ``mib`` MiB of zeros."""
    return tar_of([("weights.bin", bytes(mib << 20))], gz=True)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def evil():
    reg = EvilRegistry()
    yield reg
    reg.close()


@pytest.fixture
def other_host():
    """A second server on another loopback host (127.0.0.2): a token service or a CDN."""
    reg = EvilRegistry("127.0.0.2")
    yield reg
    reg.close()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "ws-home"
    monkeypatch.setenv("WARMSTART_HOME", str(h))
    monkeypatch.setenv("WARMSTART_QUIET", "1")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "no-auth.json"))
    for name in ("WARMSTART_OFFLINE", "HF_HUB_OFFLINE", "WARMSTART_MAX_SIZE", "WARMSTART_OCI_AUTH_HOSTS",
                 "WARMSTART_INSECURE_REGISTRIES", "WARMSTART_SHARED_DIR"):
        monkeypatch.delenv(name, raising=False)
    return h


@pytest.fixture
def credentials(tmp_path, monkeypatch, evil):
    """Basic credentials for ``evil``'s host in a docker-style config.json."""
    cfg = tmp_path / "auth.json"
    cfg.write_text(json.dumps({"auths": {evil.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode())
                                                     .decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(cfg))
    return cfg


def files_under(root: Path) -> dict[str, int]:
    """{relative path: size} of every regular file under ``root``."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def cache_state(home: Path) -> dict[str, dict[str, int]]:
    return {d: files_under(home / d) for d in ("blobs", "tmp", "snapshots", "hub")}


# --------------------------------------------------------------------------- finding 9: budgets
def test_gzip_bomb_is_refused_before_anything_is_written(home, evil, monkeypatch):
    """64 MiB of zeros in a ~65 KB tar+gzip layer under an 8 MB budget: CacheFullError, the cache as
    it was (a model pulled before is still there and whole), no byte of the entry on disk."""
    good = evil.push("models/good", "v1", {"a.bin": b"a" * 1000})
    warmstart.pull(good)
    before = cache_state(home)
    monkeypatch.setenv("WARMSTART_MAX_SIZE", "8M")
    layer = bomb()
    assert len(layer) < 200_000
    ref = evil.push("evil/bomb", "v1", tars=[(layer, TGZ)])
    with pytest.raises(CacheFullError, match="unpacks to more than"):
        warmstart.pull(ref)
    assert cache_state(home) == before
    assert warmstart.pull(good).files[0].blob.read_bytes() == b"a" * 1000


def test_gzip_bomb_without_a_budget_is_counted_against_the_disk(home, evil, monkeypatch):
    """No budget: the declared sizes are compared with the free disk (a huge declared size fails at
    once, before inflating it)."""
    monkeypatch.setattr(ingest, "room", lambda cache: 16 << 20)  # as if the disk had 16 MiB free
    ref = evil.push("evil/bomb", "v2", tars=[(bomb(), TGZ)])
    with pytest.raises(CacheFullError):
        warmstart.pull(ref)
    assert not files_under(home / "blobs") and not files_under(home / "tmp")


def test_many_small_entries_add_up(home, evil, monkeypatch):
    """Entries under the budget one by one but over it together are refused by the first pass."""
    monkeypatch.setenv("WARMSTART_MAX_SIZE", "8M")
    layer = tar_of([(f"shard-{i}.bin", bytes(3 << 20)) for i in range(4)], gz=True)
    ref = evil.push("evil/many", "v1", tars=[(layer, TGZ)])
    with pytest.raises(CacheFullError):
        warmstart.pull(ref)
    assert not files_under(home / "blobs") and not files_under(home / "tmp")


def test_unpacking_is_capped_even_when_the_count_is_wrong(home, evil, monkeypatch):
    """If the first pass counted too little (a reader disagreement), extraction stops at the count:
    never more than that many bytes are written, and what was written is removed."""
    monkeypatch.setattr(ocitar, "scan_tar", lambda *a: 1 << 20)  # the count says 1 MiB
    written = [0]
    real_open = open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def write(self, b):
            written[0] += len(b)
            return self.fh.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def spy_open(path, mode="r", *a, **kw):
        fh = real_open(path, mode, *a, **kw)
        return Spy(fh) if "w" in mode else fh

    monkeypatch.setattr(ingest, "open", spy_open, raising=False)
    ref = evil.push("evil/lying", "v1", tars=[(tar_of([("w.bin", bytes(4 << 20))], gz=True), TGZ)])
    with pytest.raises(CacheFullError, match="more bytes than the layer declares"):
        warmstart.pull(ref)
    assert written[0] <= 1 << 20
    assert not files_under(home / "blobs") and not files_under(home / "tmp")


def test_json_counts_unpacked_bytes_as_downloaded_not_from_cache(home, evil):
    """A tar+gzip layer: bytes = what it unpacks to, bytes_downloaded = the compressed layer,
    bytes_from_cache = 0 (only a raw layer already cached counts there); a second pull: all cached."""
    raw = b"r" * 5000
    warmstart.pull(evil.push("models/raw-first", "v1", {"model.bin": raw}))
    layer = tar_of([("config.json", b"{}" * 10), ("big.bin", bytes(2 << 20))], gz=True)
    ref = evil.push("models/mixed", "v1", {"model.bin": raw}, tars=[(layer, TGZ)])
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "warmstart.cli", "pull", ref, "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    unpacked = 20 + (2 << 20) + len(raw)
    assert first["bytes"] == unpacked
    assert first["bytes_downloaded"] == len(layer)
    assert first["bytes_from_cache"] == len(raw)
    again = json.loads(subprocess.run([sys.executable, "-m", "warmstart.cli", "pull", ref, "--json"], env=env,
                                      capture_output=True, text=True, timeout=120).stdout)
    assert (again["bytes_downloaded"], again["bytes_from_cache"]) == (0, unpacked)


def test_plain_tar_layer_is_checked_the_same_way(home, evil, monkeypatch):
    monkeypatch.setenv("WARMSTART_MAX_SIZE", "8M")
    ok = evil.push("models/plain", "v1", tars=[(tar_of([special(".", tarfile.DIRTYPE),  # as `tar -C dir .`
                                                        special("./sub", tarfile.DIRTYPE),
                                                        ("./sub/a.txt", b"hello")]), TAR)])
    snap = warmstart.pull(ok)
    assert [(f.path, f.blob.read_bytes()) for f in snap.files] == [("sub/a.txt", b"hello")]
    dup = evil.push("models/plain-dup", "v1", tars=[(tar_of([("a.txt", b"one"), ("a.txt", b"two")]), TAR)])
    with pytest.raises(UnsafePathError):
        warmstart.pull(dup)


def test_cli_bomb_is_one_line_exit_1(home, evil, monkeypatch):
    ref = evil.push("evil/bomb", "cli", tars=[(bomb(), TGZ)])
    env = {**os.environ, "WARMSTART_MAX_SIZE": "8M"}
    r = subprocess.run([sys.executable, "-m", "warmstart.cli", "pull", ref], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert "unpacks to more than" in lines[0]


# ------------------------------------------------------------------- finding 15: tar entries
@pytest.mark.parametrize("entries", [
    [("a.json", b"1"), ("a.json", b"2")],
    [("./a.json", b"1"), ("a.json", b"2")],
    [("w", b"file"), ("w/inner.bin", b"under a file")],
], ids=["same-name", "dot-slash-alias", "file-and-directory"])
def test_duplicate_tar_entries_are_refused(home, evil, entries):
    ref = evil.push("evil/dup", "v1", tars=[(tar_of(entries, gz=True), TGZ)])
    with pytest.raises(UnsafePathError, match="twice|lies under"):
        warmstart.pull(ref)
    assert not files_under(home / "blobs") and not files_under(home / "snapshots")


def test_tar_entry_colliding_with_a_raw_layer_is_refused(home, evil):
    """The raw layer is verified against its digest; a tar entry of the same name must not replace it."""
    ref = evil.push("evil/shadow", "v1", {"model.safetensors": b"verified bytes"},
                    tars=[(tar_of([("model.safetensors", b"attacker bytes")], gz=True), TGZ)])
    with pytest.raises(UnsafePathError, match="raw layer"):
        warmstart.pull(ref)
    assert not files_under(home / "snapshots")


def test_same_entry_in_two_tar_layers_is_refused(home, evil):
    ref = evil.push("evil/two", "v1", tars=[(tar_of([("c.json", b"1")]), TAR),
                                          (tar_of([("c.json", b"2")], gz=True), TGZ)])
    with pytest.raises(UnsafePathError, match="twice"):
        warmstart.pull(ref)


@pytest.mark.parametrize("entry", [
    special("hard", tarfile.LNKTYPE, "etc/passwd"),
    special("sym", tarfile.SYMTYPE, "/etc/passwd"),
    special("fifo", tarfile.FIFOTYPE),
    special("dev", tarfile.CHRTYPE),
    special("blk", tarfile.BLKTYPE),
    ("/etc/absolute", b"x"),
    ("../up.bin", b"x"),
    ("a/../../up.bin", b"x"),
    ("esc\x1b[2Jape", b"x"),
    ("new\nline", b"x"),
], ids=["hardlink", "symlink", "fifo", "chardev", "blockdev", "absolute", "dotdot", "inner-dotdot",
        "escape-seq", "newline"])
def test_unsafe_tar_entries_are_refused(home, evil, entry):
    ref = evil.push("evil/entry", "v1", tars=[(tar_of([("ok.json", b"{}"), entry], gz=True), TGZ)])
    with pytest.raises(UnsafePathError):
        warmstart.pull(ref)
    assert not files_under(home / "blobs") and not files_under(home / "tmp")


@pytest.mark.parametrize("layer,media", [
    (b"not a tar at all" * 100, TAR),
    (gzip.compress(b"not a tar at all" * 100), TGZ),
    (tar_of([("a", b"x")]), TGZ),  # says gzip, is not
    (tar_of([("a", b"x" * 4000)], gz=True)[:-200], TGZ),  # truncated stream
], ids=["garbage", "gzip-garbage", "not-gzip", "truncated"])
def test_malformed_tar_layers_are_one_line_errors(home, evil, layer, media):
    ref = evil.push("evil/broken", "v1", tars=[(layer, media)])
    with pytest.raises((IntegrityError, UnsafePathError)) as info:
        warmstart.pull(ref)
    assert "\n" not in str(info.value)
    assert not files_under(home / "blobs") and not files_under(home / "tmp")


def test_oversized_pax_header_is_refused_without_reading_it(home, evil):
    """A pax header of several MB (tarfile would read it whole into memory) fails the first pass."""
    info = tarfile.TarInfo("x")
    info.pax_headers = {"comment": "c" * (2 << 20)}
    ref = evil.push("evil/pax", "v1", tars=[(tar_of([info]), TAR)])
    with pytest.raises(IntegrityError, match="metadata header"):
        warmstart.pull(ref)


# -------------------------------------------------------------- finding 15: where credentials go
def test_decision_rule_for_credentials():
    assert credentials_refused("reg.example", "https://reg.example/token", ()) is None
    assert credentials_refused("reg.example:5000", "https://reg.example:5001/token", ()) is None
    assert "plain HTTP" in credentials_refused("reg.example", "http://reg.example/token", ())
    assert "plain HTTP" in credentials_refused("reg.example", "http://auth.example/token", ("auth.example",))
    assert "not the registry" in credentials_refused("reg.example", "https://auth.example/token", ())
    assert "not the registry" in credentials_refused("reg.example", "https://reg.example.evil.io/t", ())
    assert credentials_refused("reg.example", "https://auth.example/token", ("auth.example",)) is None
    assert credentials_refused("reg.example", "https://auth.example:8443/t", ("auth.example:8443",)) is None
    assert credentials_refused("reg.example", "https://auth.example:9/t", ("auth.example:8443",)) is not None
    for loop in ("http://127.0.0.1:5001/t", "http://localhost/t", "http://[::1]:80/t"):
        host = re.sub(r"^http://|/t$", "", loop)
        assert credentials_refused(host, loop, ()) is None
    for bad in ("file:///etc/passwd", "ftp://reg.example/t", "https://[::1/t", "https://reg.example:99999/t"):
        assert credentials_refused("reg.example", bad, ()) is not None


def _bearer(evil, realm_host: str) -> None:
    evil.challenge = f'Bearer realm="http://{realm_host}/token",service="evil",scope="repository:m/x:pull"'
    evil.accept = {"Bearer anon-token"}


def test_basic_credentials_never_go_to_a_realm_on_another_host(home, evil, other_host, credentials):
    """The registry's bearer challenge names a token service on 127.0.0.2: it gets a request without
    the registry's password (and the anonymous token it hands out works)."""
    ref = evil.push("m/x", "v1", {"a.bin": b"payload"})
    _bearer(evil, other_host.host)
    assert warmstart.pull(ref).files[0].blob.read_bytes() == b"payload"
    assert other_host.auth_seen("/token") == [None]
    assert BASIC not in evil.auth_seen()


def test_allow_listed_token_host_gets_the_credentials(home, evil, other_host, credentials, monkeypatch):
    """The positive control: listed in WARMSTART_OCI_AUTH_HOSTS, the same realm gets them."""
    monkeypatch.setenv("WARMSTART_OCI_AUTH_HOSTS", "127.0.0.2")
    ref = evil.push("m/x", "v1", {"a.bin": b"payload"})
    _bearer(evil, other_host.host)
    warmstart.pull(ref)
    assert other_host.auth_seen("/token") == [BASIC]


def test_realm_on_the_registrys_own_host_gets_the_credentials(home, evil, credentials):
    token_service = EvilRegistry("127.0.0.1")  # same host, another port
    try:
        ref = evil.push("m/x", "v1", {"a.bin": b"payload"})
        _bearer(evil, token_service.host)
        warmstart.pull(ref)
        assert token_service.auth_seen("/token") == [BASIC]
    finally:
        token_service.close()


def test_bad_token_answer_is_refused(home, evil, credentials):
    ref = evil.push("m/x", "v1", {"a.bin": b"payload"})
    _bearer(evil, evil.host)
    evil.token = "abc\r\nX-Injected: 1"
    with pytest.raises(TransferError, match="no usable token"):
        warmstart.pull(ref)


def test_unusable_realm_is_one_line_error(home, evil):
    from warmstart.errors import GatedRepoError

    ref = evil.push("m/x", "v1", {"a.bin": b"payload"})
    evil.challenge = 'Bearer realm="file:///etc/passwd",service="x"'
    with pytest.raises(GatedRepoError, match="not an http"):
        warmstart.pull(ref)


@pytest.mark.parametrize("tar", [False, True], ids=["raw-layer", "tar-layer"])
def test_blob_redirect_to_another_host_drops_authorization(home, evil, other_host, credentials, tar):
    """Blobs redirected to a CDN on 127.0.0.2 are fetched there without the Authorization header the
    registry got (bearer token here; raw layers and tar layers take different paths)."""
    data = tar_of([("inside.bin", b"z" * 3000)], gz=True) if tar else b"w" * 3000
    ref = evil.push("m/x", "v1", {} if tar else {"a.bin": data}, tars=[(data, TGZ)] if tar else ())
    _bearer(evil, evil.host)
    evil.token = "registry-token"
    evil.accept = {"Bearer registry-token"}
    digest = sha(data)
    other_host.blobs[digest] = data
    evil.redirects[digest] = f"http://{other_host.host}/cdn/{digest}"
    snap = warmstart.pull(ref)
    assert snap.files
    assert other_host.auth_seen("/cdn/") and set(other_host.auth_seen("/cdn/")) == {None}
    assert "Bearer registry-token" in evil.auth_seen(f"/v2/m/x/blobs/{digest}")


def test_upload_location_on_another_host_gets_no_authorization(evil, other_host):
    """Registry.request sends what authenticated it only to the registry's own host (a push's upload
    Location may name any host)."""
    from warmstart.config import Settings
    from warmstart.sources.ociclient import Registry

    reg = Registry(Settings.from_env({"WARMSTART_HOME": "/nonexistent"}), evil.host, "m/x")
    try:
        reg.auth = {"Authorization": "Bearer secret"}
        reg.request("GET", reg.url("manifests/none"))
        reg.request("GET", f"http://{other_host.host}/v2/m/x/blobs/uploads/1")
    finally:
        reg.close()
    assert evil.auth_seen() == ["Bearer secret"]
    assert other_host.auth_seen() == [None]


def test_basic_auth_is_not_sent_over_plain_http_to_a_remote_registry():
    """A registry marked insecure (plain HTTP) that is not loopback never gets the password: the
    decision is taken before any request (no such host can be reached from the tests)."""
    from warmstart.config import Settings
    from warmstart.errors import GatedRepoError
    from warmstart.sources.ociclient import Registry

    settings = Settings.from_env({"WARMSTART_HOME": "/nonexistent",
                                  "WARMSTART_INSECURE_REGISTRIES": "reg.example:5000"})
    reg = Registry(settings, "reg.example:5000", "m/x", credentials=(USER, PASSWORD))
    try:
        assert reg.base.startswith("http://")
        with pytest.raises(GatedRepoError, match="plain HTTP"):
            reg._authenticate('Basic realm="x"')
        assert reg.auth == {}
    finally:
        reg.close()

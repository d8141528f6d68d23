"""Backend-specific behaviour beyond the conformance suite: S3 faults and pins, OCI push and media
types, local in-place indexing, one blob per content across schemes, install hints."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys

import pytest

import warmstart
from warmstart.errors import ConfigError, IntegrityError
from warmstart.sources.registry import parse

from ..conformance.conftest import uid


def test_s3_object_changed_between_listing_and_download(s3, moto_proxy, monkeypatch, home):
    prefix = uid()
    data = random.Random(1).randbytes(6 << 20)
    s3.put_object(Bucket="models", Key=f"{prefix}/w.bin", Body=data)
    from warmstart.sources import s3 as s3mod

    real = s3mod.S3Source.resolve

    def resolve_then_change(self, ref):
        listing = real(self, ref)
        s3.put_object(Bucket="models", Key=f"{prefix}/w.bin", Body=data[::-1])
        return listing
    monkeypatch.setattr(s3mod.S3Source, "resolve", resolve_then_change)
    with pytest.raises(IntegrityError, match="changed"):
        warmstart.pull(f"s3://models/{prefix}")
    assert hashlib.sha256(data[::-1]).hexdigest() not in [p.name for p in (home / "blobs").rglob("*")]


def test_s3_slowdown_is_retried_and_revision_pins(s3, moto_proxy, home):
    prefix = uid()
    s3.put_object(Bucket="models", Key=f"{prefix}/a.bin", Body=b"a" * 5000)
    moto_proxy.faults.add("status5xx", path_glob=f"*{prefix}/a.bin", status=503, times=2, method="GET")
    snap = warmstart.pull(f"s3://models/{prefix}")
    assert snap.files[0].blob.read_bytes() == b"a" * 5000
    moto_proxy.counters.reset()
    pinned = warmstart.pull(snap.ref)  # s3://models/PREFIX@<listing digest>: no request at all
    assert pinned.revision == snap.revision and moto_proxy.counters.requests_for("*") == 0


def test_s3_missing_extra_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.delitem(sys.modules, "warmstart.sources.s3", raising=False)
    from warmstart.sources.registry import backend_for

    with pytest.raises(ConfigError, match=r"pip install 'warmstart\[s3\]'"):
        backend_for("s3")(None).client  # noqa: B018


def test_oci_unknown_media_type(registry, home):
    from tests.servers.registry import push_modelpack
    from warmstart.sources.oci import UnsupportedArtifactError

    reg, proxy = registry
    push_modelpack(reg.endpoint, "models/odd", "v1", {"a.bin": b"x"}, layer_type="application/x-unknown")
    with pytest.raises(UnsupportedArtifactError, match="media type"):
        warmstart.pull(f"oci://{proxy.host}/models/odd:v1")


def test_oci_registry_throttling_is_retried(registry, home):
    from tests.servers.registry import push_modelpack

    reg, proxy = registry
    proxy.reset()
    push_modelpack(reg.endpoint, "models/busy", "v1", {"a.bin": b"x" * 100})
    proxy.faults.add("status5xx", path_glob="*/manifests/*", status=429, times=2)
    assert warmstart.pull(f"oci://{proxy.host}/models/busy:v1").files[0].size == 100
    proxy.reset()


def test_oci_basic_auth_with_credentials(auth_registry, home, tmp_path, monkeypatch):
    import base64

    from tests.servers.registry import push_modelpack

    push_modelpack(auth_registry.endpoint, "models/private", "v1", {"a.bin": b"secret"}, auth=("alice", "s3cret"))
    cfg = tmp_path / "auth.json"
    for pw, ok in (("wrong", False), ("s3cret", True)):
        token = base64.b64encode(f"alice:{pw}".encode()).decode()
        cfg.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(cfg))
        if ok:
            assert warmstart.pull(f"oci://{auth_registry.host}/models/private:v1").files[0].size == 6
        else:
            with pytest.raises(PermissionError):
                warmstart.pull(f"oci://{auth_registry.host}/models/private:v1")


def test_push_oci_round_trip_and_one_blob_per_content(hub, registry, home, tmp_path, monkeypatch, s3):
    """Pull from the Hub, mirror with `warmstart push-oci`, pull back on a second home; the same model
    through hf, oci, s3 and a local path in one cache keeps one copy of each blob."""
    reg, proxy = registry
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    target = f"oci://{proxy.host}/mirror/tiny-llama:v1"
    out = subprocess.run([sys.executable, "-m", "warmstart.cli", "push-oci", "hf://test-org/tiny-llama", target,
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pushed = json.loads(out.stdout)
    hub_snap = warmstart.pull("hf://test-org/tiny-llama")
    digests = {f.path: f.digest for f in hub_snap.files}
    # the same model through S3 and a local path, into the same cache
    prefix = uid()
    for f in hub_snap.files:
        s3.put_object(Bucket="models", Key=f"{prefix}/{f.path}", Body=f.blob.read_bytes())
    for ref in (pushed["target"], f"s3://models/{prefix}", str(hub_snap.path)):
        snap = warmstart.pull(ref)
        assert {f.path: f.digest for f in snap.files} == digests, ref
    stored = [p for p in (home / "blobs").rglob("*") if p.is_file()]
    assert sorted(p.name for p in stored) == sorted(set(digests.values()))
    second = tmp_path / "second-home"
    monkeypatch.setenv("WARMSTART_HOME", str(second))
    snap = warmstart.pull(target)
    assert snap.revision == pushed["digest"] and {f.path: f.digest for f in snap.files} == digests


def test_local_in_place_indexes_without_copying(home, tmp_path):
    src = tmp_path / "nfs-model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w" * 10000)
    snap = warmstart.pull(str(src), in_place=True)
    blob = home / "blobs" / "sha256" / snap.files[0].digest[:2] / snap.files[0].digest
    assert blob.is_symlink() and blob.resolve() == (src / "w.bin").resolve()
    assert (snap.path / "w.bin").read_bytes() == b"w" * 10000
    assert parse(f"file://{src}").scheme == "file"


def test_local_import_of_a_directory_holding_the_cache_home(home, tmp_path):
    """Pulling a directory that contains WARMSTART_HOME imports the files around it, not the cache."""
    (tmp_path / "w.bin").write_bytes(b"w" * 5000)
    warmstart.pull(str(tmp_path / "w.bin"))  # the home now exists under tmp_path, with a blob in it
    snap = warmstart.pull(str(tmp_path))
    assert [f.path for f in snap.files] == ["w.bin"]
    again = warmstart.pull(str(tmp_path))
    assert again.revision == snap.revision

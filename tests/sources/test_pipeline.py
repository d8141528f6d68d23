"""Every source's pull goes through one pipeline: leases, the shared tier, the RAM tier, the budget and
the engine's settings apply to local paths and OCI tar layers as they do to the Hub."""

from __future__ import annotations

import os
import random

import pytest

import warmstart
from tests.hostile.test_oci import TGZ, EvilRegistry, tar_of
from warmstart.config import Settings
from warmstart.errors import CacheFullError, InUseError
from warmstart.pipeline import PullOptions, pull
from warmstart.sources.registry import parse

MiB = 1 << 20


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "ws-home"
    monkeypatch.setenv("WARMSTART_HOME", str(h))
    monkeypatch.setenv("WARMSTART_QUIET", "1")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "no-auth.json"))
    for name in ("WARMSTART_OFFLINE", "HF_HUB_OFFLINE", "WARMSTART_MAX_SIZE", "WARMSTART_SHARED_DIR",
                 "WARMSTART_MEMORY_DIR", "WARMSTART_MEMORY_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return h


@pytest.fixture
def evil():
    reg = EvilRegistry()
    yield reg
    reg.close()


def blob(home, digest: str):
    return home / "blobs" / "sha256" / digest[:2] / digest


class RemoveWhileRunning:
    """A progress sink that tries to ``rm`` a model the moment the pull starts moving bytes."""

    def __init__(self, ref: str) -> None:
        self.ref, self.refused = ref, None

    def start(self, total_bytes, total_files):
        try:
            warmstart.cache().rm(self.ref)
        except InUseError as exc:
            self.refused = exc

    def advance(self, n):
        pass

    def file_done(self):
        pass


def test_local_pull_holds_a_lease_on_the_blobs_it_reuses(home, tmp_path):
    """A second revision of a directory reuses the unchanged file's blob; removing the first revision
    while the pull imports the new file must not take that blob from under it."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 5000)
    first = warmstart.pull(str(src))
    (src / "b.bin").write_bytes(b"b" * 7000)
    watch = RemoveWhileRunning(first.ref)
    snap = pull(parse(str(src)), Settings.from_env(), PullOptions(progress=watch))
    assert watch.refused is not None
    assert all(f.blob.is_file() for f in snap.files)


def test_oci_tar_pull_holds_a_lease_on_the_blobs_it_reuses(home, evil):
    """Same for an artifact with a tar layer: its raw layer, cached by another artifact, stays."""
    raw = random.Random(1).randbytes(4000)
    first = warmstart.pull(evil.push("models/a", "v1", {"w.bin": raw}))
    ref = evil.push("models/b", "v1", {"w.bin": raw}, tars=[(tar_of([("c.json", b"{}")], gz=True), TGZ)])
    watch = RemoveWhileRunning(first.ref)
    snap = pull(parse(ref), Settings.from_env(), PullOptions(progress=watch))
    assert watch.refused is not None
    assert {f.path: f.blob.read_bytes() for f in snap.files} == {"w.bin": raw, "c.json": b"{}"}


def test_local_pull_publishes_to_the_shared_tier(home, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("WARMSTART_SHARED_DIR", str(shared))
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w" * 9000)
    snap = warmstart.pull(str(src))
    d = snap.files[0].digest
    assert (shared / "blobs" / "sha256" / d[:2] / d).read_bytes() == b"w" * 9000


def test_oci_tar_layer_is_not_downloaded_again_after_an_unfinished_pull(home, evil, tmp_path, monkeypatch):
    """The layer blob is fetched, verified and published like any blob: a pull that stops after it
    (here: no room for what it unpacks to, the rest of the budget pinned) leaves it, and the next
    pull unpacks it without asking the registry for it again."""
    big = tmp_path / "pinned.bin"
    big.write_bytes(os.urandom(5 * MiB))
    warmstart.cache().pin(warmstart.pull(str(big)).ref)
    layer = tar_of([("weights.bin", bytes(4 * MiB))], gz=True)
    ref = evil.push("models/t", "v1", {"a.json": b"{}"}, tars=[(layer, TGZ)])
    monkeypatch.setenv("WARMSTART_MAX_SIZE", "8M")
    with pytest.raises(CacheFullError):
        warmstart.pull(ref)
    monkeypatch.delenv("WARMSTART_MAX_SIZE")
    snap = warmstart.pull(ref)
    assert {f.path: f.size for f in snap.files} == {"a.json": 2, "weights.bin": 4 * MiB}
    digest = "sha256:" + __import__("hashlib").sha256(layer).hexdigest()
    gets = [p for m, p, _ in evil.seen if m == "GET" and p.endswith(f"/blobs/{digest}")]
    assert len(gets) == 1
    assert snap.downloaded == 0


def test_pull_evicting_a_model_drops_its_ram_copy(home, tmp_path, monkeypatch):
    """The pipeline's cache includes the RAM tier: a snapshot evicted to make room leaves RAM too."""
    monkeypatch.setenv("WARMSTART_MEMORY_DIR", str(tmp_path / "ram"))
    monkeypatch.setenv("WARMSTART_MAX_SIZE", "8M")
    for name in ("old.bin", "new.bin"):
        (tmp_path / name).write_bytes(os.urandom(5 * MiB))
    old = warmstart.pull(str(tmp_path / "old.bin"))
    warmstart.cache().promote(old.ref)
    ram = tmp_path / "ram" / "blobs" / "sha256" / old.files[0].digest[:2] / old.files[0].digest
    assert ram.is_file()
    warmstart.pull(str(tmp_path / "new.bin"))
    assert not blob(home, old.files[0].digest).exists()
    assert not ram.exists()


def test_oci_tar_pull_uses_the_settings_transfer_parameters(home, evil, monkeypatch):
    from warmstart import transfer

    seen = []
    real = transfer.Transfer.__init__

    def spy(self, *a, **kw):
        seen.append(kw)
        real(self, *a, **kw)

    monkeypatch.setattr(transfer.Transfer, "__init__", spy)
    monkeypatch.setenv("WARMSTART_STALL_TIMEOUT", "17")
    ref = evil.push("models/s", "v1", {"a.bin": b"a"}, tars=[(tar_of([("c.json", b"{}")], gz=True), TGZ)])
    warmstart.pull(ref)
    settings = Settings.from_env()
    assert seen and seen[0].get("timeout") == settings.stall_timeout == 17
    assert seen[0].get("connect_timeout") == settings.connect_timeout

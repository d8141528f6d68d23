"""Fixtures for the conversion tests: a fresh cache home and small local Llama-shaped models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.synth import make_llama

#: the compile-cache key of these tests: entries in Redis or a store directory are loaded only when tagged
TEST_COMPILE_CACHE_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


@pytest.fixture(autouse=True)
def _compile_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every conversion test writes and reads authenticated compile-cache entries (tests/hostile checks
    what happens without)."""
    monkeypatch.setenv("WARMSTART_COMPILE_CACHE_KEY", TEST_COMPILE_CACHE_KEY)
    monkeypatch.delenv("WARMSTART_COMPILE_CACHE_TRUST", raising=False)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``WARMSTART_HOME`` (no Hub needed)."""
    h = tmp_path / "ws-home"
    monkeypatch.setenv("WARMSTART_HOME", str(h))
    monkeypatch.delenv("WARMSTART_COMPILE_CACHE", raising=False)
    monkeypatch.delenv("WARMSTART_MAX_SIZE", raising=False)
    return h


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A ~4 MB bf16 Llama-shaped checkpoint in 2 shards with an index."""
    out = tmp_path_factory.mktemp("convert-model")
    make_llama(out, 4 << 20, shards=2, seed=3)
    return out


def reference(model: Path) -> dict:
    """Every tensor of ``model`` as the safetensors library loads it."""
    from safetensors.torch import load_file

    out: dict = {}
    for p in sorted(model.glob("*.safetensors")):
        out.update(load_file(p))
    return out

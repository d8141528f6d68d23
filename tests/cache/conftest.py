"""Fixtures for the cache tests: small synthetic models pushed to the session's test Hub."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

from tests.servers.hub import HubRepo, HubServer
from warmstart.config import Settings


@pytest.fixture
def make_model(hub: HubServer) -> Callable[..., str]:
    """``make_model(nbytes)`` adds a fresh repo (``model.safetensors`` of random bytes + ``config.json``)
    to the test Hub and returns its ref."""

    def make(nbytes: int = 1 << 20, name: str | None = None) -> str:
        repo_id = f"cache-test/{name or uuid.uuid4().hex[:10]}"
        hub.add_repo(HubRepo(repo_id, {"model.safetensors": os.urandom(nbytes),
                                       "config.json": f'{{"name": "{repo_id}"}}'.encode()}))
        return f"hf://{repo_id}"

    return make


@pytest.fixture
def settings(ws_home) -> Callable[..., Settings]:
    """``settings(**overrides)``: Settings from the test environment with overrides."""
    import dataclasses

    def make(**kw) -> Settings:
        return dataclasses.replace(Settings.from_env(), quiet=True, **kw)

    return make

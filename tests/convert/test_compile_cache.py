"""Compile artifacts: stored in the cache home or Redis, keyed by environment, never breaking a run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import warmstart
from warmstart.compiled import compile_cache as cc
from warmstart.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on loopback (random port, no persistence)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    pytest.importorskip("redis", reason="the redis package is missing: pip install 'warmstart[redis]'")
    import redis

    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                if redis.Redis.from_url(url).ping():
                    break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Stand-ins for torch.compiler's save/load so the storage logic is tested without compiling."""
    state: dict = {"saved": b"ARTIFACTS-v1", "loaded": []}
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (state["saved"], "info"))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda b: state["loaded"].append(b) or "info")
    return state


def test_file_backend_save_then_hit(home: Path, fake_torch: dict) -> None:
    with warmstart.compile_cache("m") as first:
        pass
    assert not first.hit and first.saved
    assert len(list((home / "compile").iterdir())) == 1
    with warmstart.compile_cache("m") as second:
        pass
    assert second.hit and fake_torch["loaded"] == [b"ARTIFACTS-v1"]
    assert not second.saved  # nothing new
    assert not warmstart.compile_cache("other-key").load()


def test_key_includes_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cc.CompileCache("m")
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert cc.CompileCache("m").digest != a.digest


def test_entry_from_another_torch_version_is_ignored(home: Path, fake_torch: dict, caplog) -> None:
    c = cc.CompileCache("m")
    env = {**c.env, "torch": "1.13.0"}
    head = json.dumps({"env": env, "sha256": __import__("hashlib").sha256(b"x").hexdigest()}).encode()
    (home / "compile").mkdir(parents=True)
    (home / "compile" / c.digest).write_bytes(cc.MAGIC + cc.NO_TAG + b"\n" + head + b"\n" + b"x")
    with caplog.at_level(logging.WARNING, "warmstart"):
        assert not c.load()
    assert "another environment" in caplog.text and "1.13.0" in caplog.text
    assert fake_torch["loaded"] == []
    (home / "compile" / c.digest).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, "warmstart"):
        assert not cc.CompileCache("m").load()
    assert "corrupt" in caplog.text


def test_redis_unreachable_falls_back_to_the_local_cache(home: Path, fake_torch: dict, caplog) -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{_free_port()}/0"
    with caplog.at_level(logging.WARNING, "warmstart"), warmstart.compile_cache("m", url=url) as c:
        pass
    assert not c.hit and c.saved
    assert "unreachable" in caplog.text and "using the local cache" in caplog.text
    assert len(list((home / "compile").iterdir())) == 1
    with warmstart.compile_cache("m", url=url) as again:  # still down: the local entry is a hit
        pass
    assert again.hit and fake_torch["loaded"] == [b"ARTIFACTS-v1"]


def test_bad_url_is_a_config_error(home: Path) -> None:
    with pytest.raises(ConfigError, match="WARMSTART_COMPILE_CACHE"):
        cc.CompileCache("m", url="ftp://x")


def test_redis_backend_round_trip(home: Path, fake_torch: dict, redis_url: str, monkeypatch) -> None:
    monkeypatch.setenv("WARMSTART_COMPILE_CACHE", redis_url)
    fake_torch["saved"] = b"REDIS-ARTIFACTS-" + os.urandom(8)
    assert warmstart.compile_cache("shared").save()
    import redis

    stored = [redis.Redis.from_url(redis_url).get(k) for k in redis.Redis.from_url(redis_url).keys("*")]
    assert any(v and v.endswith(fake_torch["saved"]) for v in stored)  # the artifact bytes are in Redis
    assert warmstart.compile_cache("shared").load()
    assert fake_torch["loaded"] == [fake_torch["saved"]]  # exactly those bytes came back to torch
    assert not warmstart.compile_cache("another").load() and fake_torch["loaded"] == [fake_torch["saved"]]
    assert not (home / "compile").exists()


COMPILE = textwrap.dedent("""
    import json, time, torch, warmstart
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    t0 = time.perf_counter()
    with warmstart.compile_cache("tiny-mlp") as c:
        y = torch.compile(m)(torch.randn(2, 16))
    print(json.dumps({"hit": c.hit, "saved": c.saved, "seconds": time.perf_counter() - t0,
                      "inductor": dict(counters["inductor"])}))
""")


@pytest.mark.slow
def test_two_fresh_processes_share_compile_artifacts_through_redis(home: Path, redis_url: str,
                                                                   tmp_path: Path) -> None:
    results = []
    for i in range(2):
        env = {**os.environ, "WARMSTART_HOME": str(home), "WARMSTART_COMPILE_CACHE": redis_url,
               "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{i}"), "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr[-2000:]
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = results
    print(cold, warm)
    assert not cold["hit"] and cold["saved"] and cold["inductor"].get("fxgraph_cache_miss", 0) >= 1
    assert warm["hit"]
    assert warm["inductor"].get("fxgraph_cache_hit", 0) == cold["inductor"]["fxgraph_cache_miss"]
    assert warm["inductor"].get("fxgraph_cache_miss", 0) == 0

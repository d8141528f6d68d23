"""Hostile compile-cache stores: whoever can write Redis or a shared store directory must not run code here.

Two ways an entry runs code when loaded, both real:

* torch's own ``load_cache_artifacts`` writes each artifact to a path built from the artifact's key; an
  ``autotune`` artifact whose key is an absolute path writes the attacker's bytes there (a ``.pth`` file or
  ``~/.bashrc`` would follow). Here the path is a marker file.
* FX-graph artifacts are pickles, unpickled by Inductor; a stand-in loader that unpickles as it does stands for
  that step (``loader="pickle"``), with a pickle whose ``__reduce__`` creates a marker file.
* An AOT package is native code: a ``.so`` whose constructor creates a marker when torch's package loader
  ``dlopen``-s it (built here with the system C compiler; skipped without one).

Each refusal case is paired with a control (``WARMSTART_COMPILE_CACHE_TRUST=1``) in which the very same entry
does create the marker, so "no marker" means refused, not "the attack did not work".
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.convert.test_compile_cache import redis_url  # noqa: F401 - a fixture (real loopback redis-server)
from warmstart.compiled import aot
from warmstart.compiled import compile_cache as cc
from warmstart.config import Settings
from warmstart.errors import ConfigError

KEY = "victim-model"
WRITER_KEY = "11" * 32  # the deployment's key, shared by honest writers and readers
OTHER_KEY = "22" * 32  # an attacker's own key


class _Marker:
    """Unpickling this creates ``path``: what a hostile pickle would do with ``os.system``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def torch_artifact_payload(target: Path, content: bytes = b"written by the store's writer") -> bytes:
    """A well-formed torch cache-artifact blob whose loading writes ``content`` to the absolute ``target``."""
    from torch.compiler import _cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    _cache.CacheArtifactManager._ensure_cache_artifacts_registered()
    ser = AppendingByteSerializer(serialize_fn=_cache._serialize_single_cache)
    ser.append(("autotune", [_cache.CacheArtifactFactory.create("autotune", str(target), content)]))
    return ser.to_bytes()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A reader with its own cache home, no compile-cache settings, warnings not yet given, and a marker path."""
    monkeypatch.setenv("WARMSTART_HOME", str(tmp_path / "reader-home"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    for name in ("WARMSTART_COMPILE_CACHE", "WARMSTART_COMPILE_CACHE_KEY", "WARMSTART_COMPILE_CACHE_TRUST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cc, "_warned", set())
    return {"marker": tmp_path / "marker", "tmp": tmp_path, "mp": monkeypatch}


@pytest.fixture(params=["redis", "directory"])
def store(request: pytest.FixtureRequest, env: dict) -> str:
    """The shared store an attacker can write: a real loopback Redis (emptied) or a shared directory."""
    if request.param == "directory":
        return str(env["tmp"] / "shared-store")
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()
    return url


def writer(store: str, tmp: Path, key_hex: str | None, cls: Callable = cc.CompileCache, *args, entry_key: str = KEY):
    """The cache entry as a process writing to ``store`` with ``key_hex`` (None: no key) sees it."""
    envmap = {"WARMSTART_HOME": str(tmp / "writer-home")}
    if key_hex is not None:
        envmap["WARMSTART_COMPILE_CACHE_KEY"] = key_hex
    return cls(entry_key, *args, url=store, settings=Settings.from_env(envmap))


@pytest.fixture(params=["torch", "pickle"])
def hostile(request: pytest.FixtureRequest, env: dict) -> bytes:
    """A payload that creates ``env["marker"]`` when the reader loads it, by the real torch loader or a pickle."""
    if request.param == "pickle":
        env["mp"].setattr(torch.compiler, "load_cache_artifacts", pickle.loads)
        return pickle.dumps(_Marker(str(env["marker"])))
    return torch_artifact_payload(env["marker"])


def read(store: str, env: dict, *, key_hex: str | None = None, trust: bool = False) -> bool:
    """A fresh reader process's ``compile_cache(KEY).load()`` against ``store``."""
    env["mp"].setenv("WARMSTART_COMPILE_CACHE", store)
    if key_hex is not None:
        env["mp"].setenv("WARMSTART_COMPILE_CACHE_KEY", key_hex)
    if trust:
        env["mp"].setenv("WARMSTART_COMPILE_CACHE_TRUST", "1")
    return cc.CompileCache(KEY).load()


# ---------------------------------------------------------------------------------------- the control


def test_control_the_hostile_entry_does_run_code_when_trusted(store: str, env: dict, hostile: bytes) -> None:
    assert writer(store, env["tmp"], None).store_payload(hostile)
    assert read(store, env, trust=True)
    assert env["marker"].exists()  # the attack is real: every refusal below is what stops it


# ---------------------------------------------------------------------------------------- refusals


def test_no_key_configured_loads_nothing_from_a_shared_store(store: str, env: dict, hostile: bytes, caplog) -> None:
    assert writer(store, env["tmp"], None).store_payload(hostile)
    with caplog.at_level(logging.WARNING, "warmstart"):
        assert not read(store, env)
        assert not read(store, env)
    assert not env["marker"].exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "WARMSTART_COMPILE_CACHE_KEY" in w]) == 1, warnings  # once
    assert "could run code" in caplog.text and "openssl rand -hex 32" in caplog.text


@pytest.mark.parametrize("case", ["untagged", "other-key", "replayed-under-another-key", "tampered-payload",
                                  "tag-of-another-kind"])
def test_key_configured_refuses_entries_without_a_valid_tag(store: str, env: dict, hostile: bytes, case: str,
                                                            caplog) -> None:
    victim = writer(store, env["tmp"], WRITER_KEY)
    if case == "untagged":
        assert writer(store, env["tmp"], None).store_payload(hostile)
    elif case == "other-key":
        assert writer(store, env["tmp"], OTHER_KEY).store_payload(hostile)
    elif case == "replayed-under-another-key":  # a genuinely tagged entry of another model, copied over
        other = writer(store, env["tmp"], WRITER_KEY, entry_key="another-model")
        assert other.store_payload(hostile)
        victim.backend.put(victim.digest, other.backend.get(other.digest))
    elif case == "tampered-payload":  # a genuine entry whose payload (and header digest) were replaced
        assert victim.store_payload(b"honest artifacts")
        raw = victim.backend.get(victim.digest)
        tag = raw[len(cc.MAGIC):].split(b"\n", 1)[0]
        head = json.dumps({"key": KEY, "env": victim.env, "sha256": hashlib.sha256(hostile).hexdigest()})
        victim.backend.put(victim.digest, cc.MAGIC + tag + b"\n" + head.encode() + b"\n" + hostile)
    else:  # tagged with the deployment's key for this very digest, but as an AOT package's entry
        assert aot.AotCache.KIND != victim.KIND
        head = json.dumps({"key": KEY, "env": victim.env, "sha256": hashlib.sha256(hostile).hexdigest()})
        body = head.encode() + b"\n" + hostile
        tag = cc.entry_tag(bytes.fromhex(WRITER_KEY), aot.AotCache.KIND, victim.digest, body)
        victim.backend.put(victim.digest, cc.MAGIC + tag + b"\n" + body)
    with caplog.at_level(logging.WARNING, "warmstart"):
        assert not read(store, env, key_hex=WRITER_KEY)
    assert not env["marker"].exists()
    assert "no valid tag" in caplog.text
    # and the same bytes do run code for a reader that trusts the store: the refusal is what stopped it
    # (a replayed entry's header names the other model: a miss even then)
    env["mp"].delenv("WARMSTART_COMPILE_CACHE_KEY")
    if case != "replayed-under-another-key":
        assert read(store, env, trust=True) and env["marker"].exists()


# ---------------------------------------------------------------------------------------- the positive path


def test_same_key_on_writer_and_reader_round_trips_the_artifacts(store: str, env: dict) -> None:
    loaded: list[bytes] = []
    env["mp"].setattr(torch.compiler, "load_cache_artifacts", lambda b: loaded.append(b) or "info")
    payload = b"FX-graph artifacts \x00\x01\xff" * 100
    assert writer(store, env["tmp"], WRITER_KEY).store_payload(payload)
    assert read(store, env, key_hex=WRITER_KEY)
    assert loaded == [payload]
    # a raw (non-hex) key works the same way, as long as both sides use it
    raw_key = "a long passphrase that is not hex"
    other = writer(store, env["tmp"], raw_key, entry_key=KEY + "-raw")
    assert other.store_payload(payload + b"raw")
    env["mp"].setenv("WARMSTART_COMPILE_CACHE_KEY", raw_key)
    assert cc.CompileCache(KEY + "-raw").fetch_payload() == payload + b"raw"


def test_real_torch_artifacts_round_trip_with_a_key(store: str, env: dict) -> None:
    target = env["tmp"] / "inductor" / "autotune-entry"
    assert writer(store, env["tmp"], WRITER_KEY).store_payload(torch_artifact_payload(target, b"tuned"))
    assert read(store, env, key_hex=WRITER_KEY)
    assert target.read_bytes() == b"tuned"


def test_cache_home_entries_stay_trusted_without_a_key(env: dict, hostile: bytes) -> None:
    """This user's own cache home is written by this user only: no key needed (as before)."""
    loaded: list[bytes] = []
    env["mp"].setattr(torch.compiler, "load_cache_artifacts", lambda b: loaded.append(b) or "info")
    assert cc.CompileCache(KEY).store_payload(b"mine")
    assert cc.CompileCache(KEY).load() and loaded == [b"mine"]


# ---------------------------------------------------------------------------------------- malformed entries


@pytest.mark.parametrize("head", [b"[1, 2, 3]", b'"a string"', b"42", b"null", b"{}", b'{"sha256": 5, "env": {}}',
                                  b'{"sha256": "00", "env": []}', b"[" * 100000 + b"]" * 100000, b"\xff\xfe",
                                  b'{"sha256": "' + b"9" * 64 + b'", "env": {"torch": [1]}}'])
def test_malformed_header_is_a_miss(env: dict, head: bytes, caplog) -> None:
    c = cc.CompileCache(KEY)
    home = Path(str(c.backend.root))
    home.mkdir(parents=True)
    for raw in (cc.MAGIC + cc.NO_TAG + b"\n" + head + b"\npayload", cc.MAGIC_V1 + head + b"\npayload",
                cc.MAGIC + cc.NO_TAG + b"\n" + head):
        (home / c.digest).write_bytes(raw)
        with caplog.at_level(logging.WARNING, "warmstart"):
            assert cc.CompileCache(KEY).fetch_payload() is None
    assert "corrupt" in caplog.text or "another environment" in caplog.text


def test_malformed_header_with_a_valid_tag_is_a_miss(store: str, env: dict, caplog) -> None:
    """Even a key holder's entry with a JSON-list header is a miss, not a traceback."""
    victim = writer(store, env["tmp"], WRITER_KEY)
    body = b"[1, 2]\npayload"
    victim.backend.put(victim.digest, cc.MAGIC + cc.entry_tag(bytes.fromhex(WRITER_KEY), "compile", victim.digest,
                                                                body) + b"\n" + body)
    with caplog.at_level(logging.WARNING, "warmstart"):
        assert not read(store, env, key_hex=WRITER_KEY)
    assert "header is a JSON list" in caplog.text


def test_key_setting(env: dict) -> None:
    assert Settings.from_env({"WARMSTART_COMPILE_CACHE_KEY": "ab" * 32}).compile_cache_key == bytes([0xAB] * 32)
    assert Settings.from_env({"WARMSTART_COMPILE_CACHE_KEY": " passphrase of some length "}).compile_cache_key \
        == b"passphrase of some length"
    assert Settings.from_env({}).compile_cache_key is None
    s = Settings.from_env({"WARMSTART_COMPILE_CACHE_KEY": "cd" * 32, "WARMSTART_COMPILE_CACHE_TRUST": "1"})
    assert "cd" * 8 not in repr(s) and "compile_cache_key" not in repr(s) and s.compile_cache_trust
    with pytest.raises(ConfigError, match="WARMSTART_COMPILE_CACHE_KEY.*openssl rand -hex 32") as e:
        Settings.from_env({"WARMSTART_COMPILE_CACHE_KEY": "tiny-secret"})
    assert "tiny-secret" not in str(e.value) and "\n" not in str(e.value)  # never echoes the key


# ---------------------------------------------------------------------------------------- AOT packages


@pytest.fixture(scope="module")
def evil_so(tmp_path_factory) -> Path:
    """A shared object whose constructor writes the file named by $WS_TEST_MARKER when dlopen-ed."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a hostile shared object")
    d = tmp_path_factory.mktemp("evil-so")
    (d / "evil.c").write_text('#include <stdio.h>\n#include <stdlib.h>\n'
                              "__attribute__((constructor)) static void ran(void) {\n"
                              '  const char *p = getenv("WS_TEST_MARKER"); if (!p) return;\n'
                              '  FILE *f = fopen(p, "w"); if (f) { fputs("native code ran\\n", f); fclose(f); }\n}\n')
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(d / "evil.so"), str(d / "evil.c")], check=True,
                   capture_output=True, timeout=120)
    return d / "evil.so"


def hostile_package(so: Path, out: Path) -> bytes:
    """A ``.pt2`` archive laid out as AOTInductor's package loader expects, holding ``so``."""
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("model/.data/version", "0\n")
        z.writestr("model/archive_format", "pt2")
        z.write(so, "model/data/aotinductor/model/evil.so")
        z.writestr("model/data/aotinductor/model/evil_metadata.json", '{"AOTI_DEVICE_KEY": "cpu"}')
    return out.read_bytes()


class _Compiled(Exception):
    """Raised by the stand-in compile step: the entry was a miss (no AOT compile is run here)."""


@pytest.fixture
def aot_case(env: dict, evil_so: Path) -> dict:
    env["mp"].setenv("WS_TEST_MARKER", str(env["marker"]))
    calls: list = []

    def no_compile(*a, **k) -> bytes:
        calls.append(a)
        raise _Compiled

    env["mp"].setattr(aot, "_compile_package", no_compile)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).eval()
    x = torch.randn(1, 4)
    return {"model": model, "x": x, "parts": aot.structure(model, (x,)), "calls": calls,
            "package": hostile_package(evil_so, env["tmp"] / "evil.pt2")}


def aot_read(store: str, env: dict, case: dict, *, key_hex: str | None = None, trust: bool = False) -> None:
    env["mp"].setenv("WARMSTART_COMPILE_CACHE", store)
    if key_hex is not None:
        env["mp"].setenv("WARMSTART_COMPILE_CACHE_KEY", key_hex)
    if trust:
        env["mp"].setenv("WARMSTART_COMPILE_CACHE_TRUST", "1")
    with pytest.raises(_Compiled):  # a miss (or a package that failed to load) compiles afresh
        aot.aot_compile(case["model"], (case["x"],), key=KEY)


def test_aot_control_the_hostile_package_does_run_native_code_when_trusted(store: str, env: dict,
                                                                           aot_case: dict) -> None:
    assert writer(store, env["tmp"], None, aot.AotCache, aot_case["parts"]).store_payload(aot_case["package"])
    aot_read(store, env, aot_case, trust=True)
    assert env["marker"].read_text() == "native code ran\n"


@pytest.mark.parametrize("case", ["no-key", "untagged", "other-key", "replayed-under-another-key",
                                  "compile-entry-as-package"])
def test_aot_package_without_a_valid_tag_is_never_loaded(store: str, env: dict, aot_case: dict, case: str,
                                                         caplog) -> None:
    parts, package = aot_case["parts"], aot_case["package"]
    victim = writer(store, env["tmp"], WRITER_KEY, aot.AotCache, parts)
    if case in ("no-key", "untagged"):
        assert writer(store, env["tmp"], None, aot.AotCache, parts).store_payload(package)
    elif case == "other-key":
        assert writer(store, env["tmp"], OTHER_KEY, aot.AotCache, parts).store_payload(package)
    elif case == "replayed-under-another-key":
        other = writer(store, env["tmp"], WRITER_KEY, aot.AotCache, parts, entry_key="another-model")
        assert other.store_payload(package)
        victim.backend.put(victim.digest, other.backend.get(other.digest))
    else:  # a key holder's torch.compile entry, tagged for the package's digest: another kind, refused
        head = json.dumps({"key": KEY, "env": victim.env, "sha256": hashlib.sha256(package).hexdigest()})
        body = head.encode() + b"\n" + package
        victim.backend.put(victim.digest, cc.MAGIC + cc.entry_tag(bytes.fromhex(WRITER_KEY), "compile",
                                                                  victim.digest, body) + b"\n" + body)
    with caplog.at_level(logging.WARNING, "warmstart"):
        aot_read(store, env, aot_case, key_hex=None if case == "no-key" else WRITER_KEY)
    assert not env["marker"].exists()
    assert len(aot_case["calls"]) == 1  # treated as a miss
    assert "could not be loaded" not in caplog.text  # refused before the loader ever saw it
    assert "WARMSTART_COMPILE_CACHE_KEY" in caplog.text


def test_aot_same_key_round_trips_the_package_bytes(store: str, env: dict, aot_case: dict) -> None:
    package = aot_case["package"]
    assert writer(store, env["tmp"], WRITER_KEY, aot.AotCache, aot_case["parts"]).store_payload(package)
    env["mp"].setenv("WARMSTART_COMPILE_CACHE_KEY", WRITER_KEY)
    reader = aot.AotCache(KEY, aot_case["parts"], url=store)
    assert reader.fetch_payload() == package
    assert not env["marker"].exists()  # fetching verifies and returns bytes; nothing was loaded yet


# ---------------------------------------------------------------------------------------- odd entries

_ODD_ENTRY_CHILD = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from warmstart.compiled import compile_cache as cc
c = cc.CompileCache("victim-model")
path = os.path.join(os.environ["WARMSTART_COMPILE_CACHE"], c.digest)
os.mkfifo(path) if sys.argv[1] == "fifo" else os.symlink("/dev/zero", path)
print("payload", c.fetch_payload())
"""


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_fifo_or_device_at_an_entry_is_a_miss_not_a_hang(env: dict, kind: str) -> None:
    """A FIFO (would block the open) or a link to ``/dev/zero`` (would be read without end) in a store
    directory: a warned miss, at once. Run in a child limited to 2 GiB and 60 s."""
    import os
    import subprocess
    import sys

    store = env["tmp"] / "shared-store"
    store.mkdir()
    run_env = dict(os.environ, WARMSTART_COMPILE_CACHE=str(store), WARMSTART_COMPILE_CACHE_KEY=WRITER_KEY)
    try:
        r = subprocess.run([sys.executable, "-c", _ODD_ENTRY_CHILD, kind], env=run_env, capture_output=True,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a {kind} entry hung")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "payload None" in r.stdout
    assert "ignoring" in r.stderr and "Traceback" not in r.stderr


def test_an_entry_over_the_size_cap_is_a_miss_and_is_not_read(store: str, env: dict, caplog) -> None:
    """File and Redis stores alike: an entry larger than ``MAX_ENTRY_BYTES`` is never read (Redis: STRLEN first)."""
    w = writer(store, env["tmp"], WRITER_KEY)
    assert w.store_payload(b"p" * 4096)
    env["mp"].setattr(cc, "MAX_ENTRY_BYTES", 1024)
    if store.startswith("redis"):
        import redis

        env["mp"].setattr(redis.Redis, "get", lambda *a, **k: pytest.fail("GET of an entry over the cap"))
    with caplog.at_level(logging.WARNING, "warmstart"):
        assert not read(store, env, key_hex=WRITER_KEY)
    assert "1024" in caplog.text

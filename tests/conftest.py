"""Shared fixtures: loopback origins (test Hub + CDN, plain HTTP), synthetic and real models, a tmp home.

No test reaches the internet: ``HF_ENDPOINT`` points at a closed loopback port until a fixture points
it at the test Hub, and a guard refuses any socket connection outside 127.0.0.0/8 and ::1.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub (it reads these at import time).
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: accidental Hub calls fail fast, offline
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)

from tests.data.minilm import minilm_repo  # noqa: E402
from tests.data.synth import make_llama_repo  # noqa: E402
from tests.servers.http import HttpOrigin  # noqa: E402
from tests.servers.hub import HubRepo, HubServer  # noqa: E402

HF_TEST_TOKEN = "hf_test_token"

# ------------------------------------------------------------------------------ no internet, ever

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_address(sock: socket.socket, address) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0] if isinstance(address, tuple) else address
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return
    except ValueError:
        pass
    raise ConnectionRefusedError(f"tests may not reach the network: connection to {address!r} refused")


def _guarded_connect(self, address):
    _check_address(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(self, address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _offline_session() -> Iterator[None]:
    """Telemetry off, HF endpoint on loopback, no forward proxy from the machine's environment (the
    proxy tests set their own), and no socket may leave the machine."""
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        os.environ.pop(name, None)
        os.environ.pop(name.upper(), None)
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = _real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def tiny_llama_files(tmp_path_factory) -> dict[str, Path]:
    """A ~4 MB Llama-shaped checkpoint: 4 shards + index + config (``{repo path: file}``)."""
    return make_llama_repo(tmp_path_factory.mktemp("tiny-llama"), 4 << 20, shards=4, seed=1)


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory) -> Path:
    """A directory holding a ~20 MB Llama-shaped checkpoint in 4 shards (bf16, seed 0)."""
    out = tmp_path_factory.mktemp("synth-model")
    make_llama_repo(out, 20 << 20, shards=4)
    return out


# ------------------------------------------------------------------------------------- origins


@pytest.fixture(scope="session")
def _hub_session(tiny_llama_files) -> Iterator[HubServer]:
    repos = [
        minilm_repo(),
        HubRepo("test-org/tiny-llama", tiny_llama_files),
        HubRepo("test-org/private", {"config.json": b'{"private": true}\n', "weights.bin": b"p" * 4096},
                private=True),
        HubRepo("test-org/gated", {"config.json": b'{"gated": true}\n', "weights.bin": b"g" * 4096}, gated=True),
    ]
    with HubServer(repos=repos, tokens=[HF_TEST_TOKEN]) as hub:
        yield hub


@pytest.fixture
def hub(_hub_session: HubServer) -> Iterator[HubServer]:
    """The session's test Hub (``.endpoint``, ``.cdn_endpoint``), with counters zeroed, no faults and an
    unshaped link. Repos: ``sentence-transformers/all-MiniLM-L6-v2``, ``test-org/tiny-llama`` (4 shards),
    ``test-org/private`` and ``test-org/gated`` (token ``hf_test_token``). Commits pushed by a test stay."""
    _hub_session.reset()
    yield _hub_session
    _hub_session.reset()


@pytest.fixture(scope="session")
def _http_session(tmp_path_factory) -> Iterator[HttpOrigin]:
    root = tmp_path_factory.mktemp("http-origin")
    with HttpOrigin(root) as origin:
        yield origin


@pytest.fixture
def http_origin(_http_session: HttpOrigin) -> Iterator[HttpOrigin]:
    """A plain HTTP origin serving its ``.root`` (a session tmp dir) plus files added with ``put()``;
    counters zeroed, no faults, Range/ETag/Last-Modified on, unshaped."""
    _http_session.reset()
    yield _http_session
    _http_session.reset()


@pytest.fixture
def ws_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: HubServer) -> Path:
    """A fresh ``WARMSTART_HOME``; ``HF_ENDPOINT`` points at the test Hub; no token, not offline."""
    home = tmp_path / "warmstart-home"
    home.mkdir()
    monkeypatch.setenv("WARMSTART_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "WARMSTART_OFFLINE", "HF_HUB_CACHE", "WARMSTART_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return home


# ------------------------------------------------------------------------ as an unprivileged user


class Unprivileged:
    """Runs the ``warmstart`` command as ``nobody`` (root ignores permission bits, so tests of
    read-only directories must not run as root). ``root`` is a world-writable scratch directory
    outside pytest's root-only tmp tree; ``root / "home"`` is the user's cache home."""

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.root, self.uid, self.gid = root, uid, gid

    def run(self, args: list[str], *, timeout: float = 60, **env: str):
        import subprocess
        import sys

        base = {k: v for k, v in os.environ.items() if not k.startswith(("WARMSTART_", "HF_"))}
        base.update(WARMSTART_HOME=str(self.root / "home"), HF_HOME=str(self.root / "hf-home"),
                    HOME=str(self.root), PYTHONDONTWRITEBYTECODE="1", HF_HUB_DISABLE_TELEMETRY="1")
        base.update(env)
        cmd = [] if os.geteuid() != 0 else ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                                             "--clear-groups"]
        return subprocess.run([*cmd, sys.executable, "-m", "warmstart.cli", *args], env=base,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def unprivileged() -> Iterator[Unprivileged]:
    import shutil
    import tempfile

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("running as root needs setpriv (util-linux) to test permissions as nobody")
    root = Path(tempfile.mkdtemp(prefix="ws-unpriv-", dir="/tmp"))
    os.chmod(root, 0o777)
    (root / "home").mkdir()
    (root / "hf-home").mkdir()
    uid, gid = (65534, 65534) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    for d in (root / "home", root / "hf-home"):
        os.chown(d, uid, gid)
    try:
        yield Unprivileged(root, uid, gid)
    finally:
        shutil.rmtree(root, ignore_errors=True)

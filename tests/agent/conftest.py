"""The node agent as a process on the loopback test Hub: start, wait, ask, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.servers.hub import HubRepo, HubServer
from warmstart.agent import client

pytest.importorskip("uvicorn", reason="the agent needs the [agent] extra")
pytest.importorskip("starlette", reason="the agent needs the [agent] extra")
pytest.importorskip("prometheus_client", reason="the agent needs the [agent] extra")

TINY = "test-org/tiny-llama"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, data: dict | str) -> None:
    """Write the config the way a ConfigMap update lands: a new file, then a symlink swapped onto it."""
    target = path.parent / f".cfg-{uuid.uuid4().hex[:8]}"
    target.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    tmp = path.parent / f".swap-{uuid.uuid4().hex[:8]}"
    os.symlink(target.name, tmp)
    os.replace(tmp, path)


class AgentProcess:
    def __init__(self, home: Path, config: Path, env: dict[str, str], *, listen: str | None = None,
                 token_file: Path | None = None) -> None:
        self.home, self.config, self.env, self.listen, self.token_file = home, config, env, listen, token_file
        self.socket = home / "agent.sock"
        self.proc: subprocess.Popen | None = None
        self.log = home.parent / f"agent-{uuid.uuid4().hex[:6]}.log"

    def start(self, timeout: float = 30) -> AgentProcess:
        args = [sys.executable, "-m", "warmstart.cli", "agent", "--config", str(self.config), "--poll-interval", "0.2"]
        if self.listen:
            args += ["--listen", self.listen]
        if self.token_file:
            args += ["--token-file", str(self.token_file)]
        self._fh = open(self.log, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (client.AgentAddress(unix=self.socket).answers() and self._tcp_listens()):
            assert self.proc.poll() is None, f"the agent exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"the agent did not start: {self.log.read_text()}"
            time.sleep(0.05)
        return self

    def _tcp_listens(self) -> bool:
        """True once the TCP listener (if any) accepts connections: it may come up after the socket."""
        if not self.listen:
            return True
        host, _, port = self.listen.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def addr(self) -> client.AgentAddress:
        return client.AgentAddress(unix=self.socket)

    def get(self, path: str, addr: client.AgentAddress | None = None):
        """(status, body) of a GET; body is JSON when it parses, else text."""
        conn = (addr or self.addr).connection(30)
        conn.request("GET", path, headers={"Authorization": f"Bearer {addr.token}"} if addr and addr.token else {})
        r = conn.getresponse()
        raw = r.read().decode()
        conn.close()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw

    def wait_ready(self, timeout: float = 30, pred=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get("/readyz")
            if (status == 200 if pred is None else pred(status, body)):
                return body
            assert self.proc.poll() is None, f"the agent exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"not ready: {body}\n{self.log.read_text()}"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.kill()
            self._fh.close()

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


@pytest.fixture
def agent_env(ws_home: Path, hub: HubServer) -> dict[str, str]:
    env = dict(os.environ)
    env.update(WARMSTART_HOME=str(ws_home), HF_ENDPOINT=hub.endpoint, PYTHONUNBUFFERED="1")
    env.pop("WARMSTART_AGENT", None)
    return env


@pytest.fixture
def start_agent(ws_home: Path, agent_env: dict[str, str], tmp_path: Path) -> Iterator:
    """``start_agent(config_dict, **kw)`` starts an agent on this test's home; stopped afterwards."""
    started: list[AgentProcess] = []

    def start(config: dict | str | None = None, *, home: Path | None = None, env: dict | None = None,
              **kw) -> AgentProcess:
        cfg = tmp_path / "cfgdir" / "agent.yaml"
        cfg.parent.mkdir(exist_ok=True)
        if config is not None or not cfg.exists():
            write_config(cfg, config if config is not None else {"models": []})
        a = AgentProcess(home or ws_home, cfg, env or agent_env, **kw).start()
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop(signal.SIGKILL)


@pytest.fixture
def make_repo(hub: HubServer):
    def make(files: dict[str, bytes], **kwargs) -> str:
        repo_id = f"agent-test/r-{uuid.uuid4().hex[:10]}"
        hub.add_repo(HubRepo(repo_id, files, **kwargs))
        return repo_id

    return make

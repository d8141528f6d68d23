"""Talk to a node agent: find it, ask it to pull, read its answer. Standard library only, so every
client (a pod's init container, ``warmstart pull``, ``warmstart.pull()``) can delegate without the
``[agent]`` extra.

Where the agent is::

    WARMSTART_AGENT=/var/lib/warmstart/agent.sock     a unix socket
    WARMSTART_AGENT=http://10.0.0.5:8470              TCP (needs WARMSTART_AGENT_TOKEN, see docs/agent.md)
    WARMSTART_AGENT=off                               never delegate
    (unset)                                           <home>/agent.sock, if it answers

>>> AgentAddress.parse("http://127.0.0.1:8470").tcp
('127.0.0.1', 8470)
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .. import errors

SOCKET_NAME = "agent.sock"
#: how long a client waits for the agent to say anything (a pull's progress lines keep it alive)
READ_TIMEOUT = 300.0


@dataclasses.dataclass(frozen=True)
class AgentAddress:
    """Where an agent listens: a unix socket path or a TCP ``(host, port)``."""

    unix: Path | None = None
    tcp: tuple[str, int] | None = None
    token: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str, token: str | None = None) -> AgentAddress:
        if text.startswith(("http://", "https://")):
            if text.startswith("https://"):
                raise errors.ConfigError(f"WARMSTART_AGENT={text}: the agent speaks plain HTTP on TCP; "
                                         "use http://HOST:PORT or its unix socket")
            parts = urlsplit(text)
            if not parts.hostname or not parts.port:
                raise errors.ConfigError(f"WARMSTART_AGENT={text}: give http://HOST:PORT or a socket path")
            return cls(tcp=(parts.hostname, parts.port), token=token)
        if text.startswith("unix://"):
            text = text[len("unix://"):]
        return cls(unix=Path(text), token=token)

    def __str__(self) -> str:
        return str(self.unix) if self.unix else f"http://{self.tcp[0]}:{self.tcp[1]}"  # type: ignore[index]

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.tcp:
            return http.client.HTTPConnection(*self.tcp, timeout=timeout)
        return _UnixConnection(str(self.unix), timeout)

    def answers(self) -> bool:
        """Whether something accepts connections there (a stale socket file does not)."""
        if self.unix is None:
            return True
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(str(self.unix))
            return True
        except OSError:
            return False
        finally:
            s.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def find_agent(home: Path, env: Mapping[str, str] | None = None) -> AgentAddress | None:
    """The agent this process should delegate to, or ``None`` (pull locally).

    ``WARMSTART_AGENT`` names one (it must answer, else the pull fails saying so); otherwise
    ``<home>/agent.sock`` is used when it answers."""
    env = os.environ if env is None else env
    token = env.get("WARMSTART_AGENT_TOKEN") or None
    named = env.get("WARMSTART_AGENT", "").strip()
    if named.lower() in ("off", "none", "0", "false"):
        return None
    if named:
        return AgentAddress.parse(named, token)
    sock = home / SOCKET_NAME
    if not sock.exists():
        return None
    addr = AgentAddress(unix=sock, token=token)
    return addr if addr.answers() else None


def _error_class(name: str) -> type[errors.WarmstartError]:
    cls = getattr(errors, str(name), None)
    if isinstance(cls, type) and issubclass(cls, errors.WarmstartError):
        return cls
    return errors.WarmstartError


def _unreachable(addr: AgentAddress, exc: BaseException) -> errors.WarmstartError:
    return errors.OfflineError(f"the warmstart agent at {addr} does not answer ({exc}); start it "
                               "(`warmstart agent`), or unset WARMSTART_AGENT to pull without it")


def request(addr: AgentAddress, method: str, path: str, body: dict | None = None,
            timeout: float = READ_TIMEOUT) -> http.client.HTTPResponse:
    """One request; a refused or failing connection becomes a one-line :class:`OfflineError`."""
    conn = addr.connection(timeout)
    headers = {"Content-Type": "application/json"}
    if addr.token:
        headers["Authorization"] = f"Bearer {addr.token}"
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        resp = conn.getresponse()
    except OSError as exc:
        conn.close()
        raise _unreachable(addr, exc) from None
    if resp.status >= 400:
        try:
            msg = json.loads(resp.read() or b"{}")
        except (OSError, ValueError):
            msg = {}
        conn.close()
        cls = _error_class(msg.get("type", "WarmstartError"))
        raise cls(f"the warmstart agent at {addr} refused the request (HTTP {resp.status}): "
                  f"{msg.get('error', resp.reason)}")
    return resp


def _lines(resp: http.client.HTTPResponse) -> Iterator[dict]:
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield json.loads(line)


def pull(addr: AgentAddress, ref: str, *, revision: str | None = None, include: tuple[str, ...] = (),
         exclude: tuple[str, ...] = (), tier: str | None = None,
         on_progress: Callable[[dict], None] | None = None) -> dict:
    """Ask the agent to pull; returns its last line (what ``warmstart pull --json`` prints).

    Errors the agent met come back as the same :class:`~warmstart.errors.WarmstartError` subclass,
    one line. An agent that stops mid-pull (killed, restarted) gives a :class:`TransferError`: the
    next pull resumes from what it kept."""
    body = {"ref": ref, "revision": revision, "include": list(include), "exclude": list(exclude), "tier": tier}
    resp = request(addr, "POST", "/v1/pull", {k: v for k, v in body.items() if v not in (None, [])})
    try:
        for msg in _lines(resp):
            if "error" in msg:
                raise _error_class(msg.get("type", ""))(msg["error"])
            if "files" in msg and "revision" in msg:
                return msg
            if on_progress is not None:
                on_progress(msg)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise errors.TransferError(f"the warmstart agent at {addr} stopped answering mid-pull ({exc}); "
                                   "run the same command again: the pull resumes") from None
    finally:
        resp.close()
    raise errors.TransferError(f"the warmstart agent at {addr} stopped before the pull of {ref} finished; "
                               "run the same command again: the pull resumes")


def get_json(addr: AgentAddress, path: str, timeout: float = 30.0):
    resp = request(addr, "GET", path, timeout=timeout)
    try:
        return json.loads(resp.read())
    finally:
        resp.close()

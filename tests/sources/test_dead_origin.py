"""A dead origin is never waited on: refused, unresolvable or unroutable connections end a metadata
request at once (no backoff), a blackholed one after the connect timeout, and a cached model is served."""

from __future__ import annotations

import logging
import socket
import time

import pytest

import warmstart
from warmstart.config import Settings
from warmstart.errors import OfflineError
from warmstart.sources import hf, ociclient, s3api
from warmstart.sources.base import OriginUnreachable

TINY = "test-org/tiny-llama"


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connections are refused
    return port


@pytest.fixture
def blackhole():
    """A loopback port whose accept queue is full, so a new connection gets no answer (a SYN dropped,
    as a firewall that drops packets does)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fill = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fill.append(c)
    time.sleep(0.1)
    yield port
    for c in fill:
        c.close()
    srv.close()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Every backoff sleep the metadata loops take."""
    taken: list[float] = []
    for mod in (hf, ociclient):
        monkeypatch.setattr(mod.time, "sleep", taken.append)
    return taken


@pytest.fixture
def notices(caplog):
    caplog.set_level(logging.WARNING, logger="warmstart")
    return caplog


def test_refused_origin_serves_the_cache_without_backoff(ws_home, hub, monkeypatch, closed_port, sleeps, notices):
    online = warmstart.pull(TINY)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    snap = warmstart.pull(TINY)
    assert snap.revision == online.revision and snap.downloaded == 0
    assert sleeps == [], "backed off against a refused port"
    assert any("ConnectionRefusedError" in r.getMessage() for r in notices.records), notices.text
    with pytest.raises(OfflineError, match="not in the cache"):
        warmstart.pull("test-org/gated")
    assert sleeps == []


def test_blackholed_origin_gets_the_connect_timeout_once(ws_home, hub, monkeypatch, blackhole, sleeps, notices):
    online = warmstart.pull(TINY)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{blackhole}")
    monkeypatch.setenv("WARMSTART_CONNECT_TIMEOUT", "0.3")
    monkeypatch.setenv("WARMSTART_STALL_TIMEOUT", "600")  # were the read timeout used, the test would hang
    snap = warmstart.pull(TINY)
    assert snap.revision == online.revision
    assert sleeps == [], "retried a connection the origin did not answer"
    said = [r.getMessage() for r in notices.records if "unreachable" in r.getMessage()]
    assert len(said) == 1 and "within 0.3 s (WARMSTART_CONNECT_TIMEOUT)" in said[0], said


def test_a_transient_failure_is_still_retried(ws_home, hub, monkeypatch, sleeps):
    """Only failures a retry cannot mend end the loop: a 503 is tried again after a backoff."""
    hub.faults.add("status5xx", path_glob="/api/models/*", status=503, times=1)
    assert warmstart.pull(TINY).files
    assert len(sleeps) == 1


def test_s3_refused_endpoint_fails_at_once(closed_port):
    taken: list[float] = []
    api = s3api.Api(s3api.Config(s3api.Credentials("k", "s"), "us-east-1", f"http://127.0.0.1:{closed_port}"),
                    sleep=taken.append)
    with pytest.raises(s3api.S3Error) as err:
        api.list_v2("models", "m/")
    assert err.value.status == 0 and err.value.code == "ConnectionRefusedError" and taken == []


def test_oci_refused_registry_fails_at_once(closed_port, sleeps):
    reg = ociclient.Registry(Settings.from_env({}), f"127.0.0.1:{closed_port}", "models/m")
    with pytest.raises(OriginUnreachable, match="unreachable"):
        reg.get_manifest("v1")
    assert sleeps == []

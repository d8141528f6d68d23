"""Secrets and terminal escapes (issue 14, findings 5 and 16).

* A signed URL's query string (``X-Amz-Signature``, ``token``...) and ``user:password@`` never reach
  ``index.db``, folder names, logs, ``ls``/``--json``, error lines or exception text; a fresh
  signature of the same object is a cache hit (no second download, one entry in ``ls``).
* Text a server sends (error headers and bodies) reaches the terminal with its control characters
  escaped: no ESC, BEL or C1 byte on the CLI's stderr or stdout.

Every origin here is a loopback server started by the test.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers.http import HttpFileHandler, HttpOrigin

SECRETS = ("SECRET1", "SECRET2", "SECRET3", "SECRETCRED", "SECRETTOKEN")
DATA = random.Random(14).randbytes(300_000)
PATH = "m/model.safetensors"
#: what a hostile server puts into its error messages: an OSC title change, BEL, clear screen, a C1 CSI
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x07"
CONTROL_BYTES = ("\x1b", "\x07", "\x9b")


class SignedHandler(HttpFileHandler):
    """Serves files only to requests that carry a signature in the query (and Basic credentials when
    the origin wants them); can fail HEAD or GET with a body and header that echo the signed request."""

    server: object

    def do_GET(self) -> None:
        origin = self.server.origin
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        origin.seen_queries.append(query)
        if "X-Amz-Signature" not in query:
            self._fail(403, "request is not signed")
            return
        if origin.basic is not None and self.headers.get("Authorization") != origin.basic:
            self._fail(401, "bad credentials")
            return
        status = origin.fail.get(self.command)
        if status:
            self._fail(status, "failing on purpose")
            return
        super().do_GET()

    def _fail(self, status: int, why: str) -> None:
        if not self.begin():
            return
        # as S3 and CDNs do, the answer quotes the request it refuses (with its signature)
        text = f"{why}: {self.command} {self.path} {self.headers.get('Authorization', '')} {HOSTILE}"
        body = text.encode("utf-8", "replace")
        self.send_response(status)
        self.send_header("X-Error-Message", text.encode("latin-1", "replace").decode("latin-1"))
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class SignedOrigin(HttpOrigin):
    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        self._server.RequestHandlerClass = SignedHandler
        self.basic: str | None = None
        self.fail: dict[str, int] = {}
        self.seen_queries: list[dict] = []


@pytest.fixture(scope="module")
def _signed_session() -> Iterator[SignedOrigin]:
    with SignedOrigin({PATH: DATA}) as origin:
        yield origin


@pytest.fixture
def signed(_signed_session: SignedOrigin) -> Iterator[SignedOrigin]:
    _signed_session.reset()
    _signed_session.basic, _signed_session.fail, _signed_session.seen_queries = None, {}, []
    yield _signed_session
    _signed_session.reset()


@pytest.fixture
def env(ws_home: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("WARMSTART_QUIET", None)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def cli(args: list[str], env: dict[str, str], outputs: list[str]) -> subprocess.CompletedProcess:
    """Run ``warmstart ARGS``; its stdout and stderr are appended to ``outputs``."""
    r = subprocess.run([sys.executable, "-m", "warmstart.cli", *args], env=env, capture_output=True,
                       timeout=120)
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    outputs += [out, err]
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(r.args, r.returncode, out, err)


def signed_url(origin: HttpOrigin, sig: str, userinfo: str = "") -> str:
    base = origin.url(PATH).replace("http://", f"http://{userinfo}", 1)
    return (f"{base}?X-Amz-Signature={sig}&X-Amz-Credential=SECRETCRED&X-Amz-Security-Token=SECRETTOKEN"
            "&token=SECRET2")


def assert_nowhere(home: Path, outputs: list[str], secrets: tuple[str, ...] = SECRETS) -> None:
    """No secret in any captured output, nor in any file (binary included: index.db) or name under home."""
    for text in outputs:
        for s in secrets:
            assert s not in text, f"{s} printed: {text!r}"
    for p in home.rglob("*"):
        for s in secrets:
            assert s not in p.name, f"{s} in the name {p}"
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"{s} stored in {p}"
        if p.is_symlink():
            for s in secrets:
                assert s not in os.readlink(p), f"{s} in the link {p}"


# ------------------------------------------------------------------------------ finding 5


def test_signed_url_is_never_stored_or_printed_and_a_new_signature_is_a_cache_hit(signed, env, ws_home):
    out: list[str] = []
    r = cli(["-vv", "pull", "--json", signed_url(signed, "SECRET1")], env, out)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["bytes_downloaded"] == len(DATA)
    assert Path(first["path"], "model.safetensors").read_bytes() == DATA
    assert signed.seen_queries and all(q["X-Amz-Signature"] == ["SECRET1"] for q in signed.seen_queries)
    sent = signed.counters.bytes_for("*")
    assert sent >= len(DATA)

    assert cli(["-v", "pull", signed_url(signed, "SECRET1")], env, out).returncode == 0
    for args in (["ls"], ["ls", "--json"], ["du"], ["du", "--json"], ["verify"], ["verify", "--json"],
                 ["pin", signed_url(signed, "SECRET1")], ["rm", "--dry-run", signed_url(signed, "SECRET1")]):
        r = cli(["-vv", *args], env, out)
        assert r.returncode == 0, (args, r.stderr)

    # a fresh signature of the same object: served from the cache, no second entry
    r = cli(["-vv", "pull", "--json", signed_url(signed, "SECRET3")], env, out)
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert second["bytes_downloaded"] == 0 and second["path"] == first["path"]
    assert signed.counters.bytes_for("*") == sent, "the object was downloaded again"
    assert any(q["X-Amz-Signature"] == ["SECRET3"] for q in signed.seen_queries)  # the request is signed
    listed = json.loads(cli(["ls", "--json"], env, out).stdout)
    assert len(listed) == 1, listed

    assert_nowhere(ws_home, out)


def test_signed_url_in_the_python_api_logs_and_objects(signed, ws_home, caplog):
    import warmstart
    from warmstart.sources.registry import parse

    url = signed_url(signed, "SECRET1")
    ref = parse(url)
    assert ref.request_url == url
    texts = [str(ref), repr(ref), repr(ref.with_revision("latest"))]
    with caplog.at_level("DEBUG", logger="warmstart"):
        snap = warmstart.pull(url, quiet=True)
    texts += [r.getMessage() for r in caplog.records] + [repr(snap), json.dumps(snap.to_json())]
    signed.fail = {"HEAD": 404}
    with pytest.raises(warmstart.errors.NotFoundError) as info:
        warmstart.pull(signed_url(signed, "SECRET3").replace("model", "other"), quiet=True)
    texts += [str(info.value), repr(info.value)]
    assert_nowhere(ws_home, texts)


@pytest.mark.parametrize("fail", [{"HEAD": 404}, {"HEAD": 500}, {"HEAD": 403}, {"GET": 403}, {"GET": 404}])
def test_error_for_a_signed_url_names_no_secret(signed, env, ws_home, fail):
    signed.fail = fail
    out: list[str] = []
    r = cli(["-vv", "pull", signed_url(signed, "SECRET1")], env, out)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    assert "model.safetensors" in errors[0]  # still says what failed
    assert_nowhere(ws_home, out)
    assert not any(c in r.stderr for c in CONTROL_BYTES), r.stderr


def test_userinfo_credentials_are_sent_but_never_printed_or_stored(signed, env, ws_home):
    creds = "alice:SECRETPASS"
    signed.basic = "Basic " + base64.b64encode(creds.encode()).decode()
    secrets = (*SECRETS, "SECRETPASS", "alice", base64.b64encode(creds.encode()).decode())
    out: list[str] = []
    r = cli(["-vv", "pull", "--json", signed_url(signed, "SECRET1", "alice:SECRETPASS@")], env, out)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_downloaded"] == len(DATA)
    for args in (["ls"], ["ls", "--json"], ["verify"]):
        cli(args, env, out)
    # wrong password: a one-line error that quotes neither
    r = cli(["-vv", "pull", signed_url(signed, "SECRET3", "alice:SECRETWRONG@").replace("model", "other")],
            env, out)
    assert r.returncode == 1 and "access denied" in r.stderr
    assert_nowhere(ws_home, out, (*secrets, "SECRETWRONG"))


def test_bad_signed_ref_error_quotes_no_secret(env, ws_home):
    out: list[str] = []
    for bad in ("https:///x.bin?X-Amz-Signature=SECRET1", "https://h:99999/x?token=SECRET2",
                "https://u:SECRET3@h/a b?sig=SECRET1", "https://u:SECRETCRED@127.0.0.1:99999/x"):
        r = cli(["pull", bad], env, out)
        assert r.returncode == 2, r.stderr
    assert_nowhere(ws_home, out)


# ------------------------------------------------------------------------------ finding 16


class _HostileHub(BaseHTTPRequestHandler):
    """Answers every Hub metadata request with an error whose message is terminal escapes."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = f"{HOSTILE} body".encode()
        self.send_response(409)
        self.send_header("X-Error-Code", f"Weird{HOSTILE}".encode("latin-1", "replace").decode("latin-1"))
        self.send_header("X-Error-Message", f"conflict {HOSTILE} hf_test_token end")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_server_error_message_cannot_drive_the_terminal(hostile_hub, env, ws_home):
    env = {**env, "HF_ENDPOINT": hostile_hub, "HF_TOKEN": "hf_test_token"}
    out: list[str] = []
    r = cli(["-vv", "pull", "hf://org/name"], env, out)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert "conflict" in r.stderr and "\\x1b]0;pwned\\x07" in r.stderr  # shown, escaped
    for c in CONTROL_BYTES:
        assert c not in r.stderr
    assert "hf_test_token" not in r.stderr  # the server echoed the token: not printed


def test_ls_escapes_control_characters_in_names(signed, env, ws_home):
    out: list[str] = []
    assert cli(["pull", signed_url(signed, "SECRET1")], env, out).returncode == 0
    from warmstart.cache.index import Index

    index = Index(ws_home / "index.db")
    (source,) = {row.source for row in index.snapshots()}
    revision = index.snapshots()[0].revision
    index.set_ref(source, f"evil{HOSTILE}", revision)  # e.g. a damaged or hostile index
    index.close()
    for args in (["ls"], ["pin", signed_url(signed, "SECRET1")]):
        r = cli(args, env, out)
        assert r.returncode == 0, r.stderr
        for c in CONTROL_BYTES:
            assert c not in r.stdout and c not in r.stderr
    assert "evil\\x1b]0;pwned" in out[-4]
    assert json.loads(cli(["ls", "--json"], env, out).stdout)[0]["refs"]  # JSON escapes by itself

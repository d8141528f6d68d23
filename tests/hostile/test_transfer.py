"""Hostile origins against the transfer engine and the metadata reads (issue 14: findings 6, 8, 13, 14).

A file's bytes are bounded by its listed or probed size and by the budget; a failed stream leaves no
partial file and gc removes partials that can never resume; a stalled or dripping body never holds a
pull; metadata answers are bounded; bad redirects, headers and settings are one-line errors.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import warmstart
from tests.hostile._transfer import (
    COMMIT,
    REPO,
    HostileOrigin,
    drip,
    endless,
    first,
    json_answer,
    redirect,
    serve,
    sized_head,
    slow,
    stall,
    unsized,
)
from tests.pull.conftest import run_cli
from warmstart.errors import TransferError
from warmstart.transfer import FileJob, Transfer

MiB = 1 << 20


@pytest.fixture
def origin() -> Iterator[HostileOrigin]:
    with HostileOrigin() as o:
        yield o


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, origin: HostileOrigin) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("WARMSTART_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", origin.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "WARMSTART_OFFLINE", "WARMSTART_MAX_SIZE", "WARMSTART_QUIET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WARMSTART_STALL_TIMEOUT", "1")  # every test here: a stall costs a second
    return home


def cli(args: list[str], **env: str):
    e = dict(os.environ)
    e.update(env)
    e["PYTHONUNBUFFERED"] = "1"
    return run_cli(args, e, timeout=120)


def one_line_failure(r, code: int = 1) -> str:
    """The command failed with ``code`` and a single stderr line, no traceback; returns the line."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]


def partials(home: Path) -> list[str]:
    tmp = home / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


class TmpWatcher:
    """The largest file seen under tmp/ while a pull runs."""

    def __init__(self, home: Path) -> None:
        self.tmp, self.largest = home / "tmp", 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            try:
                for p in self.tmp.iterdir():
                    self.largest = max(self.largest, p.stat().st_size)
            except OSError:
                pass

    def __enter__(self) -> TmpWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ finding 6: bounded bytes


@pytest.mark.parametrize("source", ["hub", "http"])
def test_a_file_listed_as_13_bytes_never_takes_more(origin, home, source):
    if source == "hub":
        origin.hub_file("config.json", b"x" * 13, endless)
        ref = f"hf://{REPO}"
    else:  # the size comes from the HEAD
        origin.route("/plain/config.json", sized_head(13, endless))
        ref = origin.url("/plain/config.json")
    with TmpWatcher(home) as w:
        r = cli(["pull", ref])
    line = one_line_failure(r)
    assert "more than the 13 bytes" in line
    assert w.largest <= 13
    assert not [n for n in partials(home) if ".part" in n]  # a stream never resumes: nothing left
    assert origin.sent < 64 * MiB  # the engine hung up on it


def test_a_stream_of_unknown_size_stops_at_the_budget(origin, home):
    origin.route("/plain/big.bin", unsized(b"z" * (3 * MiB)))
    r = cli(["pull", origin.url("/plain/big.bin")], WARMSTART_MAX_SIZE="1M")
    line = one_line_failure(r)
    assert "cache budget" in line and "WARMSTART_MAX_SIZE" in line
    assert not [n for n in partials(home) if ".part" in n]
    assert not list((home / "blobs").rglob("*")) or all(p.is_dir() for p in (home / "blobs").rglob("*"))


def test_a_content_length_beyond_the_budget_fails_before_a_byte(origin, home):
    data = b"z" * (3 * MiB)
    origin.route("/plain/big.bin", lambda h: (unsized(data) if h.command == "HEAD" else serve(data))(h))
    with TmpWatcher(home) as w:
        r = cli(["pull", origin.url("/plain/big.bin")], WARMSTART_MAX_SIZE="1M")
    assert "cache budget" in one_line_failure(r)
    assert w.largest == 0 and not [n for n in partials(home) if ".part" in n]


def test_a_stream_of_unknown_size_within_the_budget_is_pulled(origin, home):
    data = os.urandom(100_000)
    origin.route("/plain/small.bin", unsized(data))
    r = cli(["pull", origin.url("/plain/small.bin")], WARMSTART_MAX_SIZE="1M")
    assert r.returncode == 0, r.stderr
    assert (Path(r.stdout.strip().splitlines()[-1]) / "small.bin").read_bytes() == data


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_gc_removes_partials_that_can_never_resume(home):
    tmp, locks = home / "tmp", home / "locks"
    tmp.mkdir(parents=True)
    locks.mkdir(parents=True)
    files = {
        "dead.part": None,                                   # no sidecar (a stream's file after kill -9)
        "bad.part": b"not json",                             # a sidecar that cannot be read
        "other.part": {"version": 1, "size": 999, "done": []},  # a sidecar of another size
        "live.part": {"version": 1, "size": 64, "done": [[0, 10]]},  # resumable: kept for days
        "held.part": None,                                   # a download holds its lock
        "fresh.part": None,                                  # just written: within the grace
    }
    for name, state in files.items():
        (tmp / name).write_bytes(b"p" * 64)
        if state is not None:
            (tmp / (name + ".json")).write_bytes(state if isinstance(state, bytes) else json.dumps(state).encode())
    (tmp / "import-0123abcd").write_bytes(b"i" * 10)  # a killed import
    (tmp / "gone.part.json").write_text("{}")          # a sidecar whose partial is gone
    for p in tmp.iterdir():
        if not p.name.startswith("fresh"):
            _age(p, 7200)
    fd = os.open(locks / "held.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        warmstart.cache().gc()
    finally:
        os.close(fd)
    assert partials(home) == ["fresh.part", "held.part", "live.part", "live.part.json"]


# ------------------------------------------------------------------ finding 8: stalls and drips


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["stall", "drip-stream", "drip-chunk", "drip-headers"])
def test_a_stalled_or_dripping_body_is_dropped_and_retried(origin, home, kind):
    small, large = os.urandom(64 << 10), os.urandom(5 * MiB)
    if kind == "stall":
        origin.hub_file("config.json", small, first(1, stall(), serve(small)))
    elif kind == "drip-stream":
        origin.hub_file("config.json", small, first(1, drip(small), serve(small)))
    elif kind == "drip-chunk":  # an LFS file: ranged chunks, no HEAD
        origin.hub_file("model.bin", large, first(1, drip(large), serve(large)), lfs=True)
    else:
        origin.hub_file("config.json", small, first(1, drip(small, headers_too=True), serve(small)))
    snap = warmstart.pull(f"hf://{REPO}", quiet=True)
    name, data = ("model.bin", large) if kind == "drip-chunk" else ("config.json", small)
    assert (snap.path / name).read_bytes() == data
    path = f"/{REPO}/resolve/{COMMIT}/{name}"
    assert sum(1 for _, p in origin.requests if p == path) >= 2  # the first answer was given up on


@pytest.mark.timeout(60)
def test_a_slow_but_steady_body_is_not_dropped(origin, home):
    data = os.urandom(48 << 10)  # 3 s at 16 KiB/s: above the minimum rate, each second brings bytes
    origin.hub_file("config.json", data, slow(data, 16 << 10))
    snap = warmstart.pull(f"hf://{REPO}", quiet=True)
    assert (snap.path / "config.json").read_bytes() == data
    assert sum(1 for _, p in origin.requests if p.endswith("/config.json")) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["stall", "drip", "drip-headers"])
def test_a_body_that_never_comes_fails_in_bounded_time(origin, tmp_path, kind):
    data = os.urandom(64 << 10)
    answer = {"stall": stall(), "drip": drip(data), "drip-headers": drip(data, headers_too=True)}[kind]
    origin.route("/f.bin", answer)
    engine = Transfer(tmp_path / "tmp", tmp_path / "locks", timeout=0.5, retries=1, min_connections=1)
    job = FileJob("f.bin", origin.url("/f.bin"), "k-" + kind, len(data))
    with pytest.raises(TransferError, match="no byte for|minimum rate") as e:
        engine.run([job], lambda r: None)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "tmp").glob("*.part*"))


# ------------------------------------------------------------------ finding 14: metadata answers


@pytest.mark.parametrize("length", [True, False], ids=["announced", "unannounced"])
def test_a_huge_listing_is_refused(origin, home, length):
    origin.hub_api(json_answer(b'{"sha": "' + b"a" * (70 * MiB) + b'"}', length=length))
    r = cli(["pull", f"hf://{REPO}"], WARMSTART_METADATA_LIMIT="1M")
    line = one_line_failure(r)
    assert "larger than" in line and "HF_ENDPOINT" in line


def test_deeply_nested_listing_json(origin, home):
    origin.hub_api(json_answer(b"[" * 100_000 + b"]" * 100_000))
    line = one_line_failure(cli(["pull", f"hf://{REPO}"]))
    assert "nested too deeply" in line


# ------------------------------------------------------------------ finding 13: redirects, headers, settings


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://[::1/x"])
@pytest.mark.parametrize("where", ["listing", "file"])
def test_redirects_outside_http_are_refused(origin, home, target, where):
    if where == "listing":
        origin.hub_api(redirect(target))
    else:
        origin.hub_file("config.json", b"{}", redirect(target))
    line = one_line_failure(cli(["pull", f"hf://{REPO}"]))
    assert "refused a redirect" in line


@pytest.mark.parametrize("value", ["abc", "-5", "²"])
def test_a_bad_content_length_is_an_unknown_size(origin, home, value):
    large, small = os.urandom(5 * MiB), b'{"a": 1}\n'
    origin.hub_file("model.bin", large,
                    lambda h: h.serve(large, {"Content-Length": value}) if h.command == "HEAD" else h.serve(large))
    origin.route("/plain/small.json", lambda h: h.serve(small, {"Content-Length": value, "Connection": "close"}))
    r = cli(["pull", f"hf://{REPO}"])  # non-LFS and over 4 MiB: a HEAD first
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (Path(r.stdout.strip().splitlines()[-1]) / "model.bin").read_bytes() == large
    r = cli(["pull", origin.url("/plain/small.json")])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (Path(r.stdout.strip().splitlines()[-1]) / "small.json").read_bytes() == small


@pytest.mark.parametrize("env", [
    {"WARMSTART_CHUNK_SIZE": "99999999999999999999999T"},
    {"WARMSTART_MAX_SIZE": "99999999999999999999999T"},
    {"WARMSTART_CHUNK_SIZE": "9" * 400},
    {"HF_ENDPOINT": "ftp://x"},
    {"HF_ENDPOINT": "notaurl"},
    {"HF_ENDPOINT": "http://[::1/x"},
    {"WARMSTART_STALL_TIMEOUT": "nan"},
], ids=lambda e: "-".join(f"{k}={v[:12]}" for k, v in e.items()))
def test_bad_settings_are_one_line_config_errors(home, env):
    line = one_line_failure(cli(["pull", f"hf://{REPO}"], **env), code=2)  # ConfigError: bad usage
    assert next(iter(env)) in line

"""Resume after SIGKILL and after an in-process interrupt; nothing unverified is ever published."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import warmstart
from tests.pull.conftest import BlobWatcher, MiB, assert_blobs_sound, sha256
from tests.servers.shaping import Link
from warmstart import api

SIZE = 32 * MiB
# What the killed pull received but had not recorded yet (at most the socket buffers of its 4
# connections, WARMSTART_MAX_CONNECTIONS below) is fetched again; nothing else ever is.
IN_FLIGHT = 4 * 2 * MiB
CONFIG = b'{"big": true}'


def _progress(home: Path) -> int:
    """Bytes recorded as written in the partial state files of ``tmp/``."""
    done = 0
    for p in (home / "tmp").glob("*.part.json"):
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        done += sum(b - a for a, b in state["done"])
    return done


def _quiet(hub, settle: float = 0.5, timeout: float = 15.0) -> int:
    """Wait until the origin has stopped sending (its byte count holds still for ``settle`` seconds);
    returns the bytes it served for ``/blobs/*``."""
    deadline = time.monotonic() + timeout
    last, since = hub.counters.bytes_for("/blobs/*"), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = hub.counters.bytes_for("/blobs/*")
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last


@pytest.fixture
def big_repo(make_repo):
    data = os.urandom(SIZE)
    return make_repo({"model.safetensors": data, "config.json": CONFIG}), data


@pytest.mark.slow
def test_resume_after_sigkill(ws_home, hub, cli_env, big_repo):
    repo_id, data = big_repo
    digest = sha256(data)
    hub.link = Link(per_conn_bps=4e6, total_bps=8e6)
    env = {**cli_env, "WARMSTART_MAX_CONNECTIONS": "4", "WARMSTART_MIN_CONNECTIONS": "2"}
    with BlobWatcher(ws_home) as watcher:
        proc = subprocess.Popen([sys.executable, "-m", "warmstart.cli", "pull", f"hf://{repo_id}", "-q"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while _progress(ws_home) < SIZE // 2:
                assert proc.poll() is None, f"the pull ended before it could be killed: {proc.stderr.read()}"
                assert time.monotonic() < deadline, "no progress recorded in tmp/*.part.json"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert digest not in {p.name for p in (ws_home / "blobs" / "sha256").glob("*/*")}
        done = _progress(ws_home)
        assert SIZE // 2 <= done < SIZE
        served_first = _quiet(hub)  # the killed pull's responses are still being sent into dead sockets

        hub.link = None
        hub.counters.reset()
        snap = warmstart.pull(f"hf://{repo_id}")
    served = _quiet(hub)
    assert served == SIZE - done, (done, served)  # exactly the missing bytes
    # the whole file crossed the link about once: beyond what was on disk, only what was in flight at
    # the kill (in the killed client's socket buffers, up to one buffer per connection) was lost
    assert served_first + served <= SIZE + IN_FLIGHT
    assert SIZE - done <= snap.downloaded <= SIZE - done + len(CONFIG) and snap.from_cache >= done
    assert (snap.path / "model.safetensors").read_bytes() == data
    assert watcher.bad == [] and digest in watcher.seen
    assert_blobs_sound(ws_home)
    assert not list((ws_home / "tmp").glob("*.part*"))  # the partial files are gone once published


class _InterruptAfter:
    """A progress sink that presses Ctrl-C (raises KeyboardInterrupt) once ``limit`` bytes arrived."""

    def __init__(self, limit: int) -> None:
        self.limit, self.seen, self.fired = limit, 0, False

    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.limit and not self.fired:
            self.fired = True
            raise KeyboardInterrupt

    def file_done(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_resume_after_keyboard_interrupt(ws_home, hub, big_repo, monkeypatch):
    repo_id, data = big_repo
    digest = sha256(data)
    sink = _InterruptAfter(SIZE // 2)
    monkeypatch.setattr(api, "terminal_progress", lambda quiet: contextlib.nullcontext(sink))
    hub.link = Link(per_conn_bps=40e6, total_bps=80e6)  # slow enough that the interrupt lands mid-file
    with BlobWatcher(ws_home) as watcher:
        with pytest.raises(KeyboardInterrupt):
            warmstart.pull(f"hf://{repo_id}")
        assert sink.fired
        assert digest not in watcher.seen
        done = _progress(ws_home)
        assert SIZE * 3 // 8 <= done < SIZE, done
        monkeypatch.setattr(api, "terminal_progress", lambda quiet: contextlib.nullcontext())
        _quiet(hub)  # the interrupted pull's answers end (their connections were shut down)
        hub.link = None
        hub.counters.reset()
        snap = warmstart.pull(f"hf://{repo_id}")
    served = _quiet(hub)
    assert served == SIZE - done, (done, served)  # exactly the missing bytes
    assert (snap.path / "model.safetensors").read_bytes() == data
    assert watcher.bad == []
    assert_blobs_sound(ws_home)


def test_a_damaged_partial_is_not_trusted(ws_home, hub, big_repo, monkeypatch):
    """A partial whose state claims bytes the file does not hold must not be published as is: the
    digest check catches it and the file is downloaded again."""
    repo_id, data = big_repo
    sink = _InterruptAfter(SIZE // 2)
    monkeypatch.setattr(api, "terminal_progress", lambda quiet: contextlib.nullcontext(sink))
    hub.link = Link(per_conn_bps=40e6, total_bps=80e6)
    with pytest.raises(KeyboardInterrupt):
        warmstart.pull(f"hf://{repo_id}")
    part = next((ws_home / "tmp").glob("*.part"))
    state = json.loads(part.with_name(part.name + ".json").read_text())
    assert state["done"][0][0] == 0 and state["done"][0][1] > 1064
    with open(part, "r+b") as f:  # flip bytes inside the range the state says is done
        f.seek(1000)
        assert f.read(64) != b"\x00" * 64
        f.seek(1000)
        f.write(b"\x00" * 64)
    monkeypatch.setattr(api, "terminal_progress", lambda quiet: contextlib.nullcontext())
    hub.link = None
    with BlobWatcher(ws_home) as watcher:
        snap = warmstart.pull(f"hf://{repo_id}")
    assert (snap.path / "model.safetensors").read_bytes() == data
    assert watcher.bad == []
    assert_blobs_sound(ws_home)

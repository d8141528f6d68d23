"""The ``warmstart pull`` and ``warmstart path`` commands, run as real subprocesses."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.pull.conftest import (
    TINY,
    assert_blobs_sound,
    assert_snapshot_matches,
    origin_files,
    run_cli,
    sha256,
)
from warmstart.sources.registry import grammar


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def test_pull_prints_the_snapshot_dir_last(ws_home, hub, cli_env):
    r = run_cli(["pull", f"hf://{TINY}"], cli_env)
    assert r.returncode == 0, r.stderr
    commit = hub.repo(TINY).branches["main"]
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path == ws_home / "hub" / "models--test-org--tiny-llama" / "snapshots" / commit
    assert_snapshot_matches(path, origin_files(hub, TINY))
    assert r.stderr == ""  # not a terminal: no progress bar, and nothing else to say
    assert_blobs_sound(ws_home)


def test_pull_json(ws_home, hub, cli_env):
    expected = origin_files(hub, TINY)
    total = sum(map(len, expected.values()))
    r = run_cli(["pull", TINY, "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    commit = hub.repo(TINY).branches["main"]
    assert {"ref", "revision", "path", "files", "bytes_downloaded", "bytes_from_cache", "seconds"} <= set(out)
    assert out["ref"] == f"hf://{TINY}@{commit}" and out["revision"] == commit
    assert Path(out["path"]).is_dir() and Path(out["path"]).name == commit
    assert {f["path"]: (f["sha256"], f["size"]) for f in out["files"]} == {
        p: (sha256(d), len(d)) for p, d in expected.items()}
    assert out["bytes_downloaded"] == total and out["bytes_from_cache"] == 0
    assert isinstance(out["seconds"], (int, float)) and out["seconds"] >= 0
    again = json.loads(run_cli(["pull", TINY, "--json"], cli_env).stdout)
    assert again["bytes_downloaded"] == 0 and again["bytes_from_cache"] == total
    assert again["path"] == out["path"]


def test_pull_options(ws_home, hub, cli_env, make_repo, tmp_path):
    repo_id = make_repo({"model.safetensors": os.urandom(1 << 20), "config.json": b'{"v": 1}',
                         "notes.md": b"# notes"})
    first = hub.repo(repo_id).branches["main"]
    hub.push(repo_id, {"config.json": b'{"v": 2}'})
    dest = tmp_path / "plain"
    r = run_cli(["pull", f"hf://{repo_id}", "--revision", first, "--include", "*.json", "--include", "*.md",
                 "--exclude", "notes*", "--to", str(dest), "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["revision"] == first and [f["path"] for f in out["files"]] == ["config.json"]
    assert Path(out["path"]) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["config.json"]
    assert (dest / "config.json").is_symlink() and (dest / "config.json").read_bytes() == b'{"v": 1}'
    assert hub.counters.bytes_for("*model.safetensors") == 0
    r = run_cli(["pull", repo_id, "--to", str(tmp_path / "copy"), "--copy"], cli_env)
    assert r.returncode == 0 and Path(r.stdout.strip().splitlines()[-1]) == tmp_path / "copy"
    assert not (tmp_path / "copy" / "model.safetensors").is_symlink()
    assert (tmp_path / "copy" / "config.json").read_bytes() == b'{"v": 2}'


@pytest.mark.parametrize("ref", ["not a ref", "hf://only-an-org", "hf://org/name@", "hf://org/na me"])
def test_malformed_ref_is_usage_error(ws_home, cli_env, ref):
    r = run_cli(["pull", ref], cli_env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = _one_error_line(r.stderr)
    assert grammar() in line
    assert r.stdout == ""
    assert not list(ws_home.rglob("*.part")) and not list(ws_home.glob("blobs/sha256/*/*"))


def test_not_found_and_gated_are_one_line(ws_home, hub, cli_env):
    r = run_cli(["pull", "hf://test-org/does-not-exist"], cli_env)
    assert r.returncode == 1
    assert "not found" in _one_error_line(r.stderr)
    r = run_cli(["pull", "hf://test-org/gated"], cli_env)
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "HF_TOKEN" in line and "gated" in line
    r = run_cli(["pull", TINY, "--include", "nothing-*"], cli_env)
    assert r.returncode == 1
    assert "nothing-*" in _one_error_line(r.stderr)
    r = run_cli(["pull", TINY, "--revision", "no-such-branch"], cli_env)
    assert r.returncode == 1
    assert "no-such-branch" in _one_error_line(r.stderr)
    assert hub.counters.bytes_total == 0


def test_path_hub(ws_home, cli_env):
    r = run_cli(["path", "hub"], cli_env)
    assert r.returncode == 0 and r.stdout.strip() == str(ws_home / "hub")
    r = run_cli(["path"], cli_env)
    assert r.returncode == 0 and r.stdout.strip() == str(ws_home)


# ------------------------------------------------------------------------------------------ progress


def _run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns (code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def reader() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    env = {**env, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.run([sys.executable, "-m", "warmstart.cli", *args], env=env, stdout=subprocess.PIPE,
                          stderr=slave, stdin=subprocess.DEVNULL, timeout=60)
    os.close(slave)
    t.join(5)
    os.close(master)
    return proc.returncode, proc.stdout.decode(), b"".join(chunks).decode(errors="replace")


def _fresh_env(cli_env: dict[str, str], tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    home = tmp_path / name
    return {**cli_env, "WARMSTART_HOME": str(home), **extra}


def test_progress_only_on_a_terminal_and_never_when_quiet(ws_home, hub, cli_env, tmp_path):
    code, out, term = _run_on_terminal(["pull", TINY], _fresh_env(cli_env, tmp_path, "tty"))
    assert code == 0 and out.strip().endswith(hub.repo(TINY).branches["main"])
    assert "files" in term and "MB" in term, term  # the bar: bytes and files done
    for name, args, extra in [("quiet", ["--quiet"], {}), ("q", ["-q"], {}),
                              ("envquiet", [], {"WARMSTART_QUIET": "1"})]:
        code, out, term = _run_on_terminal(["pull", TINY, *args], _fresh_env(cli_env, tmp_path, name, **extra))
        assert code == 0 and term == "", (name, term)
    # not a terminal: no bar even without --quiet
    r = run_cli(["pull", TINY], _fresh_env(cli_env, tmp_path, "pipe"))
    assert r.returncode == 0 and r.stderr == ""


def test_json_prints_no_progress_even_on_a_terminal(ws_home, hub, cli_env, tmp_path):
    code, out, term = _run_on_terminal(["pull", TINY, "--json"], _fresh_env(cli_env, tmp_path, "json"))
    assert code == 0 and json.loads(out)["revision"] == hub.repo(TINY).branches["main"]
    assert term == ""

"""verify (corrupt blob, quarantine, repair) and adopting a cache written by huggingface_hub itself."""

from __future__ import annotations

import os

from click.testing import CliRunner

import warmstart
from warmstart.api import pull
from warmstart.cli import main

MB = 1 << 20


def _corrupt(path) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 16)


def test_verify_quarantines_and_repairs(make_model, settings, hub):
    ref = make_model(MB)
    snap = pull(ref, settings=settings())
    weights = next(f for f in snap.files if f.path == "model.safetensors")
    _corrupt(weights.blob)
    runner = CliRunner()
    r = runner.invoke(main, ["verify", "--json"])
    assert r.exit_code == 1, r.output
    assert weights.digest in r.output
    m = warmstart.cache(settings=settings())
    assert not m.store.has(weights.digest)  # quarantined, never served
    assert any(m.layout.quarantine.iterdir())
    hub.counters.reset()
    r = runner.invoke(main, ["verify", ref, "--repair"])
    assert r.exit_code == 0, r.output
    assert "repaired" in r.output
    assert m.verify().ok
    assert hub.counters.bytes_for("*/model.safetensors") == MB  # fetched again, once


def test_verify_reports_rate(make_model, settings):
    for _ in range(3):
        pull(make_model(MB), settings=settings())
    rep = warmstart.cache(settings=settings()).verify()
    assert rep.ok and rep.checked == 6 and rep.bytes >= 3 * MB


def test_adopt_a_cache_written_by_huggingface_hub(hub, tmp_path, settings, monkeypatch):
    from huggingface_hub import snapshot_download

    repo = "test-org/tiny-llama"
    hf_cache = tmp_path / "hf-cache"
    local = snapshot_download(repo, cache_dir=str(hf_cache), endpoint=hub.endpoint)
    r = CliRunner().invoke(main, ["adopt", str(hf_cache), "--json"])
    assert r.exit_code == 0, r.output
    m = warmstart.cache(settings=settings())
    [entry] = [e for e in m.ls() if e.model == f"hf://{repo}"]
    assert entry.refs == ("main",)
    for f in m.index.snapshot_files(m.find(f"hf://{repo}")[0].id):  # hardlinks: no bytes copied
        src = os.path.realpath(os.path.join(local, f.path))
        assert os.stat(src).st_ino == os.stat(m.store.path(f.digest)).st_ino
    assert m.verify().ok
    # adopted models are served offline, from the cache alone
    monkeypatch.setenv("WARMSTART_OFFLINE", "1")
    hub.counters.reset()
    snap = pull(f"hf://{repo}", settings=settings(offline=True))
    assert hub.counters.bytes_total == 0
    assert {f.path for f in snap.files} == {p.name for p in (hf_cache.glob("models--*/snapshots/*/*"))}


def test_adopt_missing_dir_is_one_line(tmp_path, settings, hub):
    """(``adopt --dry-run`` itself: tests/pull/test_cli_options.py.)"""
    r = CliRunner().invoke(main, ["adopt", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no Hugging Face cache there" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1

"""Bad recipes fail early with one clear line; a crash mid-conversion leaves no derived snapshot;
conversion memory stays bounded by the largest tensor, not the model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import warmstart
from warmstart.cache.index import Index
from warmstart.errors import RecipeError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("recipe", "message"), [
    ([{"drop": {"match": r"^no_such_tensor$"}}], "matches no tensor"),
    ([{"fuse": {"inputs": [r"(.*)\.q_proj\.weight", r"(.*)\.nope\.weight"], "output": r"\1.x"}}], "lacks an input"),
    ({"world_size": 3, "steps": [{"split": {"match": r"q_proj", "dim": 0}}]}, "does not divide into 3"),
    ([{"split": {"match": r"q_proj"}}], "names no world_size"),
    ([{"call": {"match": r"q_proj", "fn": "tests.convert._fns:double"}}], "needs an explicit version"),
    ([{"call": {"match": r"q_proj", "fn": "tests.convert._fns:missing", "version": "1"}}], "cannot import"),
    ([{"explode": {}}], "unknown operation"),
    ([{"cast": {"dtype": "float99"}}], "unknown dtype"),
    ([{"reshape": {"match": "norm", "shape": [7, -1]}}], "cannot reshape"),
    ([{"transpose": {"match": "q_proj", "dims": [0, 0]}}], "not a permutation"),
    ({"steps": [], "version": 9}, "not supported"),
])
def test_bad_recipes_say_what_to_fix(home: Path, model_dir: Path, recipe, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as e:
        warmstart.convert(model_dir, recipe)
    assert "\n" not in str(e.value)
    assert not (home / "index.db").exists() or not [r for r in Index(home / "index.db").snapshots()
                                                    if r.kind == "derived"]


def test_optional_step_may_match_nothing(home: Path, model_dir: Path) -> None:
    c = warmstart.convert(model_dir, [{"drop": {"match": "^nothing$", "optional": True}}])
    assert c.converted


def test_exception_mid_conversion_leaves_nothing_visible(home: Path, model_dir: Path, monkeypatch) -> None:
    from warmstart.conversion import writer

    calls = {"n": 0}
    real = writer.ShardWriter.write

    def flaky(self, name, tensor):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk on fire")
        return real(self, name, tensor)

    monkeypatch.setattr(writer.ShardWriter, "write", flaky)
    recipe = {"shard_size": "500KB", "steps": [{"cast": {"dtype": "float32"}}]}
    with pytest.raises(OSError, match="disk on fire"):
        warmstart.convert(model_dir, recipe)
    assert not [r for r in Index(home / "index.db").snapshots() if r.kind == "derived"]
    assert not list((home / "tmp").iterdir())
    monkeypatch.setattr(writer.ShardWriter, "write", real)
    assert warmstart.convert(model_dir, recipe).converted


def test_killed_process_leaves_no_half_written_snapshot(home: Path, model_dir: Path) -> None:
    recipe = [{"call": {"match": "layers.1.mlp", "fn": "tests.convert._fns:crash_on_real", "version": "1"}}]
    code = f"import warmstart; warmstart.convert({str(model_dir)!r}, {recipe!r})"
    env = {**os.environ, "WARMSTART_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert proc.returncode == 17  # died inside the conversion
    assert not [r for r in Index(home / "index.db").snapshots() if r.kind == "derived"]
    ok = [{"drop": {"match": "layers.1.mlp"}}]
    assert warmstart.convert(model_dir, ok).converted


MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch, warmstart
    from warmstart.load import read_header
    warmstart.convert(sys.argv[2], {"steps": [{"cast": {"dtype": "float32"}}]})   # warm up on a tiny model
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    c = warmstart.convert(sys.argv[1], {"steps": [{"cast": {"dtype": "float32"}}]}, shard_size="1GB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    largest = max(i.nbytes for p in c.weight_paths() for i in read_header(p).tensors.values())
    print(json.dumps({"growth": peak - base, "largest": largest, "size": c.size}))
""")


@pytest.mark.slow
def test_memory_is_bounded_by_the_largest_tensor(home: Path, tmp_path: Path) -> None:
    """A ~400 MB (f32 output) conversion: RSS grows by at most ~2x the largest output tensor + 32 MB,
    far less than the model (the same bound makes a model larger than RAM convertible)."""
    import json

    from tests.data.synth import make_llama

    src = tmp_path / "m"
    make_llama(src, 200 << 20, shards=2, seed=5)
    make_llama(tmp_path / "tiny", 1 << 20, seed=6)
    env = {**os.environ, "WARMSTART_HOME": str(home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(src), str(tmp_path / "tiny")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip().splitlines()[-1])
    print(m)
    assert m["size"] > 350 << 20
    assert m["growth"] < 2 * m["largest"] + (32 << 20), m
    assert m["growth"] < m["size"] / 3, m

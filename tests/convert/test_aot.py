"""AOTInductor packages in the compile cache: equal outputs, hits without compiling, faults never fatal.

One tiny model is exported and compiled once per session (tens of seconds on CPU); the fault tests reuse
its package through a stand-in for the compile step, so they compile nothing.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import warmstart
from tests.convert.conftest import TEST_COMPILE_CACHE_KEY
from tests.convert.test_compile_cache import _free_port, redis_url  # noqa: F401 - a fixture
from warmstart.compiled import aot
from warmstart.compiled.compile_cache import MAGIC, TAG_PREFIX

ROOT = Path(__file__).resolve().parents[2]
KEY = "tiny-mlp"
# the last layer's bias has 4 elements: Inductor would inline it into the code unless told not to
MODEL = "torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()"


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return eval(MODEL)


X = torch.randn(2, 16, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> dict:
    """The tiny model compiled once into a directory cache: the package bytes and the first result."""
    store = tmp_path_factory.mktemp("aot-store")
    model = make_model()
    before = aot.counters["compiles"]
    with pytest.MonkeyPatch.context() as mp:  # entries of a store directory are authenticated
        mp.setenv("WARMSTART_COMPILE_CACHE_KEY", TEST_COMPILE_CACHE_KEY)
        first = warmstart.aot_compile(model, (X,), key=KEY, url=str(store))
        assert aot.counters["compiles"] == before + 1
        (entry,) = list(store.iterdir())
        payload = aot.AotCache(KEY, aot.structure(model, (X,)), url=str(store)).fetch_payload()
    assert payload is not None
    return {"store": store, "model": model, "first": first, "entry": entry, "payload": payload}


@pytest.fixture
def fake_compile(compiled: dict, monkeypatch: pytest.MonkeyPatch) -> list:
    """Replaces export + AOTInductor by the session's package; the list records each call."""
    calls: list = []

    def fake(*args, **kwargs) -> bytes:
        calls.append(args)
        return compiled["payload"]

    monkeypatch.setattr(aot, "_compile_package", fake)
    return calls


@pytest.mark.slow
def test_package_output_equals_eager(compiled: dict) -> None:
    first, model = compiled["first"], compiled["model"]
    assert not first.hit and first.saved
    with torch.no_grad():
        for x in (X, torch.randn(2, 16)):
            assert torch.allclose(first(x), model(x), atol=1e-6)
    assert len(first.constants) == 4  # both biases too: no weight is baked into the package
    assert first.package_bytes == len(compiled["payload"])


@pytest.mark.slow
def test_second_call_is_a_hit_without_export(compiled: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*a, **k):
        raise AssertionError("exported on a hit")

    monkeypatch.setattr(torch.export, "export", no_export)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_export)
    before = dict(aot.counters)
    again = warmstart.aot_compile(compiled["model"], (X,), key=KEY, url=str(compiled["store"]))
    assert again.hit and not again.saved
    assert aot.counters["compiles"] == before.get("compiles", 0)
    assert aot.counters["hits"] == before.get("hits", 0) + 1
    assert torch.allclose(again(X), compiled["model"](X).detach(), atol=1e-6)


@pytest.mark.slow
def test_weights_come_from_the_model_not_the_package(compiled: dict) -> None:
    other = make_model(seed=1)  # same structure, other values: same entry
    fast = warmstart.aot_compile(other, (X,), key=KEY, url=str(compiled["store"]))
    assert fast.hit
    with torch.no_grad():
        assert torch.allclose(fast(X), other(X), atol=1e-6)
        assert not torch.allclose(fast(X), compiled["model"](X), atol=1e-3)
        other[2].bias.add_(1.0)  # read in place: an in-place update is seen
        assert torch.allclose(fast(X), other(X), atol=1e-6)


FRESH = textwrap.dedent(f"""
    import json, sys, torch, warmstart
    from warmstart.compiled import aot
    calls = []
    def spy(name, fn):
        return lambda *a, **k: calls.append(name) or fn(*a, **k)
    torch.export.export = spy("export", torch.export.export)
    torch.manual_seed(0)
    m = {MODEL}
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(7))
    f = warmstart.aot_compile(m, (x,), key={KEY!r}, url=sys.argv[1])
    with torch.no_grad():
        print(json.dumps({{"hit": f.hit, "calls": calls, "counters": dict(aot.counters),
                          "out": f(x).tolist(), "eager": m(x).tolist(),
                          "imported": sorted(n for n in ("torch._inductor", "torch._dynamo") if n in sys.modules)}}))
""")


@pytest.mark.slow
def test_fresh_process_hits_and_compiles_nothing(compiled: dict, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WARMSTART_HOME": str(tmp_path / "home"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # an empty Inductor cache: no help there
    out = subprocess.run([sys.executable, "-c", FRESH, str(compiled["store"])], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["hit"] and res["calls"] == []
    assert res["imported"] == []  # neither Inductor nor dynamo was even imported: nothing can have compiled
    assert res["counters"] == {"hits": 1}
    assert torch.allclose(torch.tensor(res["out"]), torch.tensor(res["eager"]), atol=1e-6)
    assert torch.allclose(torch.tensor(res["out"]), compiled["first"](X), atol=1e-6)


def _copy_store(compiled: dict, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    (store / compiled["entry"].name).write_bytes(compiled["entry"].read_bytes())
    return store


@pytest.mark.parametrize("damage", ["truncated", "garbage-package"])
def test_corrupt_entry_is_logged_and_recompiled(compiled: dict, fake_compile: list, tmp_path: Path, caplog,
                                                damage: str) -> None:
    store = _copy_store(compiled, tmp_path)
    entry = store / compiled["entry"].name
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:-1000])
        expect = "corrupt"
    else:  # a well-formed entry holding something that is no package
        aot.AotCache(KEY, aot.structure(make_model(), (X,)), url=str(store)).store_payload(b"not a zip" * 50)
        expect = "could not be loaded"
    model = make_model()
    with caplog.at_level(logging.WARNING, "warmstart"):
        fast = warmstart.aot_compile(model, (X,), key=KEY, url=str(store))
    assert expect in caplog.text and "compiling afresh" in caplog.text
    assert len(fake_compile) == 1 and not fast.hit and fast.saved
    assert torch.allclose(fast(X), model(X).detach(), atol=1e-6)
    assert warmstart.aot_compile(model, (X,), key=KEY, url=str(store)).hit  # repaired
    assert len(fake_compile) == 1


def test_entry_from_another_torch_version_is_recompiled(compiled: dict, fake_compile: list, tmp_path: Path,
                                                        caplog) -> None:
    store = tmp_path / "store"
    model = make_model()
    stale = aot.AotCache(KEY, aot.structure(model, (X,)), url=str(store))
    stale.env = {**stale.env, "torch": "1.13.0"}
    assert stale.store_payload(compiled["payload"])
    with caplog.at_level(logging.WARNING, "warmstart"):
        fast = warmstart.aot_compile(model, (X,), key=KEY, url=str(store))
    assert "another environment" in caplog.text and "1.13.0" in caplog.text
    assert len(fake_compile) == 1 and not fast.hit and fast.saved


def test_redis_unreachable_falls_back_to_the_local_cache(home: Path, fake_compile: list, caplog) -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{_free_port()}/0"
    model = make_model()
    with caplog.at_level(logging.WARNING, "warmstart"):
        first = warmstart.aot_compile(model, (X,), key=KEY, url=url)
    assert "unreachable" in caplog.text and "local cache" in caplog.text
    assert not first.hit and first.saved and len(list((home / "compile").iterdir())) == 1
    second = warmstart.aot_compile(model, (X,), key=KEY, url=url)
    assert second.hit and len(fake_compile) == 1
    assert torch.allclose(second(X), model(X).detach(), atol=1e-6)


def test_redis_round_trip(home: Path, fake_compile: list, redis_url: str,  # noqa: F811
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMSTART_COMPILE_CACHE", redis_url)
    model = make_model()
    assert warmstart.aot_compile(model, (X,), key=KEY).saved
    assert warmstart.aot_compile(model, (X,), key=KEY).hit
    assert len(fake_compile) == 1 and not (home / "compile").exists()


def test_key_covers_structure_not_values(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def digest(model, args, **kw) -> str:
        return aot.AotCache(KEY, aot.structure(model, args, **kw)).digest

    base = digest(make_model(), (X,))
    assert digest(make_model(seed=5), (X,)) == base  # other weights, same package
    assert digest(make_model(), (torch.randn(3, 16),)) != base
    assert digest(make_model(), (X.double(),)) != base
    assert digest(make_model().train(), (X,)) != base
    assert digest(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)), (X,)) != base
    assert digest(make_model(), (X,), inductor_configs={"max_autotune": True}) != base
    assert digest(make_model(), (X,), dynamic_shapes=({0: torch.export.Dim("b", max=64)},)) != base
    assert aot.AotCache("other", aot.structure(make_model(), (X,))).digest != base
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert digest(make_model(), (X,)) != base


def test_bad_example_args(home: Path) -> None:
    with pytest.raises(TypeError, match="tuple"):
        warmstart.aot_compile(make_model(), X, key=KEY)  # type: ignore[arg-type]


def test_entry_format_is_the_compile_cache_format(compiled: dict) -> None:
    raw = compiled["entry"].read_bytes()
    assert raw.startswith(MAGIC)
    tag, head_line, _ = raw[len(MAGIC):].split(b"\n", 2)
    assert tag.startswith(TAG_PREFIX) and len(tag) == len(TAG_PREFIX) + 64
    head = json.loads(head_line)
    assert head["key"] == KEY and head["env"]["torch"] == torch.__version__

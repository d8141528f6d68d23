from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_ref
from safetensors.torch import load_file as pt_ref
from safetensors.torch import save_file

from tests.load.helpers import entry, minilm_path, write
from warmstart.load import SafeOpen, load_file, read_header


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)


def all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=g)
    out = {str(dt).split(".")[1]: base.to(dt) for dt in (
        torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.complex64)}
    out["bool"] = base > 0
    out["uint16"] = torch.arange(7, dtype=torch.int32).to(torch.uint16)
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.empty(0, 3)
    out["empty_bf16"] = torch.empty(3, 0, dtype=torch.bfloat16)
    return out


@pytest.fixture
def dtypes_file(tmp_path: Path) -> Path:
    p = tmp_path / "dtypes.safetensors"
    save_file(all_dtypes(), str(p), metadata={"format": "pt"})
    return p


def test_torch_bit_for_bit(dtypes_file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable buffer" warning
        got = load_file(dtypes_file)
    ref = pt_ref(str(dtypes_file))
    assert got.keys() == ref.keys()
    for k, r in ref.items():
        assert got[k].dtype == r.dtype and got[k].shape == r.shape, k
        assert torch.equal(as_bytes(got[k]), as_bytes(r)), k


def test_numpy_bit_for_bit(tmp_path: Path) -> None:
    p = tmp_path / "np.safetensors"
    save_file({k: v for k, v in all_dtypes().items() if "float8" not in k and "bf" not in k
               and k != "uint16"}, str(p))
    ref, got = np_ref(str(p)), load_file(p, framework="numpy")
    for k, r in ref.items():
        assert got[k].dtype == r.dtype and got[k].shape == r.shape and got[k].tobytes() == r.tobytes(), k
    bf = load_file(p, framework="numpy")  # ml_dtypes types for bf16/fp8
    assert bf["float32"].flags["C_CONTIGUOUS"]


def test_numpy_ml_dtypes(dtypes_file: Path) -> None:
    import ml_dtypes

    got = load_file(dtypes_file, framework="numpy")
    ref = pt_ref(str(dtypes_file))
    assert got["bfloat16"].dtype == ml_dtypes.bfloat16
    assert got["float8_e4m3fn"].dtype == ml_dtypes.float8_e4m3fn
    for k in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        assert got[k].tobytes() == as_bytes(ref[k]).numpy().tobytes()


def test_minilm_matches_safetensors() -> None:
    path = minilm_path()
    got, ref = load_file(path, populate=True), pt_ref(str(path))
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    gn, rn = load_file(path, framework="numpy"), np_ref(str(path))
    assert all(gn[k].tobytes() == rn[k].tobytes() for k in rn)


def test_zero_copy_views_share_the_mapping(dtypes_file: Path) -> None:
    got = load_file(dtypes_file)
    h = read_header(dtypes_file)
    a, b = got["float32"], got["int64"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one mapping
    assert a.data_ptr() - a.untyped_storage().data_ptr() == h.tensors["float32"].start


def test_writes_are_private_copy_on_write(dtypes_file: Path) -> None:
    before = dtypes_file.read_bytes()
    t = load_file(dtypes_file)["float32"]
    t.fill_(123.0)  # no crash: copy-on-write page
    assert torch.all(t == 123.0)
    assert dtypes_file.read_bytes() == before
    assert torch.equal(load_file(dtypes_file)["float32"], pt_ref(str(dtypes_file))["float32"])


def test_tensor_keeps_mapping_alive(dtypes_file: Path) -> None:
    code = (f"import gc, torch; from warmstart.load import load_file; t = load_file({str(dtypes_file)!r})['int64'];"
            "gc.collect(); [torch.zeros(1 << 20) for _ in range(10)]; print(int(t.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == int(pt_ref(str(dtypes_file))["int64"].sum())


def test_misaligned_tensors_are_copied_and_correct(tmp_path: Path) -> None:
    data = bytes([7]) + np.arange(3, dtype=np.float32).tobytes() + np.arange(2, dtype=np.int64).tobytes()
    header = {"u": entry("U8", [1], 0, 1), "f": entry("F32", [3], 1, 13), "i": entry("I64", [2], 13, 29)}
    p = write(tmp_path / "mis.safetensors", header, data)
    assert read_header(p).tensors["f"].start % 4  # really misaligned
    got = load_file(p)
    assert got["f"].tolist() == [0.0, 1.0, 2.0] and got["i"].tolist() == [0, 1]
    assert got["f"].data_ptr() % 4 == 0
    for k, r in pt_ref(str(p)).items():
        assert torch.equal(got[k], r)
    assert load_file(p, framework="numpy")["f"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("method", [True, "madvise", "touch", "willneed", "willneed+madvise"])
def test_populate_methods(dtypes_file: Path, method: bool | str) -> None:
    got = load_file(dtypes_file, populate=method)
    assert torch.equal(got["float32"], pt_ref(str(dtypes_file))["float32"])


def test_populate_rejects_unknown(dtypes_file: Path) -> None:
    with pytest.raises(ValueError, match="populate"):
        load_file(dtypes_file, populate="nope")


def test_dtype_cast(dtypes_file: Path) -> None:
    got = load_file(dtypes_file, dtype="float32")
    assert got["bfloat16"].dtype == torch.float32
    assert torch.equal(got["bfloat16"], pt_ref(str(dtypes_file))["bfloat16"].float())
    assert load_file(dtypes_file, dtype=torch.float16)["float32"].dtype == torch.float16
    assert got["int64"].dtype == torch.int64 and got["bool"].dtype == torch.bool  # only floats are cast
    assert load_file(dtypes_file, framework="numpy", dtype=np.float64)["float16"].dtype == np.float64


def test_safe_open(dtypes_file: Path) -> None:
    ref = pt_ref(str(dtypes_file))
    with SafeOpen(dtypes_file) as f:
        assert f.keys() == sorted(ref) and f.metadata() == {"format": "pt"}
        assert set(f.offset_keys()) == set(ref)
        sl = f.get_slice("float32")
        assert sl.get_shape() == [4, 5] and sl.get_dtype() == "F32"
        part = sl[1:3, ::2]
        assert torch.equal(part, ref["float32"][1:3, ::2])
        assert part.untyped_storage().data_ptr() == f.get_tensor("int8").untyped_storage().data_ptr()
        assert torch.equal(f.get_tensor("bfloat16"), ref["bfloat16"])
        with pytest.raises(KeyError):
            f.get_tensor("missing")
    with pytest.raises(ValueError, match="closed"):
        f.keys()
    assert torch.equal(part, ref["float32"][1:3, ::2])  # still valid (and right) after close
    with SafeOpen(dtypes_file, framework="numpy") as f:
        assert f.get_slice("int32")[..., 1:].tolist() == ref["int32"][..., 1:].tolist()


def test_f4_and_unsupported_dtypes(tmp_path: Path) -> None:
    p = write(tmp_path / "f4.safetensors", {"a": entry("F4", [2, 4], 0, 4), "b": entry("F6_E2M3", [4], 4, 7)},
              bytes(range(7)))
    with SafeOpen(p) as f:
        t = f.get_tensor("a")
        assert t.dtype == torch.float4_e2m1fn_x2 and t.shape == (2, 2)
        with pytest.raises(ValueError, match="F6_E2M3"):
            f.get_tensor("b")
    with SafeOpen(p, framework="numpy") as f, pytest.raises(ValueError, match="no numpy equivalent"):
        f.get_tensor("a")

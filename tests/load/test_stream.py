from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as pt_ref
from safetensors.torch import save_file

from tests.load.helpers import entry, minilm_path, write
from warmstart.errors import InvalidCheckpointError
from warmstart.load import load_paths
from warmstart.load.stream import StreamEngine

BUF = 64 << 10


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(3)
    state = {f"layer{i}.w": torch.randn(300 + 17 * i, 64, generator=g).to(torch.bfloat16) for i in range(12)}
    state.update({"f32": torch.randn(1000, 33, generator=g), "i8": torch.arange(7, dtype=torch.int8),
                  "b": torch.tensor([True, False, True]), "scalar": torch.tensor(1.5), "empty": torch.empty(0, 4),
                  "fp8": torch.randn(99, generator=g).to(torch.float8_e4m3fn)})
    p = tmp_path / "m.safetensors"
    save_file(state, str(p))
    return p


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                       b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("readers,direct", [(1, False), (2, False), (3, True)])
def test_cpu_destination_bit_for_bit_and_bounded(model_file: Path, readers: int, direct: bool) -> None:
    eng = StreamEngine("cpu", staging_bytes=3 * BUF, buffer_bytes=BUF, readers=readers, direct=direct)
    got, ref = eng.load([model_file]), pt_ref(str(model_file))
    assert got.keys() == ref.keys() and all(same(got[k], ref[k]) for k in ref)
    assert 0 < eng.stats.peak_inflight_bytes <= 3 * BUF and eng.stats.allocated_bytes <= 3 * BUF
    assert eng.stats.chunks > 10  # many more chunks than buffers: the pool was recycled
    ptr = got["f32"].untyped_storage().data_ptr()
    assert got["layer3.w"].untyped_storage().data_ptr() == ptr  # one allocation per file


def test_minilm_via_load_paths_stream() -> None:
    got, ref = load_paths([minilm_path()], stream=True, staging_bytes=8 << 20), pt_ref(str(minilm_path()))
    assert all(same(got[k], ref[k]) for k in ref)


def test_misaligned_and_dtype(tmp_path: Path) -> None:
    import numpy as np

    data = bytes([9]) + np.arange(5, dtype=np.float32).tobytes() + np.arange(3, dtype=np.int64).tobytes()
    p = write(tmp_path / "mis.safetensors", {"u": entry("U8", [1], 0, 1), "f": entry("F32", [5], 1, 21),
                                             "i": entry("I64", [3], 21, 45)}, data)
    got = StreamEngine("cpu", staging_bytes=2 * 4096, buffer_bytes=4096).load([p])
    assert got["f"].tolist() == [0, 1, 2, 3, 4] and got["i"].tolist() == [0, 1, 2] and got["f"].data_ptr() % 4 == 0
    half = StreamEngine("cpu").load([p], dtype="float16")
    assert half["f"].dtype == torch.float16 and half["i"].dtype == torch.int64


def test_reader_error_propagates(model_file: Path) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def wait_ready(self, start: int, end: int) -> None:
            self.calls += 1
            if self.calls == 3:
                raise ConnectionError("origin went away")

    eng = StreamEngine("cpu", staging_bytes=2 * BUF, buffer_bytes=BUF, readers=2)
    before = threading.active_count()
    with pytest.raises(ConnectionError, match="origin went away"):
        eng.load_file(model_file, ready=Broken())
    assert threading.active_count() == before  # readers joined, nothing hangs


def test_ready_source_gates_reads(model_file: Path) -> None:
    seen: list[tuple[int, int]] = []

    class Recorder:
        def wait_ready(self, start: int, end: int) -> None:
            seen.append((start, end))

    StreamEngine("cpu", buffer_bytes=BUF, staging_bytes=4 * BUF).load_file(model_file, ready=Recorder())
    size = model_file.stat().st_size
    assert max(e for _, e in seen) == size and len(seen) >= size // BUF


def test_truncated_while_loading(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from warmstart.load import stream as mod

    real = mod.read_header
    monkeypatch.setattr(mod, "read_header", lambda p: (real(p), model_file.write_bytes(model_file.read_bytes()[:5000]))[0])
    with pytest.raises(InvalidCheckpointError, match="truncated"):
        StreamEngine("cpu", buffer_bytes=4096, staging_bytes=8192).load([model_file])


def test_duplicate_names_across_files(model_file: Path) -> None:
    with pytest.raises(InvalidCheckpointError, match="also in"):
        StreamEngine("cpu").load([model_file, model_file])


def test_buffer_larger_than_pool_rejected() -> None:
    with pytest.raises(ValueError, match="staging_bytes"):
        StreamEngine("cpu", staging_bytes=4096, buffer_bytes=8192)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_bit_for_bit(model_file: Path) -> None:
    eng = StreamEngine("cuda:0", staging_bytes=3 * BUF, buffer_bytes=BUF)
    got, ref = eng.load([model_file]), pt_ref(str(model_file))
    assert all(got[k].device.type == "cuda" and same(got[k].cpu(), ref[k]) for k in ref)
    assert eng.stats.peak_inflight_bytes <= 3 * BUF


@pytest.mark.gpu
@cuda
def test_cuda_load_paths_dtype(model_file: Path) -> None:
    got = load_paths([model_file], device="cuda:0", dtype=torch.float16)
    assert got["f32"].dtype == torch.float16 and got["f32"].is_cuda

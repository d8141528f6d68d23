"""N processes loading the same file share one copy of its pages (file-backed mapping)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

psutil = pytest.importorskip("psutil")

CHILD = """
import sys, torch
from warmstart.load import load_paths
state = {}
if sys.argv[1] == "load":
    state = load_paths([sys.argv[2]], populate=True)
    total = 0
    for t in state.values():  # touch every page through the tensors themselves
        b = t.reshape(-1).view(torch.uint8)
        total += int(b[::4096].sum())
print("READY", flush=True)
sys.stdin.readline()
"""


def _spawn(mode: str, path: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    return p


def _pss(p: subprocess.Popen[str]) -> int:
    return psutil.Process(p.pid).memory_full_info().pss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSS is Linux-only")
def test_four_processes_share_one_copy(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    size = 200 << 20
    arrays = {f"w{i}": rng.integers(0, 2**16, size // 8, dtype=np.uint16) for i in range(4)}
    path = tmp_path / "big.safetensors"
    save_file(arrays, str(path))
    del arrays
    procs = []
    try:
        base = _spawn("idle", path)
        procs.append(base)
        loaders = [_spawn("load", path) for _ in range(4)]
        procs += loaders
        baseline = _pss(base)  # measured last: shared-library pages are split among all 5 processes
        total = sum(_pss(p) for p in loaders) - 4 * baseline
    finally:
        for p in procs:
            p.communicate("\n", timeout=30)
    file_size = path.stat().st_size
    print(f"4-process PSS delta {total / 1e6:.0f} MB for a {file_size / 1e6:.0f} MB file")
    assert total >= 0.5 * file_size, "pages were not touched/counted"
    assert total <= 1.25 * file_size, f"4 processes added {total / 1e6:.0f} MB of PSS for a {file_size / 1e6:.0f} MB file"

"""``warmstart.load`` and ``warmstart.cache`` name both a subpackage and an API function: the API
functions win, whichever imports of the subpackages ran first, and every module stays a plain module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SCRIPT = r"""
import json, sys, types
import warmstart.load, warmstart.cache            # the subpackages first, in a fresh interpreter
from warmstart.load import load_paths             # a name from one of them
from warmstart.cache import leases                # a module of the other
import warmstart.cache.leases
import warmstart

tensors = warmstart.load(sys.argv[1])             # the API functions, called
manager = warmstart.cache()
from warmstart import load, cache                 # the names as users import them
print(json.dumps({
    "functions": [isinstance(f, types.FunctionType) for f in (warmstart.load, warmstart.cache, load, cache)],
    "plain": [type(sys.modules[m]) is types.ModuleType for m in ("warmstart", "warmstart.load", "warmstart.cache")],
    "tensors": {k: v.tolist() for k, v in tensors.items()},
    "same": sorted(load_paths([sys.argv[1]])) == sorted(tensors),
    "manager": hasattr(manager, "ls") and hasattr(manager, "gc"),
    "leases": leases.__name__,
}))
"""


def test_api_functions_survive_subpackage_imports(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(4, dtype=torch.float32)}, str(path))
    env = {**os.environ, "WARMSTART_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout
    got = json.loads(out.splitlines()[-1])
    assert got == {"functions": [True] * 4, "plain": [True] * 3, "tensors": {"a": [0.0, 1.0, 2.0, 3.0]},
                   "same": True, "manager": True, "leases": "warmstart.cache.leases"}


def test_import_warmstart_stays_light() -> None:
    """``import warmstart`` (which imports the two subpackages' ``__init__``) imports none of their modules,
    nor torch or numpy."""
    code = ("import sys, warmstart; print(sorted(m for m in sys.modules if m.startswith(('warmstart.', 'torch', "
            "'numpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['warmstart._redact', 'warmstart.cache', 'warmstart.errors', 'warmstart.load']"

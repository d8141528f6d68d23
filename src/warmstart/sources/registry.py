"""Scheme -> backend, imported lazily, with an install hint for optional extras.

Adding a backend: write ``sources/<name>.py`` with a :class:`~warmstart.sources.base.Source`
subclass and add one line to ``BACKENDS``.

>>> backend_for("hf").__name__
'HubSource'
"""

from __future__ import annotations

import importlib

from ..config import Settings
from ..errors import ConfigError, RefError
from ..refs import Ref
from .base import Source

#: scheme -> (module, class, extra that provides its dependencies or None)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "hf": ("warmstart.sources.hf", "HubSource", None),
    "s3": ("warmstart.sources.s3", "S3Source", "s3"),
    "oci": ("warmstart.sources.oci", "OciSource", None),
    "http": ("warmstart.sources.http", "HttpSource", None),
    "https": ("warmstart.sources.http", "HttpSource", None),
    "file": ("warmstart.sources.local", "LocalSource", None),
}


def backend_for(scheme: str) -> type[Source]:
    try:
        module, cls, extra = BACKENDS[scheme]
    except KeyError:
        raise RefError(f"no source backend for scheme {scheme!r}; known: {', '.join(sorted(BACKENDS))}") from None
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        hint = f"pip install 'warmstart[{extra}]'" if extra else "reinstall warmstart"
        raise ConfigError(f"the {scheme}:// backend needs {exc.name or exc}: {hint}") from None


def source_for(ref: Ref, settings: Settings) -> Source:
    return backend_for(ref.scheme)(settings)

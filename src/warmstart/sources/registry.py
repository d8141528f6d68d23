"""The sources, one line each, and the one place that turns a reference string into a :class:`Ref`.

A source declares the schemes it serves (``Source.schemes``); its registry line repeats them, so
that this module imports only the source a scheme needs (a Hub ref imports the Hub source, a local
path the local source), and checks on import that the two agree. A source whose requests need an
optional package names it in ``requires`` and the extra that installs it in ``extra``: its refs parse
without it, and using the source says what to install.

Adding a source: write ``sources/<name>.py`` with a :class:`~warmstart.sources.base.Source` subclass
and add one line to :data:`SOURCES` (see ``docs/sources.md``, "Adding a source").

>>> parse("Qwen/Qwen2.5-0.5B@main")
Ref(scheme='hf', location='Qwen/Qwen2.5-0.5B', revision='main')
>>> str(parse("hf://org/name")), parse("s3://bucket/llama", revision="latest").key
('hf://org/name', 's3://bucket/llama')
>>> backend_for("hf").__name__, backend_for("https").__name__
('HubSource', 'HttpSource')

An HTTP(S) ref is named, printed and stored without its query string, fragment and ``user:password@``
(a signed URL carries its credentials there); the URL as given is kept apart, for the requests only:

>>> r = parse("https://u:pw@cdn.example.com/m/model.safetensors?X-Amz-Signature=abc")
>>> r
Ref(scheme='https', location='https://cdn.example.com/m/model.safetensors', revision=None)
>>> r.request_url
'https://u:pw@cdn.example.com/m/model.safetensors?X-Amz-Signature=abc'
"""

from __future__ import annotations

import importlib
import importlib.util

from .._redact import redact_url
from ..config import Settings
from ..errors import ConfigError, RefError
from ..refs import Malformed, Ref, split
from .base import Source

#: the sources, as ``module:Class schemes``; their order is the order of the forms in the grammar
#: message. The schemes listed here only say which module to import for a scheme (so that a local path
#: imports the local source alone); the class's own ``schemes`` must be the same, or loading it fails.
SOURCES: tuple[str, ...] = (
    "warmstart.sources.hf:HubSource hf",
    "warmstart.sources.s3:S3Source s3",
    "warmstart.sources.oci:OciSource oci",
    "warmstart.sources.http:HttpSource http https",
    "warmstart.sources.local:LocalSource file",
)

_by_scheme: dict[str, type[Source]] = {}
_imported: dict[str, type[Source]] = {}  # line -> class


def _load(line: str) -> type[Source]:
    if line not in _imported:
        target, *declared = line.split()
        module, _, name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise ConfigError(f"the source {module} cannot be imported (needs {exc.name or exc}): "
                              "reinstall warmstart") from None
        if declared and sorted(declared) != sorted(cls.schemes):
            raise ConfigError(f"the registry line {line!r} names other schemes than {name}.schemes "
                              f"{tuple(cls.schemes)}; make them the same")
        _imported[line] = cls
        for scheme in cls.schemes:
            _by_scheme.setdefault(scheme, cls)
    return _imported[line]


def _grammar_for(scheme: str) -> type[Source] | None:
    """The source whose ``schemes`` name ``scheme``: the one registry line that declares it is imported
    (a line without schemes is imported whenever a scheme is not found on the others)."""
    if scheme not in _by_scheme:
        for line in SOURCES:
            if scheme in line.split()[1:] or len(line.split()) == 1:
                _load(line)
    return _by_scheme.get(scheme)


def schemes() -> list[str]:
    """Every scheme some source serves."""
    return [s for line in SOURCES for s in _load(line).schemes]


def grammar() -> str:
    """The accepted forms of every source, for the message of a ref that does not parse."""
    forms = [f for line in SOURCES for f in _load(line).forms]
    return "expected " + ", ".join(forms[:-1]) + " or " + forms[-1]


def parse(text: str, *, revision: str | None = None) -> Ref:
    """Parse a reference string; ``revision`` (e.g. from ``--revision``) overrides one in the text.
    A string that does not parse is a one-line :class:`~warmstart.errors.RefError` that says why and
    lists every accepted form."""
    shown = text.strip() if isinstance(text, str) and text.strip() else str(text)
    try:
        scheme, body, bare = split(text)
        cls = _grammar_for(scheme)
        if cls is None:
            raise Malformed(f"unknown scheme {scheme!r}")
        ref = cls.parse_ref(scheme, body, shown, bare)
        if revision is not None:
            cls.check_revision(revision)
            ref = ref.with_revision(revision)
    except Malformed as exc:
        raise RefError(f"invalid reference {redact_url(shown)!r}: {exc}; {grammar()}") from None
    return ref


def backend_for(scheme: str) -> type[Source]:
    """The source class for ``scheme``, its optional dependencies checked (the install hint if not)."""
    cls = _grammar_for(scheme)
    if cls is None:
        raise RefError(f"no source backend for scheme {scheme!r}; known: {', '.join(sorted(schemes()))}")
    for name in cls.requires:
        if importlib.util.find_spec(name) is None:
            hint = f"pip install 'warmstart[{cls.extra}]'" if cls.extra else f"pip install {name}"
            raise ConfigError(f"the {scheme}:// backend needs {name}: {hint}")
    return cls


def source_for(ref: Ref, settings: Settings) -> Source:
    return backend_for(ref.scheme)(settings)

"""The :class:`Ref` type, and the split of a reference string into its scheme and the rest.

This module knows no scheme's grammar: each source (``warmstart/sources/*.py``) parses, prints, pins
and keys its own refs, as fsspec's backends own their protocol. A :class:`Ref` carries the
:class:`Grammar` of the source that parsed it, so ``str(ref)``, ``ref.pinned`` and ``ref.key`` follow
that source's rules while every layer below the sources handles refs without importing them. The
registry (``warmstart.sources.registry.parse``) is the one place that turns text into a Ref.

What is decided here is only what needs no grammar: ``scheme://rest``, and the two bare forms. A
bare string names a local path when it looks like one or exists (:func:`is_path`, the one place that
says "path or ref"), and otherwise a model on the Hub (``ORG/NAME``, the Hub's own convention).

>>> split("hf://org/name@main")
Split(scheme='hf', body='org/name@main', bare=False)
>>> split("org/name")
Split(scheme='hf', body='org/name', bare=True)
>>> split("/models/llama").scheme, split("./llama").body == os.path.abspath("llama")
('file', True)
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import NamedTuple, Protocol


class Grammar(Protocol):
    """What a source knows of its own refs (a :class:`~warmstart.sources.base.Source` class is one)."""

    #: the revision a ref without one means (``main`` on the Hub)
    default_revision: str

    def format_ref(self, ref: Ref) -> str:
        """The ref as users write it (and as the cache names it, with its revision)."""

    def is_pinned(self, ref: Ref) -> bool:
        """True when the revision names immutable content: a cached copy needs no request."""

    def key(self, ref: Ref) -> str:
        """The cache's name of the model, without revision (e.g. ``hf://org/name``)."""


@dataclasses.dataclass(frozen=True)
class Ref:
    """A parsed reference. ``location`` is scheme-specific (``org/name`` for the Hub, ``bucket/prefix``
    for S3, the URL for HTTP, an absolute path for files); ``revision`` is ``None`` for the default.
    Build one with the registry's ``parse`` (or a source's ``make_ref``), never by hand."""

    scheme: str
    location: str
    revision: str | None = None
    #: http(s) only: the URL as given, with its query string and credentials. Used for the requests and
    #: nothing else: never printed, logged or stored, and not part of the ref's identity.
    request_url: str | None = dataclasses.field(default=None, repr=False, compare=False)
    #: the rules of the source that parsed it (printing, pinning, the cache key, the default revision)
    grammar: Grammar = dataclasses.field(default=None, repr=False, compare=False, kw_only=True)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.grammar is None:
            raise TypeError("a Ref is made by its source's grammar: use warmstart.sources.registry.parse")

    def __str__(self) -> str:
        return self.grammar.format_ref(self)

    @property
    def repo_id(self) -> str:
        """The location without scheme, e.g. ``org/name`` for the Hub."""
        return self.location

    @property
    def pinned(self) -> bool:
        """True when the revision names immutable content (no metadata request needed)."""
        return self.grammar.is_pinned(self)

    @property
    def key(self) -> str:
        """The cache's name of the model, without revision."""
        return self.grammar.key(self)

    @property
    def default_revision(self) -> str:
        """The revision this ref means when it names none (``main`` on the Hub, else ``latest``)."""
        return self.grammar.default_revision

    def with_revision(self, revision: str | None) -> Ref:
        return dataclasses.replace(self, revision=revision)


class Malformed(ValueError):
    """Why a reference does not parse; the registry turns it into the one-line :class:`RefError` that
    lists every accepted form."""


class Split(NamedTuple):
    scheme: str
    body: str
    #: True for the bare forms: a plain path (``file``) or ``ORG/NAME`` (``hf``)
    bare: bool


#: the scheme of a bare ``ORG/NAME``, and of a bare path
BARE_MODEL_SCHEME, BARE_PATH_SCHEME = "hf", "file"
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://(.*)\Z", re.S)


def is_path(value: str | os.PathLike) -> bool:
    """Whether ``value`` names a local path rather than a ref: a path object, or a string that starts
    like a path (``/``, ``./``, ``../``, ``~``) or names one that exists.

    >>> is_path("./model"), is_path("org/name"), is_path("hf://org/name")
    (True, False, False)
    """
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str):
        return False
    return not _SCHEME.match(value) and (value.startswith(("/", "./", "../", "~")) or os.path.exists(value))


def split(text: str) -> Split:
    """``scheme://body`` -> (scheme, body); a bare path -> (``file``, its absolute path); anything
    else -> (``hf``, text), for the Hub's grammar to accept as ``ORG/NAME`` or refuse. Raises
    :class:`Malformed` for an empty string or a NUL character."""
    if not isinstance(text, str) or not text.strip():
        raise Malformed("empty reference")
    text = text.strip()
    if "\x00" in text:
        raise Malformed("NUL character")
    m = _SCHEME.match(text)
    if m:
        return Split(m.group(1), m.group(2), False)
    if is_path(text):
        return Split(BARE_PATH_SCHEME, os.path.abspath(os.path.expanduser(text)), True)
    return Split(BARE_MODEL_SCHEME, text, True)

"""URLs as the HTTP client sees them: which it may request or follow (:func:`check_url`), how they
are keyed per host, and how they may be printed (no credentials, no control characters)."""

from __future__ import annotations

import urllib.parse

from ._redact import redact_url
from .errors import TransferError


def redact(url: str) -> str:
    """The URL as it may be printed: no query string (signed URLs carry credentials there), fragment
    or ``user:password@`` (see ``warmstart._redact``)."""
    return redact_url(url)


def host_key(url: str) -> tuple[str, str]:
    p = urllib.parse.urlsplit(url)
    return p.scheme, p.netloc


def printable(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped: safe in a one-line message."""
    text = text[:limit] + ("…" if len(text) > limit else "")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


#: the characters a redirect target keeps as they are (the rest is percent-encoded)
URL_SAFE = "".join(chr(c) for c in range(33, 127)) + "".join(chr(c) for c in range(32)) + "\x7f"


def check_url(url: str, *, what: str = "URL") -> str:
    """``url`` if it is ``http(s)://HOST[:PORT]/…`` that the client can request; else a one-line
    TransferError. Guards every redirect target: ``file://``, ``ftp://``, a malformed IPv6 host or port,
    whitespace or control characters are refused, never followed.

    >>> check_url("https://cdn.example/x?sig=1")
    'https://cdn.example/x?sig=1'
    >>> check_url("file:///etc/passwd", what="redirect")
    Traceback (most recent call last):
    ...
    warmstart.errors.TransferError: refused a redirect to file:///etc/passwd: only http:// and https:// URLs with a host are followed; the origin is misconfigured or hostile
    """
    why = None
    try:
        p = urllib.parse.urlsplit(url)
        p.port  # noqa: B018 - raises ValueError for a malformed port
        if p.scheme not in ("http", "https") or not p.hostname:
            why = "only http:// and https:// URLs with a host are followed"
        elif not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
            why = "it holds whitespace, control or non-ASCII characters"
    except ValueError as exc:
        why = f"it is malformed ({exc})"
    if why:
        raise TransferError(f"refused a {what} to {printable(redact(url))}: {why}; the origin is misconfigured "
                            "or hostile")
    return url

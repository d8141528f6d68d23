"""Parse and print references to models: the only module that knows the grammar.

::

    hf://ORG/NAME[@REVISION]        a Hugging Face Hub model (a bare ORG/NAME means the Hub too)
    s3://BUCKET/PREFIX[@VERSION]    the objects under a prefix of an S3-compatible store
    oci://REGISTRY/REPO[:TAG|@sha256:DIGEST]   a ModelPack artifact in an OCI registry
    https://HOST/PATH, http://...   one file over HTTP(S)
    file:///PATH or a plain path    a local or network directory or file

>>> parse("Qwen/Qwen2.5-0.5B@main")
Ref(scheme='hf', location='Qwen/Qwen2.5-0.5B', revision='main')
>>> str(parse("hf://org/name"))
'hf://org/name'

An HTTP(S) ref is named, printed and stored without its query string, fragment and ``user:password@``
(a signed URL carries its credentials there); the URL as given is kept apart, for the requests only:

>>> r = parse("https://u:pw@cdn.example.com/m/model.safetensors?X-Amz-Signature=abc")
>>> r
Ref(scheme='https', location='https://cdn.example.com/m/model.safetensors', revision=None)
>>> r.request_url
'https://u:pw@cdn.example.com/m/model.safetensors?X-Amz-Signature=abc'
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse

from ._redact import redact_url
from .errors import RefError

GRAMMAR = (
    "expected hf://ORG/NAME[@REVISION], ORG/NAME, s3://BUCKET/PREFIX[@VERSION], "
    "oci://REGISTRY/REPO[:TAG|@DIGEST], https://HOST/PATH, file:///PATH or a local path"
)

_HF_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"{_HF_PART}/{_HF_PART}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,254}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_OCI_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


#: the revision a ref without one means, per scheme (the Hub's default branch)
DEFAULT_REVISIONS = {"hf": "main"}


def default_revision(scheme: str) -> str:
    """``main`` for the Hub; ``latest`` for sources whose revision is computed from a listing."""
    return DEFAULT_REVISIONS.get(scheme, "latest")


@dataclasses.dataclass(frozen=True)
class Ref:
    """A parsed reference. ``location`` is scheme-specific (``org/name`` for the Hub, ``bucket/prefix``
    for S3, the URL for HTTP, an absolute path for files); ``revision`` is ``None`` for the default."""

    scheme: str
    location: str
    revision: str | None = None
    #: http(s) only: the URL as given, with its query string and credentials. Used for the requests and
    #: nothing else: never printed, logged or stored, and not part of the ref's identity.
    request_url: str | None = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        if self.scheme in ("http", "https"):
            return self.location
        if self.scheme == "file":
            return f"file://{self.location}"
        rev = ""
        if self.revision:
            sep = ":" if self.scheme == "oci" and not self.revision.startswith("sha256:") else "@"
            rev = f"{sep}{self.revision}"
        return f"{self.scheme}://{self.location}{rev}"

    @property
    def repo_id(self) -> str:
        """The location without scheme, e.g. ``org/name`` for the Hub."""
        return self.location

    @property
    def pinned(self) -> bool:
        """True when the revision names an immutable commit (no metadata request needed): a Hub commit,
        an OCI digest, an S3 listing digest or S3 object version id (anything but ``latest``, and ``null``:
        the version S3 overwrites in place)."""
        return bool(self.revision) and (
            (self.scheme == "hf" and bool(_COMMIT.fullmatch(self.revision or "")))
            or (self.scheme == "s3" and self.revision not in (default_revision("s3"), "null"))
            or (self.scheme == "oci" and (self.revision or "").startswith("sha256:"))
        )

    def with_revision(self, revision: str | None) -> Ref:
        return dataclasses.replace(self, revision=revision)


def _bad(text: str, why: str) -> RefError:
    return RefError(f"invalid reference {redact_url(text)!r}: {why}; {GRAMMAR}")


def _split_rev(body: str, text: str) -> tuple[str, str | None]:
    if "@" not in body:
        return body, None
    loc, rev = body.split("@", 1)
    _check_revision(rev, text)
    return loc, rev


def _check_revision(rev: str, text: str) -> None:
    """One grammar for ``@REV`` and ``--revision``/``revision=``: a branch, tag, commit or version id
    (``refs/pr/1`` is fine) or an OCI digest; never ``..``, an empty component, NUL or a control
    character, since a revision may name a file under the cache (``hub/models--…/refs/<name>``)."""
    if not isinstance(rev, str) or not rev:
        raise _bad(text, "empty revision")
    if _OCI_DIGEST.fullmatch(rev):
        return
    if not _REVISION.fullmatch(rev) or ".." in rev or any(p in ("", ".") for p in rev.split("/")):
        raise _bad(text, f"bad revision {rev!r}")


def parse(text: str, *, revision: str | None = None) -> Ref:
    """Parse a reference string; ``revision`` (e.g. from ``--revision``) overrides one in the text."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "empty reference")
    text = text.strip()
    if "\x00" in text:
        raise _bad(text, "NUL character")
    ref = _parse(text)
    if revision is not None:
        _check_revision(revision, text)
        ref = ref.with_revision(revision)
    return ref


def _parse(text: str) -> Ref:
    m = re.match(r"([a-z][a-z0-9+.-]*)://(.*)\Z", text, re.S)
    if m:
        scheme, body = m.group(1), m.group(2)
        if scheme == "hf":
            body = body.removeprefix("models/")
            loc, rev = _split_rev(body, text)
            if not _HF_REPO.fullmatch(loc):
                raise _bad(text, "a Hub repository is ORG/NAME")
            return Ref("hf", loc, rev)
        if scheme == "s3":
            loc, rev = _split_rev(body, text)
            bucket = loc.split("/", 1)[0]
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
                raise _bad(text, f"bad bucket name {bucket!r}")
            return Ref("s3", loc.rstrip("/"), rev)
        if scheme == "oci":
            return _parse_oci(body, text)
        if scheme in ("http", "https"):
            return _parse_url(scheme, text)
        if scheme == "file":
            if not body.startswith("/"):
                raise _bad(text, "file:// needs an absolute path (file:///PATH)")
            return Ref("file", os.path.normpath(body))
        raise _bad(text, f"unknown scheme {scheme!r}")
    # No scheme: a local path if it exists or looks like one, else ORG/NAME on the Hub.
    if text.startswith(("/", "./", "../", "~")) or os.path.exists(text):
        return Ref("file", os.path.abspath(os.path.expanduser(text)))
    loc, rev = _split_rev(text, text)
    if _HF_REPO.fullmatch(loc):
        return Ref("hf", loc, rev)
    raise _bad(text, "not a path that exists, nor ORG/NAME")


def _parse_url(scheme: str, text: str) -> Ref:
    """An HTTP(S) URL: the location (the cache's name for it) drops the query string, fragment and
    userinfo; ``request_url`` keeps the URL as given."""
    if any(c.isspace() or ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text):
        raise _bad(text, "a URL has no spaces or control characters (percent-encode them)")
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:  # its text may quote a password: not shown
        raise _bad(text, "malformed URL (bad host or port)") from None
    host = parts.netloc.rpartition("@")[2]
    if not parts.hostname or not host:
        raise _bad(text, "a URL needs a host")
    location = redact_url(text)
    if location != f"{scheme}://{host}{parts.path}":
        raise _bad(text, "percent-encode '@', '?' and '#' in the user name, password and query")
    return Ref(scheme, location, request_url=text if text != location else None)


def _parse_oci(body: str, text: str) -> Ref:
    if "@" in body:
        loc, rev = body.split("@", 1)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", rev):
            raise _bad(text, "an OCI digest is sha256:<64 hex>")
    else:
        slash = body.find("/")
        colon = body.rfind(":")
        if colon > slash > 0:
            loc, rev = body[:colon], body[colon + 1:]
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", rev):
                raise _bad(text, f"bad tag {rev!r}")
        else:
            loc, rev = body, None
    if "/" not in loc or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+(?:[._-][a-z0-9]+)*)+", loc):
        raise _bad(text, "an OCI reference is REGISTRY/REPOSITORY")
    return Ref("oci", loc, rev)

"""The Source protocol: where bytes come from, and how its refs are written.

A source is one file: a :class:`Source` subclass that declares its ``schemes``, owns the grammar of
its refs (:meth:`Source.parse_ref`, :meth:`~Source.format_ref`, :meth:`~Source.is_pinned`,
:meth:`~Source.key`, ``default_revision``) and turns a :class:`~warmstart.refs.Ref` into a
:class:`Listing` (the resolved revision and the files with size, digest and URL); the transfer
engine then moves the bytes with ranged reads. Plus one line in ``registry.py``.

>>> safe_relpath("a/b.json")
'a/b.json'
>>> safe_relpath("../etc/passwd")
Traceback (most recent call last):
...
warmstart.errors.UnsafePathError: file name '../etc/passwd' from the origin would escape the snapshot ('..' component); refusing to write anything
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, ClassVar

from .._redact import redact_url
from ..cache.paths import unsafe_reason
from ..config import Settings
from ..errors import OfflineError, TransferError, UnsafePathError
from ..refs import Malformed, Ref

_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,254}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file of a listing. ``sha256`` is given when the origin knows it (Hub LFS files, OCI
    layers); otherwise the engine hashes the bytes. ``etag`` is the origin's own version tag."""

    path: str
    size: int | None
    url: str = dataclasses.field(repr=False)  # may be signed: never printed or stored as is
    sha256: str | None = None
    etag: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)  # may hold a token
    ranges: bool = True
    #: False when ``size`` and Range support are known, so the engine skips its HEAD (a presigned S3
    #: URL is signed for GET only)
    probe: bool = True
    git_oid: str | None = None  # git blob id, checked while downloading when there is no sha256

    @property
    def key(self) -> str:
        """A stable, filesystem-safe name for partial and lock files, and the cache's name of the bytes
        of a file without sha256. It ignores the URL's query string and credentials, so a freshly
        signed URL of the same object (same ETag and size) is a cache hit, not a second download."""
        if self.sha256:
            return self.sha256
        import hashlib

        text = f"{redact_url(self.url)}\0{self.etag}\0{self.size}"
        return "u-" + hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclasses.dataclass(frozen=True)
class Listing:
    """A resolved revision of a model: ``revision`` is immutable (a commit, a version, a digest)."""

    ref: Ref
    revision: str
    files: tuple[RemoteFile, ...]

    def __post_init__(self) -> None:
        _check_revision(self.ref, self.revision)
        seen: set[str] = set()
        for f in self.files:
            safe_relpath(f.path)
            if f.path in seen:
                raise UnsafePathError(f"file name {f.path!r} appears twice in the listing of {self.ref}")
            seen.add(f.path)
        dirs = {f.path.rsplit("/", i)[0] for f in self.files for i in range(1, f.path.count("/") + 1)}
        for f in self.files:  # "a" and "a/b" in one model: a file where a directory must be
            if f.path in dirs:
                raise UnsafePathError(f"file name {f.path!r} in the listing of {self.ref} is also a directory "
                                      "of another file; refusing to write anything")


#: where an unpack hook puts each file it finds: ``sink(path, declared size, reader)`` reads ``reader`` to
#: its end into a temporary file the pipeline hashes, caps and later publishes; returns the bytes read
Sink = Callable[[str, int, BinaryIO], int]


class Unpacker(abc.ABC):
    """A source's hook that turns fetched, verified blobs into files, for one pull (it may keep state
    across the listing's blobs, e.g. the names already taken). The pipeline does everything else:
    fetch, verify, budget, caps, hashing, publishing, recording. See docs/sources.md.

    >>> class Zip(Unpacker):                                  # doctest: +SKIP
    ...     def unpacks(self, file): return file.path.endswith(".zip")
    ...     def measure(self, file, blob, limit): return sum(i.file_size for i in ZipFile(blob).infolist())
    ...     def unpack(self, file, blob, sink):
    ...         with ZipFile(blob) as z:
    ...             for i in z.infolist():
    ...                 with z.open(i) as r: sink(i.filename, i.file_size, r)
    """

    @abc.abstractmethod
    def unpacks(self, file: RemoteFile) -> bool:
        """Whether ``file``'s blob holds files to unpack (else the blob is the file)."""

    def label(self, file: RemoteFile) -> str:
        """How messages name ``file``'s blob."""
        return file.path

    @abc.abstractmethod
    def measure(self, file: RemoteFile, blob: Path, limit: int) -> int:
        """The bytes ``blob`` unpacks to, found without writing anything. Raises CacheFullError as soon
        as the count passes ``limit`` (the room the cache has), or the source's error for a blob it refuses."""

    @abc.abstractmethod
    def unpack(self, file: RemoteFile, blob: Path, sink: Sink) -> None:
        """Give every file in ``blob`` to ``sink``; raise (nothing is published) for anything refused."""


class OriginUnreachable(OfflineError):
    """The origin could not be reached; the caller may serve from the cache instead."""


class Source(abc.ABC):
    """One backend. Subclasses set ``schemes`` (what the registry maps to them), ``forms`` and
    :meth:`parse_ref`, and implement :meth:`resolve`; the other grammar methods have defaults that
    print ``scheme://location[@revision]``."""

    #: the schemes this source serves; the registry reads them to map a ref to its source
    schemes: ClassVar[tuple[str, ...]] = ()
    #: how its refs are written, for the message that lists every accepted form
    forms: ClassVar[tuple[str, ...]] = ()
    #: the revision a ref without one means (e.g. ``main`` on the Hub)
    default_revision: ClassVar[str] = "latest"
    #: modules its requests need beyond warmstart's own dependencies, and the extra that installs them
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- the grammar of its refs (class methods: a Ref carries the class as its grammar) -------------
    @classmethod
    def make_ref(cls, scheme: str, location: str, revision: str | None = None, **kw) -> Ref:
        return Ref(scheme, location, revision, grammar=cls, **kw)

    @classmethod
    @abc.abstractmethod
    def parse_ref(cls, scheme: str, body: str, text: str, bare: bool) -> Ref:
        """The Ref that ``text`` (``scheme://body``, or the bare ``body`` when ``bare``) names; raises
        :class:`~warmstart.refs.Malformed` saying what is wrong."""

    @classmethod
    def format_ref(cls, ref: Ref) -> str:
        return f"{ref.scheme}://{ref.location}" + (f"@{ref.revision}" if ref.revision else "")

    @classmethod
    def is_pinned(cls, ref: Ref) -> bool:
        """True when the revision names immutable content (no request needed when cached)."""
        return False

    @classmethod
    def key(cls, ref: Ref) -> str:
        """The cache's name of the model, without revision: e.g. ``hf://org/name``."""
        return cls.format_ref(ref.with_revision(None))

    @classmethod
    def check_revision(cls, rev: object) -> None:
        """One grammar for ``@REV`` and ``--revision``/``revision=``: a branch, tag, commit or version id
        (``refs/pr/1`` is fine) or an OCI digest; never ``..``, an empty component, NUL or a control
        character, since a revision may name a file under the cache (``hub/models--…/refs/<name>``)."""
        if not isinstance(rev, str) or not rev:
            raise Malformed("empty revision")
        if _DIGEST.fullmatch(rev):
            return
        if not _REVISION.fullmatch(rev) or ".." in rev or any(p in ("", ".") for p in rev.split("/")):
            raise Malformed(f"bad revision {rev!r}")

    @classmethod
    def split_revision(cls, body: str) -> tuple[str, str | None]:
        """``LOCATION[@REVISION]`` -> (location, revision or None), the revision checked."""
        if "@" not in body:
            return body, None
        loc, rev = body.split("@", 1)
        cls.check_revision(rev)
        return loc, rev

    # -- listing -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def resolve(self, ref: Ref) -> Listing:
        """List the files of ``ref`` at its (resolved) revision. Raises NotFoundError,
        GatedRepoError, OriginUnreachable."""

    def unpacker(self, listing: Listing) -> Unpacker | None:
        """How some files of ``listing`` turn from a fetched blob into files (e.g. OCI tar layers), or
        ``None`` (the default): every listed file is itself a file of the snapshot. The pipeline asks
        once per pull, fetches and verifies such a file's blob like any other, then calls the hook."""
        return None


def safe_relpath(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a snapshot, else raise (the grammar is
    :func:`warmstart.cache.paths.check_relpath`, shared with every place that makes a view)."""
    why = unsafe_reason(path)
    if why:
        raise UnsafePathError(
            f"file name {path!r} from the origin would escape the snapshot ({why}); refusing to write anything"
        )
    return path


def _check_revision(ref: Ref, revision: object) -> None:
    """A listing's revision names a snapshot directory: no NUL, control character, absolute path or
    ``..``, at most 255 bytes; ``/`` and ``:`` are allowed (OCI digests) and replaced in view names."""
    if not isinstance(revision, str) or not revision or len(revision.encode("utf-8", "surrogatepass")) > 255:
        raise TransferError(f"{ref}: the origin answered an invalid revision; check the origin")
    if unsafe_reason(revision.strip("/")) or revision.startswith("/"):
        raise TransferError(f"{ref}: the origin answered an invalid revision {revision[:80]!r}; check the origin")

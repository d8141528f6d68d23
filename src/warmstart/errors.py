"""The warmstart error tree.

Every error a user can meet says what happened and what to do, in one line. Each class also
subclasses the builtin a caller would naturally catch, so ``except FileNotFoundError`` keeps
working around ``warmstart.pull``.

>>> try:
...     raise NotFoundError("hf://org/missing: repository not found; check the name")
... except FileNotFoundError as e:
...     print(e)
hf://org/missing: repository not found; check the name
"""

from __future__ import annotations

from ._redact import for_terminal


class WarmstartError(Exception):
    """Base class of every error warmstart raises on purpose.

    Its text never carries a secret or a control character, whatever went into it (a server's error
    message, a file name from a listing, a signed URL): URLs lose their query string and credentials,
    and control characters are escaped (see ``warmstart._redact``).

    >>> print(WarmstartError("HTTP 500 from https://h/x?X-Amz-Signature=abc: \x1b[2Jboom"))
    HTTP 500 from https://h/x: \\x1b[2Jboom
    """

    def __str__(self) -> str:
        return for_terminal(super().__str__())


class RefError(WarmstartError, ValueError):
    """A reference string does not follow the grammar (see ``warmstart.refs``)."""


class NotFoundError(WarmstartError, FileNotFoundError):
    """A repository, revision, file or cached model does not exist."""


class GatedRepoError(WarmstartError, PermissionError):
    """The repository is private or gated and no valid token was given."""


class IntegrityError(WarmstartError, ValueError):
    """Bytes do not match their expected digest; they were discarded, never served."""


class CacheFullError(WarmstartError, OSError):
    """Not enough room (budget or free disk) for the bytes a pull needs; raised before downloading."""


class InvalidCheckpointError(WarmstartError, ValueError):
    """A weight file is malformed: names the file, the tensor and the rule it broke."""


class OfflineError(WarmstartError, ConnectionError):
    """Offline (by setting or because the origin is unreachable) and the model is not cached."""


class TransferError(WarmstartError, ConnectionError):
    """The origin kept failing after every retry."""


class UnsafePathError(WarmstartError, ValueError):
    """A file name from an origin would escape the snapshot directory."""


class InUseError(WarmstartError, PermissionError):
    """A cached model is held (leased) by a running process and cannot be removed."""


class ConfigError(WarmstartError, ValueError):
    """A setting (environment variable or flag) has an invalid value."""


class RecipeError(WarmstartError, ValueError):
    """A conversion recipe is malformed or does not fit the model (names no tensor, split does not divide)."""


class CacheIndexError(WarmstartError, OSError):
    """The cache's index (``index.db``) cannot be read or written: corrupt, locked, or the disk failed."""


class ReadOnlyCacheError(WarmstartError, PermissionError):
    """The cache home is read-only: cached models are served, nothing new can be stored."""

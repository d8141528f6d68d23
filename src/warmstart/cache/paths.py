"""The one gate for names that become paths, and for paths warmstart creates, links or removes.

Values from an origin, a listing, a registry or the index (a commit, a file name, an etag, a
revision) are checked against a strict grammar before they name anything on disk; and every path
is checked to stay inside the directory it belongs to right before it is created, linked or
removed — its parents resolved (symlinks followed), its last component not (that is the link or
file being replaced or removed).

>>> check_relpath("a/b.json")
'a/b.json'
>>> check_relpath("../etc/passwd")
Traceback (most recent call last):
...
warmstart.errors.UnsafePathError: file name '../etc/passwd' would escape its directory ('..' component); refusing to write anything
>>> check_commit("a" * 40) == "a" * 40
True
>>> hub_blob_name("0" * 40, "f" * 64) == "0" * 40, hub_blob_name("../x", "f" * 64) == "f" * 64
(True, True)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UnsafePathError

_COMMIT = re.compile(r"[0-9a-f]{40}")
_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: longest name of one component, and of a whole relative path (Linux NAME_MAX / PATH_MAX)
NAME_MAX = 255
PATH_MAX = 4096


def _why_name(name: object) -> str | None:
    """Why ``name`` is not one safe path component (None when it is)."""
    if not isinstance(name, str) or not name:
        return "empty name"
    if "\x00" in name:
        return "NUL character"
    if "/" in name or "\\" in name:
        return "path separator"
    if name in (".", ".."):
        return f"{name!r} component"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control character"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return "name too long"
    return None


def unsafe_reason(path: object) -> str | None:
    """Why ``path`` is not a safe relative POSIX path (None when it is)."""
    if not isinstance(path, str) or not path:
        return "empty name"
    if "\x00" in path:
        return "NUL character"
    if "\\" in path:
        return "backslash"
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "absolute path"
    parts = path.split("/")
    if ".." in parts:
        return "'..' component"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' component"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "control character"
    if len(path.encode("utf-8", "surrogatepass")) > PATH_MAX or any(
            len(p.encode("utf-8", "surrogatepass")) > NAME_MAX for p in parts):
        return "name too long"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    return None


def check_relpath(path: str, what: str = "file name") -> str:
    """``path`` if it is a relative POSIX path that stays inside its directory: no absolute path, no
    ``..``/``.``/empty component, no backslash, NUL or control character, not too long; else
    :class:`UnsafePathError`."""
    why = unsafe_reason(path)
    if why:
        raise UnsafePathError(f"{what} {path!r} would escape its directory ({why}); refusing to write anything")
    return path


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is one safe path component (see :func:`check_relpath`; no ``/`` either)."""
    why = _why_name(name)
    if why:
        raise UnsafePathError(f"{what} {name!r} cannot be a file name ({why}); refusing to write anything")
    return name


def is_commit(value: object) -> bool:
    """True for a Hub (git) commit: 40 lowercase hex digits."""
    return isinstance(value, str) and bool(_COMMIT.fullmatch(value))


def check_commit(value: str, what: str = "commit") -> str:
    if not is_commit(value):
        raise UnsafePathError(f"{what} {str(value)[:80]!r} is not 40 lowercase hex digits; refusing to use it")
    return value


def is_etag(value: object) -> bool:
    """True for an etag that may name a file: a git blob id (40 hex) or a sha256 (64 hex), lowercase."""
    return isinstance(value, str) and bool(_ETAG.fullmatch(value))


def hub_blob_name(etag: str | None, digest: str) -> str:
    """The name of a file's link under ``hub/models--…/blobs/``: its etag when that is 40 or 64
    lowercase hex, else its sha256 (the content digest, always safe)."""
    return etag if is_etag(etag) else digest


def inside(root: os.PathLike | str, path: os.PathLike | str, *, what: str = "path") -> Path:
    """Return ``path`` if it lies inside ``root``, else raise :class:`UnsafePathError`.

    Checked twice: lexically (``path`` is ``root`` plus relative components, none of them ``..``,
    ``.`` or empty) and on disk (the parents of ``path``, symlinks resolved, are inside ``root``
    resolved). The last component is not followed: it is what the caller creates, replaces or
    removes (a symlink there is replaced or removed itself, never its target).

    >>> inside("/c/hub", "/c/hub/models--a--b/snapshots/x").as_posix()
    '/c/hub/models--a--b/snapshots/x'
    >>> inside("/c/hub", "/c/hub/../etc")
    Traceback (most recent call last):
    ...
    warmstart.errors.UnsafePathError: refusing to touch path /c/hub/../etc: it is not inside /c/hub ('..' component); nothing was changed
    """
    root_p, path_p = Path(os.path.abspath(os.fspath(root))), Path(os.fspath(path))
    if not path_p.is_absolute():
        path_p = Path(os.getcwd()) / path_p

    def bad(why: str) -> UnsafePathError:
        shown = repr(os.fspath(path_p))[1:-1]  # control characters escaped, never echoed raw
        return UnsafePathError(f"refusing to touch {what} {shown}: it is not inside {root_p} ({why}); "
                               "nothing was changed")

    if "\x00" in os.fspath(path_p):
        raise bad("NUL character")
    # lexical: the root's components, then clean relative ones
    rel = _relative_parts(path_p.parts, root_p.parts, os.fspath(root))
    if rel is None:
        raise bad("'..' component" if ".." in path_p.parts else "outside the directory")
    if not rel:
        raise bad("the directory itself")
    for p in rel:
        if p in ("..", ".", ""):
            raise bad(f"{p!r} component")
    # on disk: the parents, symlinks resolved, stay inside the root resolved
    real_root = os.path.realpath(root_p)
    real_parent = os.path.realpath(path_p.parent)
    if real_parent != real_root and not real_parent.startswith(real_root.rstrip(os.sep) + os.sep):
        raise bad(f"a parent resolves to {real_parent}")
    return path_p


def _relative_parts(raw: tuple[str, ...], root_parts: tuple[str, ...], root_text: str) -> tuple[str, ...] | None:
    """The components of ``raw`` after the root, or None when ``raw`` does not start with the root.
    The root may be spelt with ``..`` or ``.`` (e.g. ``WARMSTART_HOME=../cache``): its own spelling
    is accepted as a prefix too."""
    for prefix in (root_parts, Path(os.fspath(Path(os.getcwd()) / root_text)).parts, Path(root_text).parts):
        if len(raw) >= len(prefix) and tuple(raw[: len(prefix)]) == tuple(prefix):
            return tuple(raw[len(prefix):])
    return None


__all__ = ["check_commit", "check_name", "check_relpath", "hub_blob_name", "inside", "is_commit", "is_etag",
           "unsafe_reason"]

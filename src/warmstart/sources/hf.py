"""The Hugging Face Hub backend: ``hf://ORG/NAME[@REVISION]``, or a bare ``ORG/NAME``.

>>> HubSource.parse_ref("hf", "models/Qwen/Qwen2.5-0.5B@main", "hf://models/Qwen/Qwen2.5-0.5B@main", False)
Ref(scheme='hf', location='Qwen/Qwen2.5-0.5B', revision='main')
>>> r = HubSource.parse_ref("hf", "org/name@" + "a" * 40, "org/name@" + "a" * 40, True)
>>> str(r), r.pinned, r.key
('hf://org/name@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', True, 'hf://org/name')

One metadata request per pull: ``GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`` (the
request ``huggingface_hub.HfApi.model_info(files_metadata=True)`` makes) returns the commit and every
file's size, git oid and, for LFS files, sha256. The bytes then move through warmstart's own engine
from ``{endpoint}/{repo}/resolve/{commit}/{path}``; the Hub redirects large files to its CDN, which
the engine follows.

The request is made with the engine's stdlib HTTP client rather than through ``huggingface_hub``:
importing that library and its HTTP stack costs ~250 ms, half of the budget of a whole warm
``warmstart pull`` process. Errors are read from the Hub's ``X-Error-Code`` header exactly as
``huggingface_hub`` reads them (RepoNotFound, GatedRepo, RevisionNotFound), and the token is found
where huggingface_hub keeps it (``HF_TOKEN``, then ``$HF_HOME/token``; see ``config.py``).
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from typing import TYPE_CHECKING

from .._redact import clean
from .._retry import METADATA
from ..cache.paths import is_commit
from ..errors import GatedRepoError, NotFoundError, TransferError
from ..refs import Malformed, Ref
from .base import Listing, OriginUnreachable, RemoteFile, Source, safe_relpath

if TYPE_CHECKING:
    import http.client

log = logging.getLogger(__name__)

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO = re.compile(rf"{_PART}/{_PART}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_BLOB_ID = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def _retry_after(resp: http.client.HTTPResponse) -> float | None:
    """The server's ``Retry-After`` in seconds (the number form), or None."""
    try:
        return float(resp.getheader("Retry-After") or "")
    except ValueError:
        return None


def _shown(value: object) -> str:
    """A value from the origin, quoted for a one-line message: escaped and cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class HubSource(Source):
    schemes = ("hf",)
    forms = ("hf://ORG/NAME[@REVISION]", "ORG/NAME")
    default_revision = "main"

    @classmethod
    def parse_ref(cls, scheme: str, body: str, text: str, bare: bool) -> Ref:
        loc, rev = cls.split_revision(body if bare else body.removeprefix("models/"))
        if not _REPO.fullmatch(loc):
            raise Malformed("not a path that exists, nor ORG/NAME" if bare else "a Hub repository is ORG/NAME")
        if "--" in loc:  # the Hub forbids it, and models--a--b--c could not tell a--b/c from a/b--c
            raise Malformed("a Hub repository name has no '--' (the Hub forbids it)")
        return cls.make_ref("hf", loc, rev)

    @classmethod
    def is_pinned(cls, ref: Ref) -> bool:
        """A commit (40 lowercase hex digits) is immutable; a branch or tag moves."""
        return is_commit(ref.revision or "")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}

    def resolve(self, ref: Ref) -> Listing:
        info = self.model_info(ref)
        commit = info.get("sha")
        if commit is None or commit == "":
            raise NotFoundError(f"{ref}: the Hub returned no commit for this revision; check the revision")
        if not is_commit(commit):  # it names a directory: 40 lowercase hex digits, nothing else
            raise TransferError(f"{ref}: the origin answered an invalid commit {_shown(commit)} (not 40 lowercase "
                                "hex digits); check HF_ENDPOINT")
        siblings = info.get("siblings")
        if siblings is None:
            siblings = []
        if not isinstance(siblings, list):
            raise TransferError(f"{ref}: the origin answered a malformed file list (siblings is a "
                                f"{type(siblings).__name__}); check HF_ENDPOINT")
        headers = self._headers()
        files = []
        for s in siblings:
            files.append(self._file(ref, commit, s, headers))
        return Listing(ref.with_revision(commit), commit, tuple(files))

    def _file(self, ref: Ref, commit: str, s: object, headers: dict[str, str]) -> RemoteFile:
        """One ``siblings`` entry as a RemoteFile; a malformed one is a one-line TransferError."""
        def bad(why: str) -> TransferError:
            return TransferError(f"{ref}: the origin answered a malformed file entry ({why}); check HF_ENDPOINT")

        if not isinstance(s, dict):
            raise bad(f"a {type(s).__name__}, not an object")
        name = s.get("rfilename")
        if not isinstance(name, str):
            raise bad(f"rfilename is a {type(name).__name__}")
        name = safe_relpath(name)
        lfs = s.get("lfs")
        if lfs is not None and lfs is not False and not isinstance(lfs, dict):
            raise bad(f"{name!r}: lfs is a {type(lfs).__name__}")
        sha = lfs.get("sha256") if isinstance(lfs, dict) else None
        if sha is not None:
            if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                raise bad(f"{name!r}: LFS sha256 {_shown(sha)} is not 64 hex digits")
            sha = sha.lower()
        size = s.get("size")
        if size is None and isinstance(lfs, dict):
            size = lfs.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**62):
            raise bad(f"{name!r}: size {_shown(size)} is not a byte count")
        blob_id = s.get("blobId")
        if blob_id is not None and (not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id)):
            raise bad(f"{name!r}: blobId {_shown(blob_id)} is not a git object id")
        blob_id = blob_id.lower() if blob_id else None
        url = f"{self.settings.endpoint}/{ref.repo_id}/resolve/{commit}/{urllib.parse.quote(name)}"
        return RemoteFile(
            path=name,
            size=size,
            url=url,
            sha256=sha,
            etag=sha or blob_id,
            headers=headers,
            # LFS files: size and sha256 are known and the CDN serves ranges, so no HEAD first
            probe=sha is None,
            git_oid=None if sha else blob_id,
        )

    def model_info(self, ref: Ref) -> dict:
        """The Hub's JSON for ``ref`` at its revision, with file metadata. The answer is read with a
        bound (``WARMSTART_METADATA_LIMIT``, 64 MiB) and must keep coming (``WARMSTART_STALL_TIMEOUT``);
        anything else than a JSON object within it is a one-line TransferError."""
        revision = ref.revision or self.default_revision
        url = (f"{self.settings.endpoint}/api/models/{ref.repo_id}/revision/"
               f"{urllib.parse.quote(revision, safe='')}?blobs=true")
        import http.client  # here, not above: a ref that is parsed and served from the cache needs no HTTP

        from .. import _http

        client = _http.Client(timeout=self.settings.stall_timeout, connect_timeout=self.settings.connect_timeout)
        hint = "check HF_ENDPOINT"
        try:
            for attempt in METADATA.attempts_left():
                try:
                    _, resp = client.follow("GET", url, self._headers())
                    body = _http.read_bounded(
                        resp, self.settings.metadata_limit, what=f"the origin's listing of {ref}",
                        hint=f"{hint} (or raise WARMSTART_METADATA_LIMIT)",
                        stall_s=self.settings.stall_timeout, min_rate=self.settings.min_rate)
                except TransferError:
                    raise  # refused redirect, too large or too slow: retrying would not help
                except (OSError, http.client.HTTPException) as exc:
                    # refused, unresolvable, unroutable, no answer to the connection: give up at once,
                    # so a cached model is served without waiting on a dead origin
                    if METADATA.gives_up(exc) or METADATA.last(attempt):
                        raise OriginUnreachable(
                            f"{self.settings.endpoint} is unreachable ({type(exc).__name__}: "
                            f"{_http.printable(str(exc))})") from None
                    client.drop()
                    time.sleep(METADATA.delay(attempt))
                    continue
                if resp.status == 200:
                    data = _http.load_json(body, what=f"{ref}: the Hub's answer", hint=hint)
                    if not isinstance(data, dict):
                        raise TransferError(f"{ref}: unexpected answer from the Hub; check HF_ENDPOINT")
                    return data
                if resp.status >= 500 or resp.status == 429:
                    if METADATA.last(attempt):
                        raise OriginUnreachable(f"{self.settings.endpoint} answered HTTP {resp.status}")
                    time.sleep(METADATA.delay(attempt, retry_after=_retry_after(resp)))
                    continue
                raise self._error(ref, revision, resp.status, resp.getheader("X-Error-Code"),
                                  resp.getheader("X-Error-Message"))
        finally:
            client.close()
        raise AssertionError("unreachable")

    def _error(self, ref: Ref, revision: str, status: int, code: str | None, message: str | None) -> Exception:
        if code == "GatedRepo":
            return GatedRepoError(
                f"{ref}: this repository is gated; accept its licence at {self.settings.endpoint}/"
                f"{ref.repo_id} and set HF_TOKEN to a token of that account")
        if code == "RevisionNotFound":
            return NotFoundError(f"{ref}: revision {revision!r} not found; check the branch, tag or commit")
        if code == "RepoNotFound" or status == 404:
            if self.settings.token:
                return NotFoundError(f"{ref}: repository not found (or your HF_TOKEN has no access); check the name")
            return NotFoundError(f"{ref}: repository not found; check the name, or set HF_TOKEN if it is private")
        if status in (401, 403):
            why = "your HF_TOKEN is not valid or has no access" if self.settings.token else "it is private"
            return GatedRepoError(f"{ref}: access denied (HTTP {status}, {why}); set HF_TOKEN to a token "
                                  "with access to this repository")
        # the server's own words: one line, no control characters (no terminal escapes), bounded, and
        # never our token (a server may quote the request)
        if message and self.settings.token:
            message = message.replace(self.settings.token, "***")
        detail = f": {clean(' '.join(message.split()))[:300]}" if message else ""
        return TransferError(f"{ref}: the Hub answered HTTP {status}{detail}")

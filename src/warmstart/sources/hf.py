"""The Hugging Face Hub backend: metadata and auth through ``huggingface_hub``; the bytes then
move through warmstart's own engine from ``{endpoint}/{repo}/resolve/{commit}/{path}`` (the Hub
redirects large files to its CDN, which the engine follows).

One metadata request per pull: ``GET /api/models/{repo}/revision/{rev}?blobs=true`` returns the
commit and every file's size, git oid and, for LFS files, sha256.
"""

from __future__ import annotations

import logging
import urllib.parse

from ..errors import GatedRepoError, NotFoundError, TransferError
from ..refs import Ref
from .base import Listing, OriginUnreachable, RemoteFile, Source

log = logging.getLogger(__name__)


class HubSource(Source):
    schemes = ("hf",)
    default_revision = "main"

    def resolve(self, ref: Ref) -> Listing:
        info = self._model_info(ref)
        commit = info.sha
        if not commit:
            raise NotFoundError(f"{ref}: the Hub returned no commit for this revision; check the revision")
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        files = []
        for s in info.siblings or ():
            lfs = s.lfs
            sha = None
            if lfs is not None:
                sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            url = f"{self.settings.endpoint}/{ref.repo_id}/resolve/{commit}/{urllib.parse.quote(s.rfilename)}"
            files.append(RemoteFile(
                path=s.rfilename,
                size=s.size,
                url=url,
                sha256=sha.lower() if sha else None,
                etag=sha.lower() if sha else s.blob_id,
                headers=headers,
            ))
        return Listing(ref.with_revision(commit), commit, tuple(files))

    def _model_info(self, ref: Ref):
        from huggingface_hub import HfApi
        from huggingface_hub import errors as hf_errors

        api = HfApi(endpoint=self.settings.endpoint, token=self.settings.token or False)
        revision = ref.revision or self.default_revision
        try:
            return api.model_info(ref.repo_id, revision=revision, files_metadata=True, timeout=30)
        except hf_errors.GatedRepoError:
            raise GatedRepoError(
                f"{ref}: this repository is gated; accept its licence at "
                f"{self.settings.endpoint}/{ref.repo_id} and set HF_TOKEN to a token of that account"
            ) from None
        except hf_errors.RepositoryNotFoundError:
            if self.settings.token:
                raise NotFoundError(f"{ref}: repository not found (or your HF_TOKEN has no access); "
                                    "check the name") from None
            raise NotFoundError(f"{ref}: repository not found; check the name, or set HF_TOKEN if it "
                                "is private") from None
        except hf_errors.RevisionNotFoundError:
            raise NotFoundError(f"{ref}: revision {revision!r} not found; check the branch, tag or "
                                "commit") from None
        except hf_errors.HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise GatedRepoError(f"{ref}: access denied (HTTP {status}); set HF_TOKEN to a token "
                                     "with access to this repository") from None
            if status is not None and status >= 500:
                raise OriginUnreachable(f"{self.settings.endpoint} answered HTTP {status}") from None
            raise TransferError(f"{ref}: the Hub answered {exc}".splitlines()[0]) from None
        except (OSError, ConnectionError) as exc:
            raise OriginUnreachable(f"{self.settings.endpoint} is unreachable ({type(exc).__name__})") from None
        except Exception as exc:  # httpx transport errors are not OSErrors
            if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
                raise OriginUnreachable(f"{self.settings.endpoint} is unreachable ({type(exc).__name__})") from None
            raise

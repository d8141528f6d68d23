"""The verifier: sha256 (and the git blob id, for files the origin gives no sha256 for) computed while
downloading. As the contiguous prefix of a file grows, a hashing thread reads it back (from the page
cache) and feeds the hashes; a worker writing at the frontier feeds them from memory instead. A file
whose digest does not match is discarded and downloaded once more; a second mismatch fails with
``IntegrityError``. Nothing unverified is handed on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..errors import IntegrityError
from .partial import PartialFile
from .plan import MiB
from .shared import Shared

log = logging.getLogger(__name__)


class Verifier:
    """Hashes files as their prefix grows and checks them once complete; ``on_verified(f, digest)``
    receives each file whose bytes match (from a hashing or worker thread)."""

    def __init__(self, shared: Shared, on_verified: Callable[[PartialFile, str], None]) -> None:
        self.shared = shared
        self.on_verified = on_verified
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="warmstart-hash")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def poke(self, f: PartialFile) -> None:
        """Hash what ``f`` has written beyond its hash, on a hashing thread (unless one already is)."""
        with self.shared.cv:
            if f.hash_busy or f.finished:
                return
            f.hash_busy = True
        self.pool.submit(self._hash_more, f)

    def _hash_more(self, f: PartialFile) -> None:
        cv = self.shared.cv
        try:
            view = memoryview(bytearray(4 * MiB))
            while True:
                with cv:
                    target = f.contiguous()
                    complete = f.size is not None and target == f.size
                    if f.hashed >= target:
                        if not complete:
                            f.hash_busy = False
                            return
                        break
                    start = f.hashed
                n = os.preadv(f.fd, [view[: min(len(view), target - start)]], start)
                if n <= 0:
                    raise IntegrityError(f"{f.part}: short read while hashing")
                f.hash_update(view[:n])
                with cv:
                    f.hashed = start + n
            self.finish(f)
        except BaseException as exc:
            self.shared.fail(exc)

    def finish(self, f: PartialFile) -> None:
        """Every byte of ``f`` is hashed: hand it on if its digests match, else fetch it once more."""
        digest = f.hasher.hexdigest()
        bad_git = f.git is not None and f.git.hexdigest() != f.job.git_oid
        if (f.job.sha256 and digest != f.job.sha256) or bad_git:
            self._mismatch(f)
            return
        self.on_verified(f, digest)

    def _mismatch(self, f: PartialFile) -> None:
        expected = f"sha256 {f.job.sha256}" if f.job.sha256 else f"git blob id {f.job.git_oid}"
        f.remove()
        self.shared.progress.advance(-(f.size or 0))
        if f.integrity_retries >= 1:
            raise IntegrityError(f"{f.job.name}: downloaded bytes do not match their {expected}; the "
                                 "data was discarded. The origin serves corrupt data: try again later "
                                 "or report it")
        log.warning("%s: bytes do not match their %s; discarding and downloading again", f.job.name, expected)
        with self.shared.cv:
            f.integrity_retries += 1
            f.restart_hashes()
            f.hash_busy = False
            if f.stream:
                f.resolving = False
            else:
                f.reopen_empty()
            self.shared.cv.notify_all()

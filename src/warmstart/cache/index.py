"""The SQLite index of the cache: blobs, snapshots (manifests), refs, pins and access times. Every SQL
statement of warmstart is here (and the schema in :mod:`warmstart.cache.index_schema`).

The blobs on disk are the truth for *content*; the index is the truth for *names* (which snapshot
holds which files, which branch points at which revision). Every write is one short transaction in
WAL mode, so many processes can pull and load at once.

Every SQLite failure leaves this module as a one-line :class:`~warmstart.errors.WarmstartError` that
says what to do (a corrupt file, a full disk, a read-only home, a lock held too long). In a home whose
``index.db`` cannot be written, lookups work, writes raise :class:`~warmstart.errors.ReadOnlyCacheError`,
and :meth:`Index.touch` is skipped.

>>> import tempfile
>>> ix = Index(Path(tempfile.mkdtemp()) / "index.db")
>>> sid = ix.add_snapshot("hf://org/name", "a" * 40, [IndexedFile("w.bin", "b" * 64, 3, None)])
>>> [f.path for f in ix.snapshot_files(sid)]
['w.bin']
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ReadOnlyCacheError
from .index_schema import connect, has_git_oid, index_writable, open_writable, translate

log = logging.getLogger(__name__)

_SNAPSHOT = "id, source, revision, created, last_used, pinned, kind, parent, meta"


@dataclasses.dataclass(frozen=True)
class IndexedFile:
    """One file of a snapshot as the index records it: its relative path, content digest (sha256 hex),
    size, origin etag (names the Hub view's ``blobs/<etag>`` link) and, for a file the origin names
    without a sha256, the git blob id it listed (``verify`` checks it). The API's
    :class:`~warmstart.snapshot.SnapshotFile` is the same file with the path of its blob instead."""

    path: str
    digest: str
    size: int
    etag: str | None = None
    git_oid: str | None = None


@dataclasses.dataclass(frozen=True)
class SnapshotRow:
    """One recorded snapshot: ``source`` (the ref without revision) at ``revision``; ``kind`` is
    ``source`` or ``derived`` (a conversion's output, whose ``parent`` is the snapshot it was made from and
    ``meta`` its JSON description)."""

    id: int
    source: str
    revision: str
    created: float
    last_used: float
    pinned: bool
    kind: str
    parent: int | None
    meta: str | None


class Index:
    """A thread-safe handle on ``index.db``. Cheap to open: the schema is created only once.

    ``read_only`` (default: whether the file can be written, see
    :func:`~warmstart.cache.index_schema.index_writable`) opens it with ``mode=ro``."""

    def __init__(self, path: Path, *, timeout: float = 60.0, read_only: bool | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.read_only = not index_writable(self.path) if read_only is None else read_only
        self._lock = threading.RLock()
        with self._guard():
            self._db = connect(self.path, timeout=timeout, read_only=self.read_only)
            try:
                self._db.execute("PRAGMA foreign_keys=ON")
                if not self.read_only:
                    open_writable(self._db)
                self._git_col = has_git_oid(self._db)
            except BaseException:
                self._db.close()
                raise

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn every SQLite failure into a one-line warmstart error."""
        try:
            yield
        except sqlite3.Error as exc:
            raise translate(exc, self.path, timeout=self.timeout) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One immediate (write-locking) transaction, retried by SQLite's busy timeout."""
        if self.read_only:
            raise ReadOnlyCacheError(f"the cache home {self.path.parent} is read-only; cached models can be read, "
                                     "nothing can be stored: set WARMSTART_HOME to a writable directory")
        with self._lock, self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock, self._guard():
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- blobs ---------------------------------------------------------------------------------
    def add_blob(self, digest: str, size: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO blobs(digest, size, created) VALUES(?,?,?) ON CONFLICT(digest) DO NOTHING",
                       (digest, size, time.time()))

    def forget_blob(self, digest: str) -> None:
        """Drop a blob's row unless a snapshot names it again (it was removed from disk)."""
        with self._transaction() as db:
            db.execute("DELETE FROM blobs WHERE digest=? AND NOT EXISTS "
                       "(SELECT 1 FROM files WHERE digest=?)", (digest, digest))
            db.execute("DELETE FROM keys WHERE digest=? AND NOT EXISTS "
                       "(SELECT 1 FROM files WHERE digest=?)", (digest, digest))

    def total_blob_bytes(self) -> int:
        """Bytes of the blobs the index knows: what the budget counts."""
        return int(self._rows("SELECT COALESCE(SUM(size), 0) FROM blobs")[0][0])

    def blob_sizes(self) -> dict[str, int]:
        return dict(self._rows("SELECT digest, size FROM blobs"))

    # -- snapshots -----------------------------------------------------------------------------
    def add_snapshot(self, source: str, revision: str, files: Iterable[IndexedFile], *, kind: str = "source",
                     parent: int | None = None, meta: str | None = None) -> int:
        """Record (or replace the file list of) a snapshot; returns its id. Blobs must be recorded."""
        files = list(files)
        now = time.time()
        with self._transaction() as db:
            for f in files:
                db.execute("INSERT OR IGNORE INTO blobs(digest, size, created) VALUES(?,?,?)", (f.digest, f.size, now))
            row = db.execute("SELECT id FROM snapshots WHERE source=? AND revision=?", (source, revision)).fetchone()
            if row:
                sid = row[0]
                db.execute("UPDATE snapshots SET last_used=?, meta=COALESCE(?, meta) WHERE id=?", (now, meta, sid))
                db.execute("DELETE FROM files WHERE snapshot=?", (sid,))
            else:
                sid = db.execute(
                    "INSERT INTO snapshots(source, revision, created, last_used, kind, parent, meta) "
                    "VALUES(?,?,?,?,?,?,?)", (source, revision, now, now, kind, parent, meta)).lastrowid
            db.executemany(
                "INSERT INTO files(snapshot, path, digest, size, etag, git_oid) VALUES(?,?,?,?,?,?)",
                [(sid, f.path, f.digest, f.size, f.etag, f.git_oid) for f in files],
            )
        return int(sid)

    def find_snapshot(self, source: str, revision: str) -> SnapshotRow | None:
        rows = self._rows(f"SELECT {_SNAPSHOT} FROM snapshots WHERE source=? AND revision=?", (source, revision))
        return SnapshotRow(*rows[0]) if rows else None

    def find_derived(self, key: str) -> SnapshotRow | None:
        """The converted snapshot stored under ``key`` (its revision), whatever its source."""
        rows = self._rows(f"SELECT {_SNAPSHOT} FROM snapshots WHERE kind='derived' AND revision=?", (key,))
        return SnapshotRow(*rows[0]) if rows else None

    def get_snapshot(self, sid: int) -> SnapshotRow | None:
        rows = self._rows(f"SELECT {_SNAPSHOT} FROM snapshots WHERE id=?", (sid,))
        return SnapshotRow(*rows[0]) if rows else None

    def snapshots(self, source: str | None = None) -> list[SnapshotRow]:
        if source is None:
            rows = self._rows(f"SELECT {_SNAPSHOT} FROM snapshots ORDER BY source, created")
        else:
            rows = self._rows(f"SELECT {_SNAPSHOT} FROM snapshots WHERE source=? ORDER BY created", (source,))
        return [SnapshotRow(*r) for r in rows]

    def snapshot_files(self, sid: int) -> list[IndexedFile]:
        git = "git_oid" if self._git_col else "NULL"
        rows = self._rows(f"SELECT path, digest, size, etag, {git} FROM files WHERE snapshot=? ORDER BY path", (sid,))
        return [IndexedFile(*r) for r in rows]

    def snapshot_digests(self, sid: int) -> list[str]:
        return [r[0] for r in self._rows("SELECT digest FROM files WHERE snapshot=?", (sid,))]

    def touch(self, sid: int) -> None:
        """Record a use (the LRU key); skipped in a read-only home."""
        if self.read_only:
            log.debug("%s is read-only; not recording the use of snapshot %d", self.path, sid)
            return
        with self._transaction() as db:
            db.execute("UPDATE snapshots SET last_used=? WHERE id=?", (time.time(), sid))

    def set_pinned(self, sid: int, pinned: bool) -> None:
        with self._transaction() as db:
            db.execute("UPDATE snapshots SET pinned=? WHERE id=?", (int(pinned), sid))

    def remove_snapshot(self, sid: int) -> None:
        """Drop a snapshot, its file rows and the refs that point at its revision (one transaction)."""
        with self._transaction() as db:
            row = db.execute("SELECT source, revision FROM snapshots WHERE id=?", (sid,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM files WHERE snapshot=?", (sid,))
            db.execute("DELETE FROM snapshots WHERE id=?", (sid,))
            db.execute("DELETE FROM refs WHERE source=? AND revision=?", row)

    # -- origin keys (files the origin names without a sha256) --------------------------------
    def set_key(self, key: str, digest: str, size: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO keys(key, digest, size) VALUES(?,?,?)", (key, digest, size))

    def digest_for_key(self, key: str) -> str | None:
        rows = self._rows("SELECT digest FROM keys WHERE key=?", (key,))
        return rows[0][0] if rows else None

    # -- refs ----------------------------------------------------------------------------------
    def set_ref(self, source: str, name: str, revision: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO refs(source, name, revision, updated) VALUES(?,?,?,?) "
                "ON CONFLICT(source, name) DO UPDATE SET revision=excluded.revision, updated=excluded.updated",
                (source, name, revision, time.time()),
            )

    def get_ref(self, source: str, name: str) -> str | None:
        rows = self._rows("SELECT revision FROM refs WHERE source=? AND name=?", (source, name))
        return rows[0][0] if rows else None

    def refs_of(self, source: str) -> dict[str, str]:
        return dict(self._rows("SELECT name, revision FROM refs WHERE source=?", (source,)))

    def all_refs(self) -> list[tuple[str, str, str]]:
        """Every ref as ``(source, name, revision)``."""
        return self._rows("SELECT source, name, revision FROM refs")

    # -- who names which blob (eviction, gc, ls, views) ----------------------------------------
    def reference_counts(self) -> dict[str, int]:
        """``{digest: number of file rows naming it}`` over every snapshot."""
        return Counter(dict(self._rows("SELECT digest, COUNT(*) FROM files GROUP BY digest")))

    def owner_counts(self) -> dict[str, int]:
        """``{digest: number of snapshots naming it}``."""
        return dict(self._rows("SELECT digest, COUNT(DISTINCT snapshot) FROM files GROUP BY digest"))

    def referenced_digests(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT DISTINCT digest FROM files")}

    def blob_referenced(self, digest: str) -> bool:
        return bool(self._rows("SELECT 1 FROM files WHERE digest=? LIMIT 1", (digest,)))

    def source_blobs(self, source: str) -> set[tuple[str | None, str]]:
        """``(etag, digest)`` of every file some snapshot of ``source`` still names."""
        return set(self._rows("SELECT DISTINCT f.etag, f.digest FROM files f JOIN snapshots s ON s.id=f.snapshot "
                              "WHERE s.source=?", (source,)))

    def listing_rows(self) -> list[tuple]:
        """One row per (snapshot, file) for ``ls``: id, source, revision, created, last_used, pinned, digest,
        size (digest and size None for a snapshot without files)."""
        return self._rows(
            "SELECT s.id, s.source, s.revision, s.created, s.last_used, s.pinned, f.digest, f.size "
            "FROM snapshots s LEFT JOIN files f ON f.snapshot = s.id ORDER BY s.source, s.created")

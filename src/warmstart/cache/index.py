"""The SQLite index of the cache: blobs, snapshots (manifests), refs, pins and access times.

The blobs on disk are the truth for *content*; the index is the truth for *names* (which snapshot
holds which files, which branch points at which revision). Every write is one short transaction in
WAL mode, so many processes can pull and load at once.

Every SQLite failure leaves this module as a one-line :class:`~warmstart.errors.WarmstartError` that
says what to do (a corrupt file, a full disk, a read-only home, a lock held too long). A home whose
``index.db`` cannot be written is opened read-only (``mode=ro``, which still sees a live writer's WAL;
else ``immutable=1`` when no writer left a WAL to share): lookups work, writes raise
:class:`~warmstart.errors.ReadOnlyCacheError`, and :meth:`Index.touch` is skipped.

>>> import tempfile
>>> ix = Index(Path(tempfile.mkdtemp()) / "index.db")
>>> sid = ix.add_snapshot("hf://org/name", "a" * 40, [FileEntry("w.bin", "b" * 64, 3, None)])
>>> [f.path for f in ix.snapshot_files(sid)]
['w.bin']
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import CacheFullError, CacheIndexError, ReadOnlyCacheError, WarmstartError

log = logging.getLogger(__name__)

#: 2: ``files.git_oid`` (the git blob id the origin listed for a file without a sha256)
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs(
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    verified REAL,
    tier TEXT NOT NULL DEFAULT 'disk'
);
CREATE TABLE IF NOT EXISTS snapshots(
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL DEFAULT 'source',
    parent INTEGER,
    meta TEXT,
    UNIQUE(source, revision)
);
CREATE TABLE IF NOT EXISTS files(
    snapshot INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT,
    git_oid TEXT,
    PRIMARY KEY(snapshot, path)
);
CREATE INDEX IF NOT EXISTS files_digest ON files(digest);
CREATE TABLE IF NOT EXISTS keys(
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refs(
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    revision TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY(source, name)
);
"""


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: its relative path, content digest (sha256 hex), size, origin etag and,
    for a file the origin names without a sha256, the git blob id it listed (``verify`` checks it)."""

    path: str
    digest: str
    size: int
    etag: str | None = None
    git_oid: str | None = None


@dataclasses.dataclass(frozen=True)
class SnapshotRow:
    id: int
    source: str
    revision: str
    created: float
    last_used: float
    pinned: bool
    kind: str
    parent: int | None
    meta: str | None


def index_writable(path: Path) -> bool:
    """Whether this process may write ``index.db`` (and create its journal next to it). A read-only
    mount or a directory without write permission says no; root passes permission checks."""
    if not os.access(path.parent, os.W_OK):
        return False
    return not path.exists() or os.access(path, os.W_OK)


def translate(exc: sqlite3.Error, path: Path, *, timeout: float = 60.0) -> WarmstartError:
    """The one-line error, with what to do, for an SQLite failure on ``index.db`` at ``path``."""
    msg = str(exc)
    low = msg.lower()
    home = path.parent
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return CacheIndexError(f"{path} is corrupt ({msg}); run `warmstart verify --rebuild-index` to rebuild "
                               "it from the blobs and views on disk")
    if "full" in low:
        return CacheFullError(f"the disk holding {home} is full ({msg}); free space on it, run `warmstart gc`, "
                              "or set WARMSTART_HOME to a larger disk")
    if "readonly" in low or "read-only" in low or (
            "unable to open" in low and not index_writable(path)):
        return ReadOnlyCacheError(f"the cache home {home} is read-only ({msg}); cached models can be read, "
                                  "nothing can be stored: set WARMSTART_HOME to a writable directory")
    if "locked" in low or "busy" in low:
        return CacheIndexError(f"{path} stayed locked by another process for {timeout:.0f}s ({msg}); try again "
                               "when it has finished")
    if "disk i/o" in low:
        return CacheIndexError(f"disk I/O error on {path} ({msg}); check the disk (dmesg) and its free space, "
                               "then try again")
    if "unable to open" in low:
        return CacheIndexError(f"cannot open {path} ({msg}); check that {home} exists and is a directory you "
                               "may read and write")
    return CacheIndexError(f"{path}: {msg}; if it persists, run `warmstart verify --rebuild-index`")


class Index:
    """A thread-safe handle on ``index.db``. Cheap to open: the schema is created only once.

    ``read_only`` (default: whether the file can be written, see :func:`index_writable`) opens it
    with ``mode=ro``; a missing ``index.db`` in a read-only home is an empty in-memory index."""

    def __init__(self, path: Path, *, timeout: float = 60.0, read_only: bool | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.read_only = not index_writable(self.path) if read_only is None else read_only
        self._lock = threading.RLock()
        self._git_col = True
        with self._guard():
            self._db = self._connect()
            try:
                self._open()
            except BaseException:
                self._db.close()
                raise

    def _open(self) -> None:
        self._db.execute("PRAGMA foreign_keys=ON")
        if self.read_only:
            self._git_col = any(r[1] == "git_oid" for r in self._db.execute("PRAGMA table_info(files)"))
            return
        for attempt in range(200):  # two processes creating a fresh index at once: switching to WAL
            try:                     # answers "locked" without waiting on the busy timeout; retry
                if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    self._create()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)

    def _connect(self) -> sqlite3.Connection:
        kw = dict(timeout=self.timeout, isolation_level=None, check_same_thread=False)
        if not self.read_only:
            return sqlite3.connect(str(self.path), **kw)
        if not self.path.exists():  # a read-only home that never held an index: nothing is cached
            db = sqlite3.connect(":memory:", **kw)
            db.executescript(_SCHEMA)
            return db
        uri = self.path.absolute().as_uri()
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, **kw)
        try:  # sees a live writer's WAL; fails when there is no -shm file and none can be made
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
        log.debug("%s: no writer's WAL to share and the home is read-only; opening it immutable", self.path)
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, **kw)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn every SQLite failure into a one-line warmstart error."""
        try:
            yield
        except sqlite3.Error as exc:
            raise translate(exc, self.path, timeout=self.timeout) from None

    def _create(self) -> None:
        with self._lock:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. a filesystem without shared memory: still correct, slower
                self._db.execute("PRAGMA journal_mode=DELETE")
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # raw: the caller retries "locked", the guard translates the rest
            try:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                if not any(r[1] == "git_oid" for r in db.execute("PRAGMA table_info(files)")):
                    db.execute("ALTER TABLE files ADD COLUMN git_oid TEXT")  # from schema 1
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
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

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock, self._guard():
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- blobs ---------------------------------------------------------------------------------
    def add_blob(self, digest: str, size: int, *, tier: str = "disk", verified: bool = True) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO blobs(digest, size, created, verified, tier) VALUES(?,?,?,?,?) "
                "ON CONFLICT(digest) DO UPDATE SET verified=excluded.verified",
                (digest, size, now, now if verified else None, tier),
            )

    def has_blob(self, digest: str) -> bool:
        return bool(self.query("SELECT 1 FROM blobs WHERE digest=?", (digest,)))

    # -- snapshots -----------------------------------------------------------------------------
    def add_snapshot(
        self,
        source: str,
        revision: str,
        files: Iterable[FileEntry],
        *,
        kind: str = "source",
        parent: int | None = None,
        meta: str | None = None,
    ) -> int:
        """Record (or replace the file list of) a snapshot; returns its id. Blobs must be recorded."""
        files = list(files)
        now = time.time()
        with self.transaction() as db:
            for f in files:
                db.execute(
                    "INSERT OR IGNORE INTO blobs(digest, size, created, verified) VALUES(?,?,?,?)",
                    (f.digest, f.size, now, now),
                )
            row = db.execute(
                "SELECT id FROM snapshots WHERE source=? AND revision=?", (source, revision)
            ).fetchone()
            if row:
                sid = row[0]
                db.execute("UPDATE snapshots SET last_used=?, meta=COALESCE(?, meta) WHERE id=?",
                           (now, meta, sid))
                db.execute("DELETE FROM files WHERE snapshot=?", (sid,))
            else:
                sid = db.execute(
                    "INSERT INTO snapshots(source, revision, created, last_used, kind, parent, meta) "
                    "VALUES(?,?,?,?,?,?,?)",
                    (source, revision, now, now, kind, parent, meta),
                ).lastrowid
            db.executemany(
                "INSERT INTO files(snapshot, path, digest, size, etag, git_oid) VALUES(?,?,?,?,?,?)",
                [(sid, f.path, f.digest, f.size, f.etag, f.git_oid) for f in files],
            )
        return int(sid)

    def find_snapshot(self, source: str, revision: str) -> SnapshotRow | None:
        rows = self.query("SELECT * FROM snapshots WHERE source=? AND revision=?", (source, revision))
        return SnapshotRow(*rows[0]) if rows else None

    def get_snapshot(self, sid: int) -> SnapshotRow | None:
        rows = self.query("SELECT * FROM snapshots WHERE id=?", (sid,))
        return SnapshotRow(*rows[0]) if rows else None

    def snapshots(self, source: str | None = None) -> list[SnapshotRow]:
        if source is None:
            rows = self.query("SELECT * FROM snapshots ORDER BY source, created")
        else:
            rows = self.query("SELECT * FROM snapshots WHERE source=? ORDER BY created", (source,))
        return [SnapshotRow(*r) for r in rows]

    def snapshot_files(self, sid: int) -> list[FileEntry]:
        git = "git_oid" if self._git_col else "NULL"
        rows = self.query(f"SELECT path, digest, size, etag, {git} FROM files WHERE snapshot=? ORDER BY path",
                          (sid,))
        return [FileEntry(*r) for r in rows]

    def touch(self, sid: int) -> None:
        """Record a use (the LRU key); skipped in a read-only home."""
        if self.read_only:
            log.debug("%s is read-only; not recording the use of snapshot %d", self.path, sid)
            return
        with self.transaction() as db:
            db.execute("UPDATE snapshots SET last_used=? WHERE id=?", (time.time(), sid))

    def set_pinned(self, sid: int, pinned: bool) -> None:
        with self.transaction() as db:
            db.execute("UPDATE snapshots SET pinned=? WHERE id=?", (int(pinned), sid))

    # -- origin keys (files the origin names without a sha256) --------------------------------
    def set_key(self, key: str, digest: str, size: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO keys(key, digest, size) VALUES(?,?,?)", (key, digest, size))

    def digest_for_key(self, key: str) -> str | None:
        rows = self.query("SELECT digest FROM keys WHERE key=?", (key,))
        return rows[0][0] if rows else None

    # -- refs ----------------------------------------------------------------------------------
    def set_ref(self, source: str, name: str, revision: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO refs(source, name, revision, updated) VALUES(?,?,?,?) "
                "ON CONFLICT(source, name) DO UPDATE SET revision=excluded.revision, updated=excluded.updated",
                (source, name, revision, time.time()),
            )

    def get_ref(self, source: str, name: str) -> str | None:
        rows = self.query("SELECT revision FROM refs WHERE source=? AND name=?", (source, name))
        return rows[0][0] if rows else None

    def refs_of(self, source: str) -> dict[str, str]:
        return dict(self.query("SELECT name, revision FROM refs WHERE source=?", (source,)))

    # -- management (eviction, gc, ls) ---------------------------------------------------------
    def remove_snapshot(self, sid: int) -> None:
        """Drop a snapshot, its file rows and the refs that point at its revision (one transaction)."""
        with self.transaction() as db:
            row = db.execute("SELECT source, revision FROM snapshots WHERE id=?", (sid,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM files WHERE snapshot=?", (sid,))
            db.execute("DELETE FROM snapshots WHERE id=?", (sid,))
            db.execute("DELETE FROM refs WHERE source=? AND revision=?", row)

    def snapshot_digests(self, sid: int) -> list[str]:
        return [r[0] for r in self.query("SELECT digest FROM files WHERE snapshot=?", (sid,))]

    def reference_counts(self) -> dict[str, int]:
        """``{digest: number of file rows naming it}`` over every snapshot."""
        from collections import Counter

        return Counter(dict(self.query("SELECT digest, COUNT(*) FROM files GROUP BY digest")))

    def referenced_digests(self) -> set[str]:
        return {r[0] for r in self.query("SELECT DISTINCT digest FROM files")}

    def blob_referenced(self, digest: str) -> bool:
        return bool(self.query("SELECT 1 FROM files WHERE digest=? LIMIT 1", (digest,)))

    def blob_sizes(self) -> dict[str, int]:
        return dict(self.query("SELECT digest, size FROM blobs"))

    def forget_blob(self, digest: str) -> None:
        """Drop a blob's row unless a snapshot names it again (it was removed from disk)."""
        with self.transaction() as db:
            db.execute("DELETE FROM blobs WHERE digest=? AND NOT EXISTS "
                       "(SELECT 1 FROM files WHERE digest=?)", (digest, digest))
            db.execute("DELETE FROM keys WHERE digest=? AND NOT EXISTS "
                       "(SELECT 1 FROM files WHERE digest=?)", (digest, digest))

    def total_blob_bytes(self) -> int:
        return int(self.query("SELECT COALESCE(SUM(size), 0) FROM blobs")[0][0])

    def set_verified(self, digest: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE blobs SET verified=? WHERE digest=?", (time.time(), digest))

    def listing_rows(self) -> list[tuple]:
        """One row per (snapshot, file) for ``ls``: id, source, revision, last_used, pinned, digest, size."""
        return self.query(
            "SELECT s.id, s.source, s.revision, s.created, s.last_used, s.pinned, f.digest, f.size "
            "FROM snapshots s LEFT JOIN files f ON f.snapshot = s.id ORDER BY s.source, s.created")

"""The SQLite index of the cache: blobs, snapshots (manifests), refs, pins and access times.

The blobs on disk are the truth for *content*; the index is the truth for *names* (which snapshot
holds which files, which branch points at which revision). Every write is one short transaction in
WAL mode, so many processes can pull and load at once.

>>> import tempfile
>>> ix = Index(Path(tempfile.mkdtemp()) / "index.db")
>>> sid = ix.add_snapshot("hf://org/name", "a" * 40, [FileEntry("w.bin", "b" * 64, 3, None)])
>>> [f.path for f in ix.snapshot_files(sid)]
['w.bin']
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

SCHEMA_VERSION = 1

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
    """One file of a snapshot: its relative path, content digest (sha256 hex), size and origin etag."""

    path: str
    digest: str
    size: int
    etag: str | None = None


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


class Index:
    """A thread-safe handle on ``index.db``. Cheap to open: the schema is created only once."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA foreign_keys=ON")
        for attempt in range(200):  # two processes creating a fresh index at once: switching to WAL
            try:                     # answers "locked" without waiting on the busy timeout; retry
                if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    self._create()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)

    def _create(self) -> None:
        with self._lock:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. a filesystem without shared memory: still correct, slower
                self._db.execute("PRAGMA journal_mode=DELETE")
            with self.transaction() as db:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One immediate (write-locking) transaction, retried by SQLite's busy timeout."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
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
                "INSERT INTO files(snapshot, path, digest, size, etag) VALUES(?,?,?,?,?)",
                [(sid, f.path, f.digest, f.size, f.etag) for f in files],
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
        rows = self.query("SELECT path, digest, size, etag FROM files WHERE snapshot=? ORDER BY path", (sid,))
        return [FileEntry(*r) for r in rows]

    def touch(self, sid: int) -> None:
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

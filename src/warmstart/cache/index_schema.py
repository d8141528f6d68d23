"""Opening ``index.db``: its schema and migrations, WAL or read-only mode, and SQLite errors as one-line
warmstart errors. :mod:`warmstart.cache.index` asks the questions; this module only opens the file.

A home whose ``index.db`` cannot be written is opened read-only (``mode=ro``, which still sees a live
writer's WAL; else ``immutable=1`` when no writer left a WAL to share); a read-only home that never held
an index gets an empty in-memory one.

>>> import sqlite3
>>> db = sqlite3.connect(":memory:", isolation_level=None); migrate(db)
>>> db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
True
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from ..errors import CacheFullError, CacheIndexError, ReadOnlyCacheError, WarmstartError

log = logging.getLogger(__name__)

#: 2: ``files.git_oid`` (the git blob id the origin listed for a file without a sha256);
#: 3: no ``blobs.verified``, ``blobs.tier`` (never read; an older index keeps them, nullable or defaulted,
#: and nothing writes them)
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs(
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created REAL NOT NULL
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


def connect(path: Path, *, timeout: float, read_only: bool) -> sqlite3.Connection:
    """A connection to ``index.db`` in autocommit mode (transactions are explicit); read-only as above."""
    kw = dict(timeout=timeout, isolation_level=None, check_same_thread=False)
    if not read_only:
        return sqlite3.connect(str(path), **kw)
    if not path.exists():  # a read-only home that never held an index: nothing is cached
        db = sqlite3.connect(":memory:", **kw)
        db.executescript(_SCHEMA)
        return db
    uri = path.absolute().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, **kw)
    try:  # sees a live writer's WAL; fails when there is no -shm file and none can be made
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
    log.debug("%s: no writer's WAL to share and the home is read-only; opening it immutable", path)
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, **kw)


def has_git_oid(db: sqlite3.Connection) -> bool:
    """Whether ``files`` has the ``git_oid`` column (an index of schema 1, opened read-only, has not)."""
    return any(r[1] == "git_oid" for r in db.execute("PRAGMA table_info(files)"))


def open_writable(db: sqlite3.Connection) -> None:
    """Bring a writable index to :data:`SCHEMA_VERSION`. Two processes creating a fresh index at once:
    switching to WAL answers "locked" without waiting on the busy timeout, so that is retried."""
    for attempt in range(200):
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                migrate(db)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables (WAL mode where the filesystem allows it) and add what older schemas lack."""
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":  # e.g. a filesystem without shared memory: still correct, slower
        db.execute("PRAGMA journal_mode=DELETE")
    db.execute("BEGIN IMMEDIATE")  # raw: the caller retries "locked", the index translates the rest
    try:
        for stmt in filter(str.strip, _SCHEMA.split(";")):
            db.execute(stmt)
        if not has_git_oid(db):
            db.execute("ALTER TABLE files ADD COLUMN git_oid TEXT")  # from schema 1
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

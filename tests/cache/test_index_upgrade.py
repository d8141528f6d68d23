"""An index.db written by an older warmstart (schema 2, with the columns schema 3 no longer has) keeps
working: it is upgraded in place, records new blobs and snapshots, and still opens read-only."""

from __future__ import annotations

import sqlite3

from warmstart.cache.index import Index, IndexedFile
from warmstart.cache.index_schema import SCHEMA_VERSION

A, C = "a" * 64, "0" * 40
SCHEMA_2 = f"""
CREATE TABLE blobs(digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL, verified REAL,
                   tier TEXT NOT NULL DEFAULT 'disk');
CREATE TABLE snapshots(id INTEGER PRIMARY KEY, source TEXT NOT NULL, revision TEXT NOT NULL, created REAL NOT NULL,
                       last_used REAL NOT NULL, pinned INTEGER NOT NULL DEFAULT 0,
                       kind TEXT NOT NULL DEFAULT 'source', parent INTEGER, meta TEXT, UNIQUE(source, revision));
CREATE TABLE files(snapshot INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE, path TEXT NOT NULL,
                   digest TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT, git_oid TEXT, PRIMARY KEY(snapshot, path));
CREATE TABLE keys(key TEXT PRIMARY KEY, digest TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TABLE refs(source TEXT NOT NULL, name TEXT NOT NULL, revision TEXT NOT NULL, updated REAL NOT NULL,
                  PRIMARY KEY(source, name));
INSERT INTO blobs VALUES('{A}', 3, 1.0, 1.0, 'disk');
INSERT INTO snapshots VALUES(1, 'hf://org/old', '{C}', 1.0, 1.0, 1, 'source', NULL, NULL);
INSERT INTO files VALUES(1, 'w.bin', '{A}', 3, NULL, NULL);
PRAGMA user_version=2;
"""


def test_schema_2_index_is_upgraded_and_keeps_working(tmp_path):
    path = tmp_path / "index.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_2)
    ix = Index(path)
    ix.add_blob("b" * 64, 5)
    assert ix.total_blob_bytes() == 8
    ix.add_snapshot("hf://org/new", "1" * 40, [IndexedFile("x.bin", "b" * 64, 5)], kind="derived", parent=1)
    ix.set_ref("hf://org/new", "main", "1" * 40)
    ix.set_key("k", "b" * 64, 5)
    assert {r.source: r.pinned for r in ix.snapshots()} == {"hf://org/old": 1, "hf://org/new": 0}
    assert ix.find_derived("1" * 40).parent == 1
    assert ix.total_blob_bytes() == 8 and ix.digest_for_key("k") == "b" * 64
    ix.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    ro = Index(path, read_only=True)
    assert [f.path for f in ro.snapshot_files(1)] == ["w.bin"]
    ro.close()

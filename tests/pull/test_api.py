"""warmstart.pull(): refs, revisions, include/exclude, --to views, Snapshot fields, the blob store."""

from __future__ import annotations

import os
import stat

import pytest

import warmstart
from tests.data.minilm import minilm_files
from tests.pull.conftest import (
    MINILM,
    TINY,
    MiB,
    assert_blobs_sound,
    assert_snapshot_matches,
    origin_files,
    sha256,
)


def _hub_snapshot(home, repo_id, commit):
    return home / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


def test_pull_minilm_is_byte_identical_to_the_real_repo(ws_home, hub):
    snap = warmstart.pull(f"hf://{MINILM}")
    commit = hub.repo(MINILM).branches["main"]
    expected = {p: f.read_bytes() for p, f in minilm_files().items()}
    assert snap.revision == commit and len(commit) == 40
    assert snap.ref == f"hf://{MINILM}@{commit}"
    assert snap.path == _hub_snapshot(ws_home, MINILM, commit)
    assert_snapshot_matches(snap.path, expected)
    assert {f.path for f in snap.files} == set(expected)
    for f in snap.files:
        assert f.digest == sha256(expected[f.path]) and f.size == len(expected[f.path])
        assert f.blob == ws_home / "blobs" / "sha256" / f.digest[:2] / f.digest
    total = sum(map(len, expected.values()))
    assert snap.size == total and snap.downloaded == total and snap.from_cache == 0 and snap.seconds > 0
    blobs = assert_blobs_sound(ws_home)
    assert set(blobs) == {sha256(d) for d in expected.values()}


def test_bare_org_name_and_sharded_llama(ws_home, hub):
    snap = warmstart.pull(TINY)
    expected = origin_files(hub, TINY)
    assert len([p for p in expected if p.endswith(".safetensors")]) == 4
    assert snap.revision == hub.repo(TINY).branches["main"]
    assert snap.ref == f"hf://{TINY}@{snap.revision}"
    assert_snapshot_matches(snap.path, expected)
    assert snap.downloaded == sum(map(len, expected.values()))
    # every file of the snapshot view is a link into the blob store
    for f in snap.files:
        assert (snap.path / f.path).is_symlink() and (snap.path / f.path).resolve() == f.blob.resolve()
    assert_blobs_sound(ws_home)
    refs_main = ws_home / "hub" / "models--test-org--tiny-llama" / "refs" / "main"
    assert refs_main.read_text().strip() == snap.revision


def test_second_pull_comes_from_cache(ws_home, hub):
    first = warmstart.pull(TINY)
    again = warmstart.pull(TINY)
    assert again.path == first.path and again.revision == first.revision
    assert again.downloaded == 0 and again.from_cache == first.size


@pytest.fixture
def two_commits(make_repo, hub):
    """A repo with a weights file and a config; a second commit on main changes the config; tagged v1
    on the first, branch ``dev`` with a third config."""
    weights = os.urandom(2 * MiB)
    repo_id = make_repo({"model.safetensors": weights, "config.json": b'{"v": 1}'})
    repo = hub.repo(repo_id)
    first = repo.branches["main"]
    repo.tag("v1", first)
    second = hub.push(repo_id, {"config.json": b'{"v": 2}'})
    repo.create_branch("dev", second)
    third = hub.push(repo_id, {"config.json": b'{"v": 3}'}, branch="dev")
    return repo_id, first, second, third, weights


def test_revisions_commit_tag_branch_and_keyword(ws_home, hub, two_commits):
    repo_id, first, second, third, weights = two_commits
    cases = [
        (f"hf://{repo_id}", {}, second, b'{"v": 2}'),
        (f"hf://{repo_id}@{first}", {}, first, b'{"v": 1}'),
        (f"hf://{repo_id}@v1", {}, first, b'{"v": 1}'),
        (f"hf://{repo_id}@dev", {}, third, b'{"v": 3}'),
        (f"hf://{repo_id}@dev", {"revision": first}, first, b'{"v": 1}'),  # the keyword wins
        (repo_id, {"revision": "dev"}, third, b'{"v": 3}'),
    ]
    for ref, kw, commit, config in cases:
        snap = warmstart.pull(ref, **kw)
        assert snap.revision == commit, (ref, kw)
        assert snap.path.name == commit
        assert (snap.path / "config.json").read_bytes() == config
        assert (snap.path / "model.safetensors").read_bytes() == weights
    repo_dir = ws_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    assert (repo_dir / "refs" / "main").read_text().strip() == second
    assert (repo_dir / "refs" / "dev").read_text().strip() == third
    assert (repo_dir / "refs" / "v1").read_text().strip() == first


def test_include_and_exclude(ws_home, hub):
    expected = origin_files(hub, TINY)
    jsons = {p for p in expected if p.endswith(".json")}
    snap = warmstart.pull(TINY, include="*.json")
    assert {f.path for f in snap.files} == jsons
    assert snap.downloaded == sum(len(expected[p]) for p in jsons)
    assert {p.name for p in snap.path.iterdir()} == jsons
    assert hub.counters.bytes_for("*.safetensors") == 0

    snap = warmstart.pull(TINY, exclude=["*.json", "model-00004-*"])
    assert {f.path for f in snap.files} == {p for p in expected if p.endswith(".safetensors")} - {
        "model-00004-of-00004.safetensors"}

    snap = warmstart.pull(TINY, include=["model-00001-*", "config.json"], exclude="*.safetensors")
    assert [f.path for f in snap.files] == ["config.json"]

    # the rest arrives later: only what is missing moves, and the snapshot is complete
    hub.counters.reset()
    snap = warmstart.pull(TINY)
    assert snap.downloaded == len(expected["model-00004-of-00004.safetensors"])
    assert hub.counters.bytes_total == snap.downloaded
    assert snap.from_cache == sum(map(len, expected.values())) - snap.downloaded
    assert_snapshot_matches(snap.path, expected)


@pytest.mark.parametrize("link", [None, "symlink", "hardlink", "copy"])
def test_to_directory(ws_home, hub, tmp_path, link):
    dest = tmp_path / "out" / "model"
    kw = {} if link is None else {"link": link}
    snap = warmstart.pull(f"hf://{TINY}", to=dest, **kw)
    assert snap.path == dest and snap.cache_path == _hub_snapshot(ws_home, TINY, snap.revision)
    expected = origin_files(hub, TINY)
    assert_snapshot_matches(dest, expected)
    for f in snap.files:
        p = dest / f.path
        st, blob = os.lstat(p), f.blob.stat()
        if link in (None, "symlink"):
            assert stat.S_ISLNK(st.st_mode) and p.resolve() == f.blob.resolve()
        elif link == "hardlink":
            assert stat.S_ISREG(st.st_mode) and (st.st_ino, st.st_dev) == (blob.st_ino, blob.st_dev)
        else:
            assert stat.S_ISREG(st.st_mode) and st.st_ino != blob.st_ino
    # pulling into the same directory again is fine (idempotent)
    again = warmstart.pull(f"hf://{TINY}", to=dest, **kw)
    assert again.downloaded == 0 and again.path == dest
    assert_snapshot_matches(dest, expected)
    if link == "copy":  # a copy is the user's own: changing it never touches the cache, and is not overwritten
        (dest / "config.json").write_bytes(b"changed by the user")
        assert_blobs_sound(ws_home)
        with pytest.raises(FileExistsError, match="config.json"):
            warmstart.pull(f"hf://{TINY}", to=dest, **kw)
        assert (dest / "config.json").read_bytes() == b"changed by the user"


def test_blobs_are_stored_once_across_repos_and_revisions(ws_home, hub, make_repo):
    weights = os.urandom(3 * MiB)
    a = make_repo({"model.safetensors": weights, "config.json": b'{"name": "a"}'})
    b = make_repo({"model.safetensors": weights, "config.json": b'{"name": "b"}', "extra.txt": b"x"})
    snap_a = warmstart.pull(a)
    hub.counters.reset()
    snap_b = warmstart.pull(b)
    assert hub.counters.bytes_for("*model.safetensors") == 0  # shared content is not fetched again
    assert snap_b.downloaded == len(b'{"name": "b"}') + 1
    hub.push(a, {"config.json": b'{"name": "a2"}'})
    snap_a2 = warmstart.pull(a)
    assert snap_a2.revision != snap_a.revision and snap_a2.downloaded == len(b'{"name": "a2"}')
    blobs = assert_blobs_sound(ws_home)
    digests = {f.digest for s in (snap_a, snap_b, snap_a2) for f in s.files}
    assert set(blobs) == digests  # one file per distinct content
    w = sha256(weights)
    assert {f.blob for s in (snap_a, snap_b, snap_a2) for f in s.files if f.path == "model.safetensors"} == {
        blobs[w]}
    for s in (snap_a, snap_b, snap_a2):
        assert (s.path / "model.safetensors").resolve() == blobs[w].resolve()
    # the old revision's view still shows the old config
    assert (snap_a.path / "config.json").read_bytes() == b'{"name": "a"}'


def test_copy_view_is_updated_to_the_new_revision(ws_home, hub, make_repo, tmp_path):
    repo_id = make_repo({"config.json": b'{"v": 1}', "model.safetensors": os.urandom(MiB)})
    dest = tmp_path / "copy"
    warmstart.pull(repo_id, to=dest, link="copy")
    hub.push(repo_id, {"config.json": b'{"v": 2}'})  # same size, new content
    snap = warmstart.pull(repo_id, to=dest, link="copy")
    assert (snap.path / "config.json").read_bytes() == b'{"v": 2}'

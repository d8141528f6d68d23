"""Findings 1, 2, 3 and 12 of the hostile-origin review: values from an origin, a listing or a revision
never name a path outside the cache home, and views always resolve to the blobs their snapshots record.

Every test pulls from the malicious origin (``evil_hub``), then runs ``rm`` and ``gc``, and the
``outside`` guard asserts that nothing outside the cache home changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

import warmstart
from warmstart.cache.index import IndexedFile
from warmstart.cache.views import plain_view
from warmstart.errors import (
    InUseError,
    NotFoundError,
    RefError,
    TransferError,
    UnsafePathError,
    WarmstartError,
)

from .conftest import EvilHub, Outside, random_commit

UP = "../../../../"  # from <home>/hub/models--org--name/snapshots/ up to tmp_path


def weights(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return save({"w": rng.standard_normal((4, 8)).astype(np.float32)})


def pull_rm_gc(ref: str, **kw) -> Exception | None:
    """Pull (an error is returned, and must be a WarmstartError), then rm the model and gc everything."""
    err = None
    try:
        warmstart.pull(ref, **kw)
    except WarmstartError as exc:
        err = exc
    m = warmstart.cache()
    try:
        m.rm(ref.partition("@")[0])
    except (NotFoundError, InUseError):  # InUseError: this process loaded it (its lease lasts the process)
        pass
    m.gc(max_size=1)
    m.gc()
    return err


def cli(args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warmstart.cli", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_failure(r: subprocess.CompletedProcess, code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# --------------------------------------------------------------------------- finding 1: the commit
def _commits(outside: Outside) -> list[str]:
    return [str(outside.sentinel / "victim"), UP + "outside/victim", "../" * 12 + str(outside.sentinel)[1:],
            "a" * 39 + "/", "A" * 40, "a" * 40 + "\n", "a" * 20 + "\x00" + "a" * 19, ".", "..", "x" * 41]


@pytest.mark.parametrize("which", range(10))
def test_a_commit_that_is_not_40_hex_is_refused(evil_hub: EvilHub, outside: Outside, which: int):
    bad = _commits(outside)[which]
    info = evil_hub.model("evil/model", {"config.json": b'{"evil": 1}\n', "model.safetensors": weights(9)})
    info["sha"] = bad
    err = pull_rm_gc("evil/model")
    assert isinstance(err, TransferError), err
    assert "invalid commit" in str(err) and "HF_ENDPOINT" in str(err) and "\n" not in str(err)
    assert not (outside.home / "hub" / "models--evil--model" / "snapshots").exists()
    outside.assert_unchanged()


def test_cli_reports_an_absolute_commit_in_one_line(evil_hub: EvilHub, outside: Outside):
    info = evil_hub.model("evil/model", {"config.json": b"{}"})
    info["sha"] = str(outside.sentinel / "victim")
    line = assert_one_line_failure(cli(["pull", "evil/model"]))
    assert "invalid commit" in line
    for args in (["rm", "evil/model"], ["gc", "--max-size", "1"], ["gc"]):
        r = cli(args)
        assert "Traceback" not in r.stderr, r.stderr
    outside.assert_unchanged()


# ----------------------------------------------------------------------------- finding 2: the blobId
@pytest.mark.parametrize("blob_id", ["ABS", "../../../../outside/config.json", "../x", "a" * 39, "g" * 40,
                                     "a" * 40 + "/../../x", 12345, ["a"]])
def test_a_blob_id_that_is_not_a_git_object_id_is_refused(evil_hub: EvilHub, outside: Outside, blob_id):
    info = evil_hub.model("evil/model", {"config.json": b'{"evil": 1}\n'})
    info["siblings"][0]["blobId"] = str(outside.sentinel / "config.json") if blob_id == "ABS" else blob_id
    err = pull_rm_gc("evil/model")
    assert isinstance(err, TransferError) and "blobId" in str(err), err
    outside.assert_unchanged()


def test_a_well_formed_but_wrong_blob_id_is_checked_at_any_length(evil_hub: EvilHub, outside: Outside):
    """The git object id is checked for every non-LFS file, not only for 40-digit ids."""
    from warmstart.errors import IntegrityError

    for oid in ("0" * 40, "0" * 64):
        info = evil_hub.model("evil/model", {"config.json": b'{"evil": 1}\n'})
        info["siblings"][0]["blobId"] = oid
        err = pull_rm_gc("evil/model")
        assert isinstance(err, IntegrityError), (oid, err)
    outside.assert_unchanged()


def test_a_sha256_git_object_id_is_accepted(evil_hub: EvilHub, outside: Outside):
    data = b'{"sha256 repo": 1}\n'
    info = evil_hub.model("evil/model", {"config.json": data})
    info["siblings"][0]["blobId"] = hashlib.sha256(b"blob %d\0" % len(data) + data).hexdigest()
    snap = warmstart.pull("evil/model")
    assert (snap.path / "config.json").read_bytes() == data
    assert pull_rm_gc("evil/model") is None
    outside.assert_unchanged()


@pytest.mark.parametrize("mutate,says", [("siblings-dict", "siblings"), ("siblings-str", "siblings"),
                                         ("entry-list", "not an object"), ("rfilename-int", "rfilename"),
                                         ("lfs-hex", "sha256"), ("lfs-list", "lfs"), ("size-str", "size"),
                                         ("size-negative", "size"), ("size-bool", "size"), ("size-huge", "size")])
def test_malformed_listings_are_one_line_errors(evil_hub: EvilHub, outside: Outside, mutate: str, says: str):
    info = evil_hub.model("evil/model", {"config.json": b"{}", "model.safetensors": weights(1)})
    s = info["siblings"]
    {"siblings-dict": lambda: info.update(siblings={"rfilename": "x"}),
     "siblings-str": lambda: info.update(siblings="config.json"),
     "entry-list": lambda: s.__setitem__(0, ["config.json"]),
     "rfilename-int": lambda: s[0].__setitem__("rfilename", 7),
     "lfs-hex": lambda: s[1]["lfs"].__setitem__("sha256", "z" * 64),
     "lfs-list": lambda: s[1].__setitem__("lfs", ["sha256"]),
     "size-str": lambda: s[0].__setitem__("size", "2"),
     "size-negative": lambda: s[0].__setitem__("size", -2),
     "size-bool": lambda: s[0].__setitem__("size", True),
     "size-huge": lambda: s[1].__setitem__("size", 2**80)}[mutate]()
    err = pull_rm_gc("evil/model")
    assert isinstance(err, TransferError) and says in str(err) and "\n" not in str(err), err
    outside.assert_unchanged()


@pytest.mark.parametrize("name", ["ABS", "../../../../outside/config.json", "a/../../x", "a\x00b", "a\\..\\b",
                                  "a//b", "./a", "a/"])
def test_file_names_that_escape_are_refused(evil_hub: EvilHub, outside: Outside, name: str):
    info = evil_hub.model("evil/model", {"config.json": b"{}"})
    info["siblings"][0]["rfilename"] = str(outside.sentinel / "config.json") if name == "ABS" else name
    err = pull_rm_gc("evil/model")
    assert isinstance(err, UnsafePathError), err
    outside.assert_unchanged()


def test_a_file_where_another_needs_a_directory_is_refused(evil_hub: EvilHub, outside: Outside):
    evil_hub.model("evil/model", {"a": b"1", "a/b": b"2"})
    assert isinstance(pull_rm_gc("evil/model"), UnsafePathError)
    outside.assert_unchanged()


# ------------------------------------------------------------- finding 3: one model poisoning another
def _good(evil_hub: EvilHub) -> tuple[bytes, str]:
    """good/model: config + non-LFS tokenizer + LFS weights, served truthfully."""
    good = weights(1)
    evil_hub.model("good/model", {"config.json": b'{"good": true}\n', "model.safetensors": good})
    return good, hashlib.sha256(good).hexdigest()


def test_an_evil_model_cannot_repoint_another_models_view(evil_hub: EvilHub, outside: Outside):
    good, good_sha = _good(evil_hub)
    warmstart.pull("good/model")
    evil = weights(666)
    info = evil_hub.model("evil/model", {"model.safetensors": evil, "config.json": b'{"evil": 1}\n'})
    # the attack: a non-LFS entry whose blobId climbs into good/model's blobs/ (and one absolute)
    del info["siblings"][0]["lfs"]
    info["siblings"][0]["blobId"] = f"../../models--good--model/blobs/{good_sha}"
    info["siblings"][1]["blobId"] = str(outside.home / "hub" / "models--good--model" / "blobs" / good_sha)
    assert isinstance(pull_rm_gc("evil/model"), TransferError)
    got = warmstart.load("good/model")["w"].numpy()
    assert got.tobytes() == np.frombuffer(good[-128:], dtype=np.float32).tobytes()
    assert warmstart.cache().verify().ok
    pull_rm_gc("good/model")
    outside.assert_unchanged()


def _poison(home: Path, evil: bytes) -> str:
    """Do to good/model's view what the unchecked blobId did: its blobs/<etag> link now points at a blob
    holding the attacker's bytes."""
    from warmstart.cache.home import Cache

    c = Cache(home)
    digest = c.store.put_bytes(evil)
    links = home / "hub" / "models--good--model" / "blobs"
    [link] = [p for p in links.iterdir() if len(p.name) == 64]
    os.unlink(link)
    os.symlink(os.path.relpath(c.store.path(digest), links), link)
    return digest


def test_a_poisoned_view_is_repaired_by_a_pull_and_load_returns_the_good_bytes(evil_hub, outside):
    good, good_sha = _good(evil_hub)
    snap = warmstart.pull("good/model")
    for ref in (f"good/model@{snap.revision}", "good/model"):  # a cached commit (no request), a branch
        _poison(outside.home, weights(666))
        assert (snap.path / "model.safetensors").read_bytes() != good  # the damage is real
        got = warmstart.load(ref)["w"]  # pulls first: the view is repaired before anything is read
        assert (snap.path / "model.safetensors").read_bytes() == good
        assert got.numpy().tobytes() == np.frombuffer(good[-128:], dtype=np.float32).tobytes()
    assert warmstart.cache().verify().ok
    pull_rm_gc("good/model")
    outside.assert_unchanged()


def test_verify_reports_a_poisoned_view_and_repair_rebuilds_it(evil_hub, outside):
    good, good_sha = _good(evil_hub)
    snap = warmstart.pull("good/model")
    _poison(outside.home, weights(666))
    rep = warmstart.cache().verify()
    assert not rep.ok and rep.views == (f"hf://good/model@{snap.revision}:model.safetensors",), rep
    line = assert_one_line_failure(cli(["verify"]))
    assert "view" in line and "--repair" in line
    evil_hub.counters.reset()
    r = cli(["verify", "--repair"])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "wrong view" in r.stdout and "rebuilt" in r.stdout
    assert evil_hub.counters.requests_for("*") == 0  # rebuilt from the local blobs: no download
    assert (snap.path / "model.safetensors").read_bytes() == good
    assert warmstart.cache().verify().ok
    pull_rm_gc("good/model")
    outside.assert_unchanged()


def test_verify_repair_rebuilds_a_view_with_a_directory_or_file_in_the_way(evil_hub, outside):
    _good(evil_hub)
    snap = warmstart.pull("good/model")
    os.unlink(snap.path / "config.json")
    (snap.path / "config.json").mkdir()
    (snap.path / "config.json" / "x").write_text("planted")
    os.unlink(snap.path / "model.safetensors")
    (snap.path / "model.safetensors").write_bytes(b"planted")
    m = warmstart.cache()
    assert len(m.verify().views) == 2
    rep = m.verify(repair=True)
    assert rep.ok and len(rep.views_repaired) == 2
    assert m.verify().ok and not m.verify().views
    outside.assert_unchanged()


def test_verify_checks_source_views_too(tmp_path, outside):
    src = tmp_path / "local-model"
    outside.allow(src)
    src.mkdir()
    (src / "config.json").write_bytes(b'{"local": 1}\n')
    (src / "w.bin").write_bytes(b"w" * 100)
    snap = warmstart.pull(str(src))
    m = warmstart.cache()
    other = m.store.put_bytes(b"not the file")
    view = snap.cache_path / "w.bin"
    os.unlink(view)
    os.symlink(m.store.path(other), view)
    rep = m.verify()
    assert not rep.ok and [v.rsplit(":", 1)[1] for v in rep.views] == ["w.bin"]
    assert m.verify(repair=True).ok
    assert view.read_bytes() == b"w" * 100
    pull_rm_gc(str(src))
    outside.assert_unchanged()


# -------------------------------------------------- records written before names were checked: rm, gc
def test_rm_and_gc_never_follow_a_recorded_escaping_revision_or_etag(evil_hub, outside):
    """An index written by an unchecked pull (revision and etag that climb out) is cleaned up without
    touching what they name."""
    from warmstart.cache.home import Cache

    c = Cache(outside.home)
    digest = c.store.put_bytes(b"x" * 10)
    for source, rev, etag in [("hf://evil/model", UP + "outside/victim", UP + "outside/config.json"),
                              ("hf://evil/model", str(outside.sentinel / "victim"), str(outside.sentinel)),
                              ("s3://bucket/p", "../../../../outside", None)]:
        c.index.add_snapshot(source, rev, [IndexedFile("keep.txt", digest, 10, etag)])
    c.close()
    m = warmstart.cache()
    m.verify()  # reports, never touches
    m.verify(repair=True)
    m.rm("hf://evil/model")
    m.gc(max_size=1)
    m.gc()
    assert not m.index.snapshots()
    outside.assert_unchanged()


# ------------------------------------------------------------------------------ --to and the helper
def test_to_directory_files_stay_inside_it(tmp_path, hostile_home, outside):
    from warmstart.cache.home import Cache

    c = Cache(hostile_home)
    d = c.store.put_bytes(b"payload")
    dest = tmp_path / "dest"
    outside.allow(dest)
    for bad in ("../outside/config.json", str(outside.sentinel / "config.json"), "a/../../x"):
        with pytest.raises(UnsafePathError):
            plain_view(c.layout, dest, [IndexedFile(bad, d, 7)], mode="copy")
    dest.mkdir(exist_ok=True)
    os.symlink(outside.sentinel / "victim", dest / "sub")  # a link inside --to that leads out of it
    with pytest.raises(UnsafePathError):
        plain_view(c.layout, dest, [IndexedFile("sub/keep.txt", d, 7)], mode="copy")
    outside.assert_unchanged()


def test_a_hub_repo_folder_that_is_a_link_out_is_not_followed(evil_hub, outside):
    info = evil_hub.model("evil/model", {"config.json": b"{}"})
    hub = outside.home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    os.symlink(outside.sentinel / "victim", hub / "models--evil--model")
    err = pull_rm_gc("evil/model")
    assert isinstance(err, UnsafePathError), err
    assert info["sha"]
    outside.assert_unchanged()


# -------------------------------------------------------------------- finding 12: --revision, revision=
BAD_REVISIONS = [UP + "outside/x", "main/../../../../../outside/x", "/abs", "sha256:/../../x", "a//b", "a/",
                 "a\x00b", "a\nb", "./x"]


@pytest.mark.parametrize("rev", BAD_REVISIONS)
def test_revision_gets_the_same_checks_as_at_rev(evil_hub, outside, rev):
    info = evil_hub.model("evil/model", {"config.json": b"{}"})
    with pytest.raises(RefError):
        warmstart.pull("evil/model", revision=rev)
    with pytest.raises(RefError):
        warmstart.pull(f"hf://evil/model@{rev}")
    with pytest.raises(RefError):
        warmstart.cache().rm("evil/model", rev)
    assert info["sha"]
    pull_rm_gc("evil/model")
    outside.assert_unchanged()


def test_cli_revision_with_dotdot_is_a_usage_error(evil_hub, outside):
    evil_hub.model("evil/model", {"config.json": b"{}"})
    line = assert_one_line_failure(cli(["pull", "evil/model", "--revision", "main/../../../../../outside/x"]),
                                  code=2)
    assert "bad revision" in line
    assert not list((outside.home / "hub").rglob("refs"))
    outside.assert_unchanged()


def test_branch_names_with_slashes_still_work(evil_hub, outside):
    commit = random_commit()
    evil_hub.model("good/model", {"config.json": b'{"pr": 1}\n'}, commit=commit)
    snap = warmstart.pull("good/model", revision="refs/pr/1")
    assert snap.revision == commit
    assert (outside.home / "hub" / "models--good--model" / "refs" / "refs" / "pr" / "1").read_text() == commit
    assert pull_rm_gc("good/model") is None
    assert not (outside.home / "hub" / "models--good--model").exists()
    outside.assert_unchanged()

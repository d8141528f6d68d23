"""Fuzzing the Hub listing: whatever the revision answer holds (commits, file names, sizes, blob ids, LFS
entries, wrong types), a pull either succeeds or raises a WarmstartError, and neither it nor the
``rm``/``gc``/``verify`` after it changes anything outside the cache home."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import warmstart
from warmstart.config import Settings
from warmstart.errors import InUseError, NotFoundError, WarmstartError

from .conftest import EvilHub, random_commit, tree_state

#: replaced by the sentinel directory's absolute path when the answer is served. Every absolute value aims
#: there, never at "/" or a system path: should a check ever break, the damage stays in the test's tree.
OUT = "@OUT@"
REPO = "evil/model"

HOSTILE_NAMES = [f"{OUT}/config.json", f"{OUT}/victim", "../../../../outside/config.json", "../x", "a/../../b",
                 "a/./b", "a//b", f"{OUT}/../../x", "a\x00b", "a\nb", "a\\..\\b", "C:x", ".", "..", "", " ", "~",
                 "x" * 256, "d/" * 40 + "f", "é/ü.json", "sub/\u202etxt.exe", "\ud800.json", "a%2F..%2Fb", "a?b#c"]
HOSTILE_STRINGS = [f"{OUT}", f"{OUT}/victim", "../../../../outside", "../..", "..", ".", "", "a" * 40 + "\n",
                   "a" * 20 + "\x00" + "a" * 19, "A" * 40, "0" * 39, "0" * 41, "0" * 64, "g" * 40, "sha256:" + "0" * 64]

def tame(text: str) -> str:
    """Free text from hypothesis, never starting at the root (see OUT)."""
    return text.lstrip("/") or "x"


def often(good, bad, times: int = 3):
    """``good`` about ``times`` times as often as ``bad``: a hostile value among sane ones reaches further."""
    return st.sampled_from([False] * times + [True]).flatmap(lambda hostile: bad if hostile else good)


safe_names = st.sampled_from(["config.json", "sub/tokenizer.json", "model.safetensors", "w.bin", "a/b/c.txt"])
names = often(safe_names, st.one_of(st.sampled_from(HOSTILE_NAMES),
                                    st.text(st.sampled_from("ab./\\\x00\n é"), min_size=1, max_size=8).map(tame)), 2)
commits = often(st.builds(random_commit), st.one_of(st.sampled_from(HOSTILE_STRINGS), st.none(), st.integers(),
                                                    st.lists(st.integers(), max_size=2),
                                                    st.text(max_size=45).map(lambda t: t.replace("/", "-"))))
sizes = often(st.just("honest"), st.one_of(st.none(), st.integers(-3, 40), st.sampled_from([2**62, 10**20, 2**64]),
                                           st.booleans(), st.floats(allow_nan=True), st.text(max_size=3)))
blob_ids = often(st.just("honest"), st.one_of(st.none(), st.sampled_from(HOSTILE_STRINGS + HOSTILE_NAMES),
                                              st.from_regex(r"[0-9a-f]{40}|[0-9a-f]{64}", fullmatch=True),
                                              st.integers(), st.text(max_size=8).map(tame)))
lfs_sha = often(st.just("honest"), st.one_of(st.sampled_from(HOSTILE_STRINGS), st.integers(),
                                             st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True)))
lfs = often(st.none(), st.one_of(st.just("honest"),
                                 st.fixed_dictionaries({}, optional={"sha256": lfs_sha, "size": sizes}),
                                 st.lists(st.integers(), max_size=2), st.text(max_size=4), st.integers()), 1)


@st.composite
def entries(draw):
    name = draw(often(names, st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=2), max_size=2)), 6))
    entry: dict = {"rfilename": name}
    for key, strat in (("size", sizes), ("blobId", blob_ids), ("lfs", lfs)):
        if draw(often(st.just(True), st.just(False))):
            entry[key] = draw(strat)
    return entry


answers = st.fixed_dictionaries(
    {"sha": commits, "siblings": often(st.lists(often(entries(), st.one_of(st.integers(), st.text(max_size=3),
                                                                      st.lists(st.integers(), max_size=1)), 8),
                                         max_size=4),
                                st.one_of(st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                                          st.text(max_size=5), st.integers(), st.none()), 6)},
)


def _fill(value, out: str):
    """Replace the OUT placeholder in strings (recursively)."""
    if isinstance(value, str):
        return value.replace(OUT, out)
    if isinstance(value, list):
        return [_fill(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, out) for k, v in value.items()}
    return value


def _serve(evil: EvilHub, answer: dict) -> None:
    """Serve bytes for every string file name, and make "honest" sizes, blob ids and LFS entries true."""
    for i, s in enumerate(answer.get("siblings") if isinstance(answer.get("siblings"), list) else []):
        if not isinstance(s, dict):
            continue
        data = b"file %d of the fuzzed model\n" % i
        if isinstance(s.get("rfilename"), str):
            evil.serve(REPO, s["rfilename"], data)
        if s.get("size") == "honest":
            s["size"] = len(data)
        if s.get("blobId") == "honest":
            s["blobId"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if s.get("lfs") == "honest":
            s["lfs"] = {"sha256": "honest", "size": len(data)}
        if isinstance(s.get("lfs"), dict):
            if s["lfs"].get("sha256") == "honest":
                s["lfs"]["sha256"] = hashlib.sha256(data).hexdigest()
            if s["lfs"].get("size") == "honest":
                s["lfs"]["size"] = len(data)
    evil.set_info(REPO, answer)


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fuzz")
    victim = base / "outside" / "victim"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_bytes(b"the user's file\n")
    (base / "outside" / "config.json").write_bytes(b'{"user": true}\n')
    return base


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(answer=answers)
def test_any_listing_leaves_the_outside_alone(evil_hub: EvilHub, fuzz_base: Path, answer: dict):
    evil_hub.reset()
    answer = _fill(answer, str(fuzz_base / "outside"))
    _serve(evil_hub, answer)
    home = fuzz_base / f"home-{uuid.uuid4().hex[:8]}"
    before = tree_state(fuzz_base, skip=(home,))
    env = {"WARMSTART_HOME": str(home), "HF_ENDPOINT": evil_hub.endpoint, "WARMSTART_QUIET": "1",
           "HF_HOME": str(fuzz_base / "hf-home"), "WARMSTART_MAX_CONNECTIONS": "4", "WARMSTART_MIN_CONNECTIONS": "1"}
    s = Settings.from_env(env)
    try:
        try:
            warmstart.pull(REPO, settings=s)
            event("pulled")
        except WarmstartError as exc:  # anything else (a raw OSError, a TypeError…) fails the test
            event(type(exc).__name__)
        m = warmstart.cache(settings=s)
        m.verify(repair=True)
        try:
            m.rm(REPO)
        except (NotFoundError, InUseError):
            pass
        m.gc(max_size=1)
        m.gc()
        m.close()
        after = tree_state(fuzz_base, skip=(home,))
        assert after == before, sorted(set(after.items()) ^ set(before.items()))[:10]
    finally:
        shutil.rmtree(home, ignore_errors=True)  # rmtree follows no link: only the home goes

"""One suite every source backend runs (see conftest.BACKENDS): listing, ranges, resume, digest
mismatch, not found, auth failure and names that try to escape the snapshot."""

from __future__ import annotations

import os
import random

import pytest

import warmstart
from warmstart.config import Settings
from warmstart.errors import GatedRepoError, IntegrityError, NotFoundError, UnsafePathError
from warmstart.pipeline import PullOptions, pull
from warmstart.sources.registry import backend_for, parse, source_for

from .conftest import uid

BIG = 6 << 20  # above the engine's single-stream threshold: fetched in ranges


def model(single: bool = False) -> dict[str, bytes]:
    rng = random.Random(uid())
    big = {f"w-{uid()}.bin": rng.randbytes(BIG)}
    if single:
        return big
    return {**big, "config.json": b'{"hidden_size": 8}\n', "tok/vocab.txt": rng.randbytes(3000)}


def big_of(files: dict[str, bytes]) -> tuple[str, bytes]:
    return max(files.items(), key=lambda kv: len(kv[1]))


def blobs(home) -> list[str]:
    return [p.name for p in (home / "blobs").rglob("*") if p.is_file() or p.is_symlink()]


def test_listing_and_pull(case, home):
    files = model(case.single_file)
    ref = case.make(files)
    listing = source_for(parse(ref), Settings.from_env()).resolve(parse(ref))
    assert {f.path: f.size for f in listing.files}.keys() >= {p.rsplit("/", 1)[-1] if case.single_file else p
                                                              for p in files}
    snap = warmstart.pull(ref)
    got = {f.path: f.blob.read_bytes() for f in snap.files}
    want = {(p.rsplit("/", 1)[-1] if case.single_file else p): d for p, d in files.items()}
    assert got == want
    for f in snap.files:
        assert (snap.path / f.path).read_bytes() == want[f.path]
    if case.origin is not None:  # a second pull moves no bytes
        case.origin.counters.reset()
        again = warmstart.pull(ref)
        assert again.downloaded == 0 and case.origin.counters.bytes_for(case.glob(*big_of(files))) == 0


def test_ref_grammar(case, home):
    """The source that declares the scheme parses, prints, keys and pins the ref: printing round-trips,
    the key has no revision, and the ref of a pulled snapshot is pinned where the source can pin."""
    ref = parse(case.make(model(case.single_file)))
    assert ref.scheme in backend_for(ref.scheme).schemes and ref.grammar is backend_for(ref.scheme)
    assert parse(str(ref)) == ref and str(parse(str(ref))) == str(ref)
    assert ref.key == str(ref.with_revision(None)) and not ref.pinned
    snap = warmstart.pull(str(ref))
    again = parse(snap.ref)
    assert again.key == ref.key and again.pinned is case.pins, (snap.ref, case.pins)
    if case.pins:
        assert again.revision == snap.revision and ref.default_revision != snap.revision


def test_ranges(case, home):
    if case.origin is None:
        pytest.skip("local paths are read directly, not over ranges")
    files = model(case.single_file)
    ref = case.make(files)
    warmstart.pull(ref)
    name, data = big_of(files)
    assert case.origin.counters.requests_for(case.glob(name, data), "GET") >= 2


class _Interrupt:
    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def start(self, total_bytes, total_files):
        pass

    def advance(self, n):
        self.seen += n
        if self.seen > self.after:
            raise KeyboardInterrupt("simulated interruption")

    def file_done(self):
        pass


def test_resume_after_interruption(case, home):
    if case.origin is None:
        pytest.skip("local imports have nothing to resume")
    from tests.servers.shaping import Link

    files = model(case.single_file)
    ref = case.make(files)
    name, data = big_of(files)
    case.origin.link = Link(per_conn_bps=8e6)
    settings = Settings.from_env()
    with pytest.raises(KeyboardInterrupt):
        pull(parse(ref), settings, PullOptions(progress=_Interrupt(2 << 20)))
    case.origin.link = None
    first = case.origin.counters.bytes_for(case.glob(name, data))
    case.origin.counters.reset()
    snap = pull(parse(ref), settings, PullOptions())
    second = case.origin.counters.bytes_for(case.glob(name, data))
    gets = case.origin.counters.requests_for(case.glob(name, data), "GET")
    if case.resumes:
        assert first > 0 and second < len(data), (first, second)
    else:  # the origin ignores Range: nothing can resume, so the file is fetched once more, whole, once
        assert first > 0 and len(data) <= second < 2 * len(data) and gets <= 4, (first, second, gets)
    assert {f.blob.read_bytes() for f in snap.files} >= {data}


def test_digest_mismatch(case, home):
    if not case.knows_sha256:
        pytest.skip(f"{case.name} publishes no sha256 to check against (computed while downloading)")
    files = model()
    ref = case.make(files)
    name, data = big_of(files)
    case.origin.faults.add("corrupt", path_glob=case.glob(name, data), times=None, after_bytes=100)
    with pytest.raises(IntegrityError):
        warmstart.pull(ref)
    import hashlib
    assert hashlib.sha256(data).hexdigest() not in blobs(home)


def test_not_found(case, home):
    with pytest.raises(NotFoundError):
        warmstart.pull(case.missing_ref)


def test_auth_failure(case, home, request, monkeypatch):
    if case.name == "hf":
        with pytest.raises(NotFoundError, match="private"):
            warmstart.pull("hf://test-org/private")
    elif case.name == "s3":
        ref = case.make({"a.bin": b"x"})
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(k)
        with pytest.raises(GatedRepoError, match="credentials"):
            warmstart.pull(ref)
    elif case.name == "oci":
        reg = request.getfixturevalue("auth_registry")
        with pytest.raises(GatedRepoError):
            warmstart.pull(f"oci://{reg.host}/models/private:v1")
    elif case.name == "http":
        ref = case.make({"a.bin": b"x"})
        case.origin.faults.add("status5xx", status=403, times=None)
        with pytest.raises(GatedRepoError, match="403"):
            warmstart.pull(ref)
    else:  # local paths: the filesystem's permissions, checked as an unprivileged user (root ignores them)
        user = request.getfixturevalue("unprivileged")
        private = user.root / "private-model"
        private.mkdir(mode=0o700)  # owned by root
        (private / "a.bin").write_bytes(b"x")
        p = user.run(["pull", str(private)])
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "ermission" in p.stderr, p.stderr
        assert not list((user.root / "home").rglob("blobs/sha256/*/*"))
        private.chmod(0o755)  # a readable directory holding an unreadable file
        (private / "a.bin").chmod(0o600)
        p = user.run(["pull", str(private)])
        assert p.returncode == 1 and "a.bin: permission denied" in p.stderr, p.stderr


def test_escaping_names(case, home, request):
    if case.name == "s3":
        ref = case.make({"../../escape.bin": b"x", "ok.bin": b"y"})
        with pytest.raises(UnsafePathError):
            warmstart.pull(ref)
    elif case.name == "oci":
        from tests.servers.registry import push_modelpack

        reg, proxy = request.getfixturevalue("registry")
        push_modelpack(reg.endpoint, "models/evil", "v1", {"a": b"z"}, raw_names={"a": "../../etc/x"})
        with pytest.raises(UnsafePathError):
            warmstart.pull(f"oci://{proxy.host}/models/evil:v1")
        for tar in ({"../up.json": b"{}"}, {"link:weights.bin": b""}):
            push_modelpack(reg.endpoint, "models/eviltar", "v1", {}, tar_files=tar)
            with pytest.raises(UnsafePathError):
                warmstart.pull(f"oci://{proxy.host}/models/eviltar:v1")
        assert not [p for p in (home / "snapshots").rglob("*") if p.is_file()]
    elif case.name == "http":
        from warmstart.sources.http import file_name

        assert file_name("http://h/a/%2e%2e") == "index" and file_name("http://h/x/..%2fy") == "y"
    elif case.name == "local":
        root = case.make({"a.bin": b"x"})
        os.symlink("/etc/hostname", os.path.join(root, "outside"))
        snap = warmstart.pull(root)  # links are followed into the cache; names stay inside
        assert all(".." not in f.path for f in snap.files)
    else:
        from warmstart.sources.base import safe_relpath

        with pytest.raises(UnsafePathError):
            safe_relpath("../x")

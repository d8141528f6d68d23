"""The test origins are faithful: huggingface_hub's own client works against the test Hub, and the
shaping, faults and counters do what the other tests rely on."""

from __future__ import annotations

import hashlib
import http.client
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.data.minilm import REPO_ID as MINILM
from tests.data.minilm import minilm_files
from tests.data.synth import make_llama

TINY = "test-org/tiny-llama"


def fetch(url: str, method: str = "GET", headers: dict | None = None, conn=None):
    """(status, headers, body) for one request, without following redirects."""
    u = urlsplit(url)
    c = conn or http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, r.headers, body


def same_tree(src: dict[str, Path], snapshot: str) -> None:
    got = sorted(p.relative_to(snapshot).as_posix() for p in Path(snapshot).rglob("*") if p.is_file())
    assert got == sorted(src)
    for rel, path in src.items():
        assert (Path(snapshot) / rel).read_bytes() == path.read_bytes(), rel


# ------------------------------------------------------------------------- huggingface_hub against it


def test_snapshot_download_minilm_is_byte_identical(hub, tmp_path):
    snap = snapshot_download(MINILM, endpoint=hub.endpoint, cache_dir=tmp_path)
    same_tree(minilm_files(), snap)
    size = minilm_files()["model.safetensors"].stat().st_size
    assert hub.counters.bytes_for("/blobs/*") == size  # the LFS file came through the CDN, once
    assert hub.counters.requests_for("/api/models/*", "GET") == 2  # revision + tree


def test_snapshot_download_sharded_repo(hub, tiny_llama_files, tmp_path):
    snap = snapshot_download(TINY, endpoint=hub.endpoint, cache_dir=tmp_path)
    same_tree(tiny_llama_files, snap)
    assert {p.name for p in Path(snap).iterdir()} >= {"model.safetensors.index.json", "config.json",
                                                     "model-00004-of-00004.safetensors"}


def test_model_info_and_tree_metadata(hub, tiny_llama_files):
    api = HfApi(endpoint=hub.endpoint)
    info = api.model_info(MINILM, files_metadata=True)
    assert len(info.sha) == 40
    sib = {s.rfilename: s for s in info.siblings}
    st = minilm_files()["model.safetensors"]
    assert sib["model.safetensors"].lfs.sha256 == hashlib.sha256(st.read_bytes()).hexdigest()
    assert sib["model.safetensors"].size == st.stat().st_size
    data = minilm_files()["config.json"].read_bytes()
    assert sib["config.json"].lfs is None
    assert sib["config.json"].blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    hub.tree_page_size = 2  # pagination through the Link header
    try:
        entries = list(api.list_repo_tree(MINILM, recursive=True, revision=info.sha))
    finally:
        hub.tree_page_size = 1000
    files = {e.path: e for e in entries if hasattr(e, "blob_id")}
    assert sorted(files) == sorted(minilm_files())
    assert [e.path for e in entries if not hasattr(e, "blob_id")] == ["1_Pooling"]
    assert files["model.safetensors"].lfs.sha256 == sib["model.safetensors"].lfs.sha256
    top = [e.path for e in api.list_repo_tree(MINILM)]
    assert "1_Pooling/config.json" not in top and "1_Pooling" in top
    assert [e.path for e in api.list_repo_tree(MINILM, path_in_repo="1_Pooling")] == ["1_Pooling/config.json"]


def test_auth_and_not_found_errors(hub, tmp_path):
    ep = hub.endpoint
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/private", "config.json", endpoint=ep, cache_dir=tmp_path, token=False)
    path = hf_hub_download("test-org/private", "config.json", endpoint=ep, cache_dir=tmp_path, token="hf_test_token")
    assert Path(path).read_bytes() == b'{"private": true}\n'
    with pytest.raises(GatedRepoError):
        hf_hub_download("test-org/gated", "config.json", endpoint=ep, cache_dir=tmp_path, token=False)
    with pytest.raises(GatedRepoError):
        HfApi(endpoint=ep).model_info("test-org/gated", token=False)
    assert HfApi(endpoint=ep).model_info("test-org/gated", token="hf_test_token").gated == "auto"
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=ep).model_info("test-org/nope", token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/nope", "x", endpoint=ep, cache_dir=tmp_path, token="hf_test_token")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(TINY, "missing.json", endpoint=ep, cache_dir=tmp_path, token=False)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(TINY, "config.json", revision="v9", endpoint=ep, cache_dir=tmp_path, token=False)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(TINY, revision="no-such-branch", endpoint=ep, cache_dir=tmp_path, token=False)
    status, headers, _ = fetch(hub.url(TINY, "config.json"), "HEAD", {"Authorization": "Bearer wrong"})
    assert status == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"


def test_push_branches_tags_and_slashed_revisions(hub, tmp_path):
    repo = hub.repo("test-org/private")
    api = HfApi(endpoint=hub.endpoint, token="hf_test_token")
    old = api.model_info("test-org/private").sha
    new = hub.push("test-org/private", {"extra.txt": b"v2"})
    assert new != old and api.model_info("test-org/private").sha == new
    assert {s.rfilename for s in api.model_info("test-org/private", revision=old).siblings} == {
        "config.json", "weights.bin"}
    repo.create_branch("refs/pr/1", old)
    repo.tag("v1.0", old)
    for rev in ("refs/pr/1", "v1.0", old):
        assert api.model_info("test-org/private", revision=rev).sha == old
        status, headers, body = fetch(hub.url("test-org/private", "config.json", rev),
                                      headers={"Authorization": "Bearer hf_test_token"})
        assert status == 200 and headers["X-Repo-Commit"] == old
    got = hf_hub_download("test-org/private", "extra.txt", endpoint=hub.endpoint, cache_dir=tmp_path,
                          token="hf_test_token")
    assert Path(got).read_bytes() == b"v2"
    repo.commit({"extra.txt": None}, message="cleanup")


# --------------------------------------------------------------------------------- raw protocol


def test_resolve_headers_redirect_and_ranges(hub):
    src = minilm_files()["model.safetensors"].read_bytes()
    sha = hashlib.sha256(src).hexdigest()
    status, h, _ = fetch(hub.url(MINILM, "model.safetensors"), "HEAD")
    assert status == 302 and len(h["X-Repo-Commit"]) == 40
    assert h["X-Linked-Etag"] == f'"{sha}"' and h["X-Linked-Size"] == str(len(src))
    cdn = h["Location"]
    assert cdn.startswith("http://127.0.0.2:")
    status, h, body = fetch(cdn, headers={"Range": "bytes=100-199"})
    assert status == 206 and body == src[100:200] and h["Content-Range"] == f"bytes 100-199/{len(src)}"
    assert fetch(cdn, headers={"Range": f"bytes={len(src) - 10}-"})[2] == src[-10:]
    assert fetch(cdn, headers={"Range": "bytes=-5"})[2] == src[-5:]
    status, h, _ = fetch(cdn, headers={"Range": f"bytes={len(src)}-"})
    assert status == 416 and h["Content-Range"] == f"bytes */{len(src)}"

    cfg = minilm_files()["config.json"].read_bytes()
    status, h, body = fetch(hub.url(MINILM, "config.json"), headers={"Range": "bytes=3-9"})
    assert status == 206 and body == cfg[3:10] and h["Accept-Ranges"] == "bytes"
    status, h, body = fetch(hub.url(MINILM, "config.json"))
    oid = hashlib.sha1(b"blob %d\0" % len(cfg) + cfg).hexdigest()
    assert status == 200 and body == cfg and h["ETag"] == f'"{oid}"'
    assert "X-Linked-Etag" not in h


# ------------------------------------------------------------------------------------------ shaping


# Shaping rates and latency are measured by bench/shaping.py, not asserted here (no timing in tests).


# ------------------------------------------------------------------------------------------- faults


def test_fault_status5xx_fires_n_times(hub):
    url = hub.url(TINY, "config.json")
    hub.faults.add("status5xx", path_glob="*config.json", times=2, status=500)
    assert [fetch(url)[0] for _ in range(3)] == [500, 500, 200]
    assert hub.counters.requests_for("*config.json", "GET") == 3


def test_fault_truncate_reset_corrupt(hub, tiny_llama_files):
    src = tiny_llama_files["model-00001-of-00004.safetensors"].read_bytes()
    cdn = fetch(hub.url(TINY, "model-00001-of-00004.safetensors"), "HEAD")[1]["Location"]
    u = urlsplit(cdn)

    hub.faults.add("truncate", path_glob="*model-00001*", times=1, after_bytes=100_000)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", u.path)
    r = c.getresponse()
    assert int(r.headers["Content-Length"]) == len(src)
    with pytest.raises(http.client.IncompleteRead) as exc:
        r.read()
    assert exc.value.partial == src[:100_000]
    c.close()

    hub.faults.add("reset", path_glob="*model-00001*", times=1, after_bytes=50_000)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", u.path)
    r = c.getresponse()
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        r.read()
    c.close()

    hub.faults.add("corrupt", path_glob="*model-00001*", times=1, after_bytes=1000, nbytes=4)
    status, _, body = fetch(cdn)
    assert status == 200 and len(body) == len(src) and body != src
    assert [i for i in range(len(src)) if body[i] != src[i]] == [1000, 1001, 1002, 1003]
    assert fetch(cdn)[2] == src  # every fault fired once, then the origin is healthy again
    assert not hub.faults.pending()
    assert [k for k, _ in hub.faults.history] == ["truncate", "reset", "corrupt"]


# ---------------------------------------------------------------------------------- plain HTTP origin


def test_http_origin_toggles(http_origin):
    data = bytes(range(256)) * 64
    http_origin.put("a/b.bin", data)
    (http_origin.root / "disk.bin").write_bytes(data[:1000])
    url = http_origin.url("a/b.bin")
    status, h, body = fetch(url, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20] and h["ETag"] and h["Last-Modified"]
    assert fetch(http_origin.url("disk.bin"), headers={"Range": "bytes=-10"})[2] == data[990:1000]
    assert fetch(http_origin.url("missing"))[0] == 404
    http_origin.ranges = http_origin.etag = http_origin.last_modified = False
    status, h, body = fetch(url, headers={"Range": "bytes=10-19"})
    assert status == 200 and body == data and "ETag" not in h and "Last-Modified" not in h
    assert "Accept-Ranges" not in h
    # the origin counts a slice right after sending it: the client may hold the bytes a moment before
    deadline = time.monotonic() + 5
    while http_origin.counters.bytes_for("/a/*") < 10 + len(data) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert http_origin.counters.bytes_for("/a/*") == 10 + len(data)


def test_synth_is_deterministic_and_valid(tmp_path):
    from safetensors.numpy import load_file

    a = make_llama(tmp_path / "a", 1 << 20, shards=2, dtype="float16", seed=3)
    b = make_llama(tmp_path / "b", 1 << 20, shards=3, dtype="float16", seed=3)
    ta = {k: v for p in a if p.suffix == ".safetensors" for k, v in load_file(p).items()}
    tb = {k: v for p in b if p.suffix == ".safetensors" for k, v in load_file(p).items()}
    assert ta.keys() == tb.keys() and "lm_head.weight" in ta and "model.layers.0.mlp.up_proj.weight" in ta
    for k in ta:
        assert (ta[k] == tb[k]).all() and (ta[k] != 0).all(), k
    assert [p.name for p in b][-1] == "model.safetensors.index.json"


# ---------------------------------------------------------------------------------- reduced modes


def test_names_only_mode_lists_names_without_metadata(hub):
    hub.names_only = True
    status, _, body = fetch(f"{hub.endpoint}/api/models/{TINY}/revision/main?blobs=true")
    import json

    siblings = json.loads(body)["siblings"]
    assert status == 200 and siblings and all(set(s) == {"rfilename"} for s in siblings)
    assert fetch(f"{hub.endpoint}/api/models/{TINY}/tree/main")[0] == 404
    # the files themselves are still served
    assert fetch(hub.url(TINY, "config.json"))[0] == 200


def test_no_head_mode_and_cdn_ignoring_range(hub):
    hub.head = False
    assert fetch(hub.url(TINY, "config.json"), "HEAD")[0] == 405
    status, h, _ = fetch(hub.url(MINILM, "model.safetensors"))
    assert status == 302
    assert fetch(h["Location"], "HEAD")[0] == 405
    hub.head = True
    hub.cdn_ranges = False
    status, h2, body = fetch(h["Location"], headers={"Range": "bytes=0-9"})
    data = minilm_files()["model.safetensors"].read_bytes()
    assert status == 200 and body == data and "Accept-Ranges" not in h2
    hub.reset()
    status, _, body = fetch(h["Location"], headers={"Range": "bytes=0-9"})
    assert status == 206 and body == data[:10]

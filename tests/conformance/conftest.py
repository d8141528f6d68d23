"""Backends for the source conformance suite: each turns ``{path: bytes}`` into a ref on a real origin.

Adding a backend = one ``_case_<name>`` function below plus its name in ``BACKENDS``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers.hub import HubRepo
from tests.servers.proxy import ShapingProxy
from tests.servers.registry import DistributionRegistry, push_modelpack

BACKENDS = ["hf", "hf_names", "hf_mirror", "s3", "s3_boto3", "oci", "http", "local"]
_ids = itertools.count()


@dataclasses.dataclass
class Case:
    """One backend: ``make(files)`` publishes a model and returns its ref; ``origin`` (faults, counters,
    link) is None for local paths; ``glob(name, data)`` matches the origin path of one file."""

    name: str
    make: Callable[[dict[str, bytes]], str]
    origin: object | None
    glob: Callable[[str, bytes], str]
    knows_sha256: bool = True
    single_file: bool = False
    missing_ref: str = ""
    pins: bool = True  #: a pulled snapshot's ref names immutable content (served with no request)
    resumes: bool = True  #: the origin serves ranges, so an interrupted pull fetches only what is missing
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def uid() -> str:
    return f"m{os.getpid()}x{next(_ids)}"


@pytest.fixture(scope="session")
def moto_proxy():
    pytest.importorskip("boto3", reason="pip install boto3 'moto[server]' for the S3 conformance tests")
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' for the S3 conformance tests")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with ShapingProxy(host, port) as proxy:
        yield proxy
    server.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    from tests.servers import registry as reg

    if not reg.available():
        pytest.skip("the CNCF registry is not installed: apt-get install -y docker-registry")
    with DistributionRegistry(tmp_path_factory.mktemp("registry")) as r, ShapingProxy("127.0.0.1", r.port) as p:
        yield r, p


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    from tests.servers import registry as reg

    if not reg.available():
        pytest.skip("the CNCF registry is not installed: apt-get install -y docker-registry")
    pytest.importorskip("bcrypt", reason="pip install bcrypt for the registry auth tests")
    with DistributionRegistry(tmp_path_factory.mktemp("auth-registry"), htpasswd={"alice": "s3cret"}) as r:
        yield r


def s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE":
            "/nonexistent"}


@pytest.fixture(scope="session")
def s3_bucket(moto_proxy):
    import boto3

    env = s3_env(moto_proxy.endpoint)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="models")
    return client


def _case_hf(request, tmp_path) -> Case:
    hub = request.getfixturevalue("hub")

    def make(files):
        repo = f"conf/{uid()}"
        hub.add_repo(HubRepo(repo, files))
        return f"hf://{repo}"
    return Case("hf", make, hub, lambda n, d: f"*{n}", missing_ref="hf://conf/does-not-exist",
                env={"HF_ENDPOINT": hub.endpoint})


def _case_hf_names(request, tmp_path) -> Case:
    """The Hub as many mirrors serve it: the listing gives file names only (no sizes, no sha256)."""
    c = _case_hf(request, tmp_path)
    c.origin.names_only = True
    return dataclasses.replace(c, name="hf_names", knows_sha256=False)


def _case_hf_mirror(request, tmp_path) -> Case:
    """A minimal mirror: names-only listing, HEAD refused, a CDN that ignores Range (200, whole file)."""
    c = _case_hf_names(request, tmp_path)
    c.origin.head = False
    c.origin.cdn_ranges = False
    return dataclasses.replace(c, name="hf_mirror", resumes=False)


def _case_s3(request, tmp_path) -> Case:
    client = request.getfixturevalue("s3_bucket")
    proxy = request.getfixturevalue("moto_proxy")
    proxy.reset()
    request.addfinalizer(proxy.reset)

    def make(files):
        prefix = uid()
        for path, data in files.items():
            client.put_object(Bucket="models", Key=f"{prefix}/{path}", Body=data)
        return f"s3://models/{prefix}"
    return Case("s3", make, proxy, lambda n, d: f"*{n}", knows_sha256=False,
                missing_ref="s3://no-such-bucket/x", env=s3_env(proxy.endpoint))


def _case_s3_boto3(request, tmp_path) -> Case:
    """S3 again, through boto3 (what profiles, SSO and roles use) instead of the built-in signer."""
    c = _case_s3(request, tmp_path)
    return dataclasses.replace(c, env={**c.env, "WARMSTART_S3_CLIENT": "boto3"})


def _case_oci(request, tmp_path) -> Case:
    reg, proxy = request.getfixturevalue("registry")
    proxy.reset()
    request.addfinalizer(proxy.reset)

    def make(files):
        repo = f"models/{uid()}"
        push_modelpack(reg.endpoint, repo, "v1", files)
        return f"oci://{proxy.host}/{repo}:v1"
    return Case("oci", make, proxy, lambda n, d: f"*{hashlib.sha256(d).hexdigest()}*",
                missing_ref=f"oci://{proxy.host}/models/nothing-here:v1")


def _case_http(request, tmp_path) -> Case:
    origin = request.getfixturevalue("http_origin")

    def make(files):
        assert len(files) == 1
        (path, data), = files.items()
        name = f"{uid()}/{path}"
        origin.put(name, data)
        return origin.url(name)
    return Case("http", make, origin, lambda n, d: f"*{n}", knows_sha256=False, single_file=True,
                missing_ref=origin.url("nothing/here.bin"), pins=False)


def _case_local(request, tmp_path) -> Case:
    def make(files):
        root = tmp_path / "local-models" / uid()
        for path, data in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
        return str(root)
    return Case("local", make, None, lambda n, d: "", knows_sha256=False,
                missing_ref=str(tmp_path / "no" / "such" / "dir"), pins=False)


@pytest.fixture(params=BACKENDS)
def case(request, tmp_path, monkeypatch) -> Case:
    c = globals()[f"_case_{request.param}"](request, tmp_path)
    for k, v in c.env.items():
        monkeypatch.setenv(k, v)
    return c


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "ws-home"
    monkeypatch.setenv("WARMSTART_HOME", str(h))
    for name in ("WARMSTART_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN", "WARMSTART_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WARMSTART_QUIET", "1")
    yield h
    shutil.rmtree(h, ignore_errors=True)

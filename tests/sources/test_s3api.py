"""The standard-library S3 client (``sources/s3api.py``): signatures against AWS's published example and
against botocore, the choice between it and boto3, and its calls against moto's server."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import urllib.parse

import pytest

import warmstart
from warmstart.errors import NotFoundError, OfflineError, TransferError
from warmstart.sources import s3api

from ..conformance.conftest import s3_env, uid
from ..servers.tls import TlsServer, self_signed, wrap

T0 = datetime.datetime(2026, 11, 21, 15, 4, 5, tzinfo=datetime.timezone.utc)


def test_presign_matches_the_aws_documentation_example():
    """The presigned-URL example of AWS's "Authenticating Requests: Using Query Parameters" page."""
    creds = s3api.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    url = s3api.presign("GET", "https://examplebucket.s3.amazonaws.com/test.txt", {}, creds, "us-east-1", 86400,
                        now=datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc))
    assert url.startswith("https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                          "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                          "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host")
    assert url.endswith("&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")


@pytest.mark.parametrize("endpoint,region,bucket", [
    ("http://127.0.0.1:9000", "us-east-1", "models"),
    ("https://minio.example:9443/", "eu-west-3", "my-models"),
    (None, "eu-central-1", "my-models"),
    (None, "us-west-2", "dotted.bucket.name"),
])
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBY+token/=="])
def test_presign_agrees_with_botocore(monkeypatch, endpoint, region, bucket, token):
    pytest.importorskip("boto3")
    import boto3
    import botocore.auth
    from botocore.config import Config

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: T0.replace(tzinfo=None))
    config = s3api.Config(s3api.Credentials("AKIDEXAMPLE", "wJalr/K7MDENG+bPxRfiCY", token), region,
                          endpoint.rstrip("/") if endpoint else None)
    # On AWS, botocore presigns for the legacy global host (BUCKET.s3.amazonaws.com, which may redirect);
    # s3api uses the regional one. Point botocore at the same host to compare the signatures.
    style = "path" if endpoint or "." in bucket else "virtual"
    client = boto3.session.Session().client(
        "s3", region_name=region, endpoint_url=endpoint or f"https://s3.{region}.amazonaws.com",
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="wJalr/K7MDENG+bPxRfiCY", aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": style}))
    for key, version in (("w/model.safetensors", None), ("a b/c+d~e=f&g.bin", None), ("ünï/cödé", "3HL4kqtJl"),
                         ("x/../y/%2F", None)):
        params = {"Bucket": bucket, "Key": key} | ({"VersionId": version} if version else {})
        theirs = client.generate_presigned_url("get_object", Params=params, ExpiresIn=3600)
        ours = s3api.presign("GET", config.url(bucket, key), {"versionId": version} if version else {},
                             config.credentials, region, 3600, now=T0)
        a, b = urllib.parse.urlsplit(theirs), urllib.parse.urlsplit(ours)
        assert (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path), (theirs, ours)
        assert urllib.parse.parse_qs(a.query) == urllib.parse.parse_qs(b.query), (theirs, ours)


def _env(tmp_path, **extra):
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-west-1",
           "AWS_CONFIG_FILE": str(tmp_path / "config")}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def test_choice_between_the_builtin_client_and_boto3(tmp_path):
    config, why = s3api.config_from_env(_env(tmp_path))
    assert config == s3api.Config(s3api.Credentials("k", "s"), "eu-west-1") and not why
    config, _ = s3api.config_from_env(_env(tmp_path, AWS_REGION=None, AWS_ENDPOINT_URL="http://127.0.0.1:1",
                                           AWS_ENDPOINT_URL_S3="http://127.0.0.1:2", AWS_SESSION_TOKEN="t"))
    assert config.endpoint == "http://127.0.0.1:2" and config.region == "us-east-1" and config.credentials.token == "t"
    # everything the built-in client does not implement goes to boto3, with the reason
    for extra, reason in ((dict(AWS_ACCESS_KEY_ID=None), "no static keys"),
                          (dict(AWS_REGION=None), "no region"),
                          (dict(WARMSTART_S3_CLIENT="boto3"), "WARMSTART_S3_CLIENT"),
                          (dict(AWS_USE_FIPS_ENDPOINT="true"), "AWS_USE_FIPS_ENDPOINT"),
                          (dict(AWS_ENDPOINT_URL="ftp://x"), "not an http")):
        config, why = s3api.config_from_env(_env(tmp_path, **extra))
        assert config is None and reason in why
    # the config file: a region is read, anything else (an endpoint, a role, an s3 section) means boto3
    (tmp_path / "config").write_text("[default]\nregion = ap-south-1\noutput = json\n"
                                     "[profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = default\n"
                                     "[profile minio]\nendpoint_url = http://127.0.0.1:9000\n")
    config, _ = s3api.config_from_env(_env(tmp_path, AWS_REGION=None))
    assert config.region == "ap-south-1"
    for profile in ("role", "minio", "missing"):
        config, why = s3api.config_from_env(_env(tmp_path, AWS_PROFILE=profile))
        assert config is None and "config file" in why


def test_object_urls(tmp_path):
    creds = s3api.Credentials("k", "s")
    assert s3api.Config(creds, "eu-west-1").url("my-models", "a b/c") == \
        "https://my-models.s3.eu-west-1.amazonaws.com/a%20b/c"
    assert s3api.Config(creds, "cn-north-1").url("Upper_Case", "k") == \
        "https://s3.cn-north-1.amazonaws.com.cn/Upper_Case/k"
    assert s3api.Config(creds, "us-east-1", "http://127.0.0.1:9000/").url("my-models", "x") == \
        "http://127.0.0.1:9000/my-models/x"


def test_listing_agrees_with_boto3_across_pages(s3, moto_proxy):
    prefix = uid()
    keys = [f"{prefix}/{name}" for name in ("a b.bin", "c+d.bin", "ünï/cöde.json", "e&f<g>.txt", "z%2F.bin")]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="models", Key=key, Body=b"x" * (i + 1))
    config, why = s3api.config_from_env()
    assert config is not None, why
    api = s3api.Api(config)
    moto_proxy.counters.reset()
    ours = api.list_v2("models", prefix + "/", page_size=2)
    assert moto_proxy.counters.requests_for("*") == 3  # 5 objects, 2 per page
    theirs = s3.list_objects_v2(Bucket="models", Prefix=prefix + "/")["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in ours] == [(o["Key"], o["Size"], o["ETag"]) for o in theirs]
    etags = {o["Key"]: o["ETag"] for o in theirs}
    head = api.head("models", keys[1])
    assert (head["Key"], head["Size"], head["ETag"]) == (keys[1], 2, etags[keys[1]])
    assert api.head("models", f"{prefix}/nothing") is None
    with pytest.raises(s3api.S3Error) as err:
        api.list_v2("no-such-bucket", "")
    assert err.value.status == 404 and err.value.code == "NoSuchBucket"
    api.close()


def test_listing_retries_slowdown_then_gives_a_clear_error(s3, moto_proxy):
    prefix = uid()
    s3.put_object(Bucket="models", Key=f"{prefix}/a.bin", Body=b"a")
    sleeps: list[float] = []
    api = s3api.Api(s3api.config_from_env()[0], sleep=sleeps.append)
    moto_proxy.faults.add("status5xx", path_glob="/models*", status=503, times=2, method="GET")
    assert [o["Size"] for o in api.list_v2("models", prefix + "/")] == [1] and len(sleeps) == 2
    moto_proxy.faults.add("status5xx", path_glob="/models*", status=503, times=None, method="GET")
    with pytest.raises(s3api.S3Error) as err:
        api.list_v2("models", prefix + "/")
    assert err.value.status == 503 and len(sleeps) == 2 + s3api.MAX_ATTEMPTS - 1


def test_unreachable_endpoint_is_an_offline_error(monkeypatch, home, tmp_path):
    for k, v in s3_env("http://127.0.0.1:9").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(OfflineError, match=r"^the S3 endpoint http://127.0.0.1:9 is unreachable .* not in the cache"):
        warmstart.pull("s3://models/x")


@pytest.mark.parametrize("client", ["auto", "boto3"])
def test_pull_through_either_client(s3, moto_proxy, monkeypatch, home, client):
    """The same prefix pulls to the same revision and bytes through either client; a single object named
    by the prefix works too; a missing bucket is not found."""
    monkeypatch.setenv("WARMSTART_S3_CLIENT", client)
    prefix = f"either-{client}"
    s3.put_object(Bucket="models", Key=f"{prefix}/a b.bin", Body=b"1" * 3000)
    s3.put_object(Bucket="models", Key=f"{prefix}/sub/c.json", Body=b"{}")
    snap = warmstart.pull(f"s3://models/{prefix}")
    assert sorted((f.path, f.blob.read_bytes()[:4]) for f in snap.files) == [("a b.bin", b"1111"),
                                                                            ("sub/c.json", b"{}")]
    single = warmstart.pull(f"s3://models/{prefix}/sub/c.json")
    assert [f.path for f in single.files] == ["c.json"]
    with pytest.raises(NotFoundError, match="does not exist"):
        warmstart.pull("s3://no-such-bucket/x")


def test_revision_is_the_same_through_either_client(s3, moto_proxy, monkeypatch, home):
    prefix = uid()
    s3.put_object(Bucket="models", Key=f"{prefix}/w.bin", Body=os.urandom(5000))
    revisions = []
    for client in ("auto", "boto3"):
        monkeypatch.setenv("WARMSTART_S3_CLIENT", client)
        revisions.append(warmstart.pull(f"s3://models/{prefix}").revision)
    assert revisions[0] == revisions[1]


def test_cli_pull_with_keys_in_the_environment_does_not_import_boto3(s3, moto_proxy, home):
    prefix = uid()
    s3.put_object(Bucket="models", Key=f"{prefix}/w.bin", Body=b"w" * 10000)
    code = ("import sys, warmstart; s = warmstart.pull(sys.argv[1]); "
            "print(__import__('json').dumps([s.files[0].size, 'boto3' in sys.modules, 'botocore' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, f"s3://models/{prefix}"], capture_output=True, text=True,
                         env=os.environ | {"WARMSTART_HOME": str(home)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [10000, False, False]


class _Stub:
    """An S3 endpoint on loopback: ``answer(path)`` gives each GET's (status, headers, body)."""

    def __init__(self, answer) -> None:
        import http.server
        import threading

        stub = self
        self.requests: list[str] = []
        self.hosts: list[str | None] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                stub.requests.append(self.path)
                stub.hosts.append(self.headers.get("Host"))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>from the stub</Message></Error>".encode()


def _region_stub(always: bool = False) -> _Stub:
    """A bucket in eu-west-1: requests signed for another region get a 301 with ``x-amz-bucket-region``,
    as S3 answers them (``always``: every request)."""
    listing = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
               b'2006-03-01/"><IsTruncated>false</IsTruncated><Contents><Key>p/w.bin</Key><Size>7</Size>'
               b'<ETag>"e"</ETag></Contents></ListBucketResult>')

    def answer(path):
        if always or "%2Feu-west-1%2F" not in path:
            return 301, {"x-amz-bucket-region": "eu-west-1"}, _error("PermanentRedirect")
        return 200, {}, listing
    return _Stub(answer)


def test_bucket_in_another_region_is_followed_once():
    stub = _region_stub()
    api = s3api.Api(s3api.Config(s3api.Credentials("k", "s"), "us-east-1", stub.endpoint))
    assert [o["Key"] for o in api.list_v2("b", "p/")] == ["p/w.bin"] and len(stub.requests) == 2
    assert api.config.region == "eu-west-1" and "%2Feu-west-1%2Fs3%2F" in api.presign_get("b", "p/w.bin", 60)
    stub.server.shutdown()
    looping = _region_stub(always=True)
    api = s3api.Api(s3api.Config(s3api.Credentials("k", "s"), "us-east-1", looping.endpoint), sleep=lambda s: None)
    with pytest.raises(s3api.S3Error) as err:
        api.list_v2("b", "p/")
    assert err.value.status == 301 and err.value.code == "PermanentRedirect" and len(looping.requests) == 2
    looping.server.shutdown()


@pytest.mark.parametrize("status,code,error,match,attempts", [
    (403, "InvalidAccessKeyId", "GatedRepoError", r"access denied \(InvalidAccessKeyId\); check the AWS credentials", 1),
    (403, "SignatureDoesNotMatch", "GatedRepoError", r"access denied \(SignatureDoesNotMatch\)", 1),
    (503, "SlowDown", "TransferError", r"kept throttling or failing \(SlowDown\) after retries", s3api.MAX_ATTEMPTS),
    (404, "NoSuchBucket", "NotFoundError", r"bucket 'models' does not exist", 1),
])
def test_error_answers_are_one_line_errors(monkeypatch, home, status, code, error, match, attempts):
    from warmstart import errors

    stub = _Stub(lambda path: (status, {}, _error(code)))
    for k, v in s3_env(stub.endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(s3api, "BACKOFF_S", 0.001)
    with pytest.raises(getattr(errors, error), match=match) as err:
        warmstart.pull("s3://models/m")
    assert "\n" not in str(err.value) and len(stub.requests) == attempts
    stub.server.shutdown()


def test_a_ca_bundle_that_cannot_be_loaded_is_a_clear_error(tmp_path):
    from warmstart import _http
    from warmstart.errors import ConfigError

    bad = tmp_path / "bundle.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"cannot load the CA bundle .*bundle.pem .*AWS_CA_BUNDLE"):
        _http.trust_ca_bundle("https://models.s3.eu-west-1.amazonaws.com/x", str(bad))
    _http.trust_ca_bundle("http://127.0.0.1:9/x", str(bad))  # plain HTTP: nothing to verify


def test_ca_bundle_verifies_https_to_that_host(tmp_path):
    """A self-signed endpoint (a private MinIO): refused with the system's CAs, served once its
    certificate is the host's bundle (what AWS_CA_BUNDLE does for the listing and the downloads)."""
    import ssl

    from warmstart import _http

    cert, key = self_signed(tmp_path)
    with TlsServer(cert, key, b"ok") as server:
        url = f"https://127.0.0.1:{server.port}/bucket/key"
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                _http.Client(timeout=5).request("GET", url)
            _http.trust_ca_bundle(url, str(cert))
            resp = _http.Client(timeout=5).request("GET", url)
            assert resp.status == 200 and resp.read() == b"ok"
        finally:
            _http._host_contexts.pop(_http.host_key(url), None)


@pytest.mark.parametrize("client", ["auto", "boto3"])
def test_an_object_version_id_pins_that_version(s3, moto_proxy, monkeypatch, home, client):
    """``s3://BUCKET/KEY@VERSION_ID``: that version of the object, whatever is live; served from the
    cache with no request afterwards; an unknown version id is a clear not-found."""
    monkeypatch.setenv("WARMSTART_S3_CLIENT", client)
    bucket = f"versioned-{client}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="m/w.bin", Body=b"one" * 2000)["VersionId"]
    s3.put_object(Bucket=bucket, Key="m/w.bin", Body=b"two" * 2000)
    old = warmstart.pull(f"s3://{bucket}/m/w.bin@{v1}")
    assert old.files[0].blob.read_bytes() == b"one" * 2000 and old.ref.endswith(old.revision)
    live = warmstart.pull(f"s3://{bucket}/m")
    assert live.files[0].blob.read_bytes() == b"two" * 2000 and live.revision != old.revision
    moto_proxy.counters.reset()
    again = warmstart.pull(f"s3://{bucket}/m/w.bin@{v1}")
    assert again.revision == old.revision and moto_proxy.counters.requests_for("*") == 0
    with pytest.raises(NotFoundError, match="neither a revision of this prefix .* nor a version id"):
        warmstart.pull(f"s3://{bucket}/m/w.bin@no-such-version")



def _listing(keys: list[str], *, token: str | None = None, encoding: bool = False) -> bytes:
    items = "".join(f"<Contents><Key>{k}</Key><Size>1</Size><ETag>\"e\"</ETag></Contents>" for k in keys)
    more = f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>" if token \
        else "<IsTruncated>false</IsTruncated>"
    enc = "<EncodingType>url</EncodingType>" if encoding else ""
    return (f'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{enc}{more}{items}'
            "</ListBucketResult>").encode()


def _api(stub: _Stub) -> s3api.Api:
    return s3api.Api(s3api.Config(s3api.Credentials("k", "s"), "us-east-1", stub.endpoint), sleep=lambda s: None)


def test_keys_are_decoded_only_when_the_store_encoded_them():
    raw = _Stub(lambda path: (200, {}, _listing(["p/a+b%41.bin"])))
    assert [o["Key"] for o in _api(raw).list_v2("b", "p/")] == ["p/a+b%41.bin"]
    encoded = _Stub(lambda path: (200, {}, _listing(["p/a%2Bb%2541.bin", "p/c+d"], encoding=True)))
    assert [o["Key"] for o in _api(encoded).list_v2("b", "p/")] == ["p/a+b%41.bin", "p/c d"]


def test_a_listing_that_never_ends_or_is_not_one_is_an_error():
    looping = _Stub(lambda path: (200, {}, _listing(["p/a"], token="same")))
    with pytest.raises(s3api.S3Error, match="same continuation token"):
        _api(looping).list_v2("b", "p/")
    assert len(looping.requests) == 2
    html = _Stub(lambda path: (200, {}, b"<html><body>MinIO Console</body>"))
    with pytest.raises(s3api.S3Error, match="not an S3 listing"):
        _api(html).list_v2("b", "p/")


def test_a_redirect_after_retries_is_still_followed():
    answers = iter([(503, {}, _error("SlowDown"))] * (s3api.MAX_ATTEMPTS - 1)
                   + [(301, {"x-amz-bucket-region": "eu-west-1"}, _error("PermanentRedirect"))])
    stub = _Stub(lambda path: next(answers, (200, {}, _listing(["p/w"]))))
    assert [o["Key"] for o in _api(stub).list_v2("b", "p/")] == ["p/w"]
    assert len(stub.requests) == s3api.MAX_ATTEMPTS + 1


def test_error_messages_stay_on_one_line(monkeypatch, home):
    stub = _Stub(lambda path: (400, {}, b"Bad Request\nInvalid query\n  more"))
    for k, v in s3_env(stub.endpoint).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TransferError) as err:
        warmstart.pull("s3://models/m")
    assert "\n" not in str(err.value) and "Bad Request Invalid query more" in str(err.value)


def test_the_signed_host_is_the_host_header_sent():
    from warmstart import _http

    for url_host in ("127.0.0.1:{port}", "LOCALHOST:{port}", "localhost:{port}"):
        stub = _Stub(lambda path: (200, {}, b"ok"))
        url = f"http://{url_host.format(port=stub.server.server_port)}/b/k"
        _http.Client(timeout=5).request("GET", url).read()
        assert stub.hosts == [s3api.signed_host(url)]
        stub.server.shutdown()
    assert s3api.signed_host("http://[::1]:80/b") == "[::1]" and s3api.signed_host("https://h:443/") == "h"
    assert s3api.signed_host("https://[::1]:9000/b") == "[::1]:9000"


def test_environment_details_as_botocore_reads_them(tmp_path):
    config, _ = s3api.config_from_env(_env(tmp_path, AWS_SECURITY_TOKEN="legacy"))
    assert config.credentials.token == "legacy"
    config, _ = s3api.config_from_env(_env(tmp_path, AWS_ENDPOINT_URL="HTTP://MinIO.Local:9000/"))
    assert config.endpoint == "http://minio.local:9000"
    for bad in ("http://127.0.0.1:99999", "http://", "minio:9000"):
        config, why = s3api.config_from_env(_env(tmp_path, AWS_ENDPOINT_URL=bad))
        assert config is None and "AWS_ENDPOINT_URL" in why
    (tmp_path / "config").write_text("[profile a]\nregion = eu-north-1\n[profile b]\nregion = sa-east-1\n")
    config, _ = s3api.config_from_env(_env(tmp_path, AWS_REGION=None, AWS_PROFILE="a", AWS_DEFAULT_PROFILE="b"))
    assert config.region == "sa-east-1"  # botocore reads AWS_DEFAULT_PROFILE first


def test_a_version_id_the_store_ignores_is_not_pinned(monkeypatch, home):
    """A store without versioning answers HEAD ?versionId=X with the live object: not that version."""
    stub = _Stub(lambda path: (200, {"ETag": '"e"'}, b"x"))
    for k, v in s3_env(stub.endpoint).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(NotFoundError, match="nor a version id"):
        warmstart.pull("s3://models/m/w.bin@3HL4kqtJlcpX")
    from warmstart.sources.registry import parse

    assert parse("s3://bkt/k@3HL4kqtJlcpX").pinned and not parse("s3://bkt/k@null").pinned
    assert not parse("s3://bkt/k@latest").pinned and not parse("s3://bkt/k").pinned


def test_tls_failure_is_a_clear_error_not_an_offline_fallback(monkeypatch, home, tmp_path):
    cert, key = self_signed(tmp_path)
    stub = _Stub(lambda path: (200, {}, _listing(["m/w"])))
    wrap(stub.server, cert, key)
    for k, v in s3_env(stub.endpoint.replace("http://", "https://")).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    from warmstart.errors import ConfigError

    with pytest.raises(ConfigError, match="TLS verification of the S3 endpoint failed .*set AWS_CA_BUNDLE"):
        warmstart.pull("s3://models/m")
    assert len(stub.requests) == 0  # refused at the handshake, and not retried

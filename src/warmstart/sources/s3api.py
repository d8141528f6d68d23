"""A small S3 client on the standard library: AWS Signature Version 4 and the three calls a pull makes.

``warmstart pull s3://…`` needs only ``ListObjectsV2``, ``HeadObject`` and presigned GET URLs. With
boto3 these cost 0.24 s before the first request (0.14 s to import boto3, 0.10 s to build a client),
which is 7 % of a 1 GB pull on a 320 MB/s link. When the whole configuration is in the environment
(static keys in ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a region, and no config-file
setting this module does not implement), the S3 source signs its requests here instead; anything
else (profiles, SSO, assume-role, instance metadata, FIPS or dual-stack endpoints) goes to boto3, which
implements the whole AWS configuration chain. ``WARMSTART_S3_CLIENT=boto3`` forces boto3.

Requests are signed in the query string (``X-Amz-Algorithm=AWS4-HMAC-SHA256``, payload
``UNSIGNED-PAYLOAD``, signed header ``host``), as ``generate_presigned_url`` does, so one signer
serves the listing, the HEAD and the download URLs.

>>> creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
>>> url = presign("GET", "https://examplebucket.s3.amazonaws.com/test.txt", {}, creds, "us-east-1",
...               86400, now=datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc))
>>> url.rsplit("X-Amz-Signature=", 1)[1]
'aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404'
"""

from __future__ import annotations

import configparser
import dataclasses
import datetime
import hashlib
import hmac
import http.client
import os
import re
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from .. import _http
from .._retry import METADATA, Retry
from ..errors import TransferError

#: the settings of an AWS config-file profile that this client implements (or that do not concern S3)
_HARMLESS_PROFILE_KEYS = {"region", "output", "cli_pager", "cli_timestamp_format", "cli_binary_format",
                          "cli_history", "cli_auto_prompt", "max_attempts", "retry_mode", "aws_access_key_id",
                          "aws_secret_access_key", "aws_session_token"}
#: environment variables that change how boto3 reaches S3 in ways this client does not implement
_BOTO3_ONLY_ENV = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_S3_USE_ARN_REGION",
                   "AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS")
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_RETRY_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
                "ThrottlingException", "RequestLimitExceeded"}
MAX_ATTEMPTS = 6  #: S3 asks clients to retry SlowDown patiently (the AWS SDKs' standard mode: 6 tries)
BACKOFF_S = 0.1  #: first retry delay; doubled per attempt (up to 5 s), with jitter
CONNECTION_ATTEMPTS = 3  #: a connection that fails (reset, timed out) three times: the endpoint is down


def retry_policy() -> Retry:
    """The metadata policy, with S3's patience for throttling."""
    return dataclasses.replace(METADATA, attempts=MAX_ATTEMPTS, base_s=BACKOFF_S, cap_s=5.0)


@dataclasses.dataclass(frozen=True)
class Credentials:
    key: str
    secret: str = dataclasses.field(repr=False)  # never printed (nor the session token)
    token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Config:
    """Where and how to reach S3: ``endpoint`` is None for AWS itself."""

    credentials: Credentials
    region: str
    endpoint: str | None = None
    ca_bundle: str | None = None  #: AWS_CA_BUNDLE: HTTPS to S3 is verified with these certificates only

    def url(self, bucket: str, key: str = "") -> str:
        """The object's URL: path style on custom endpoints (MinIO, Ceph RGW) and for bucket names that
        are not DNS labels, virtual-hosted on AWS otherwise (what boto3 does by default)."""
        path = "/" + urllib.parse.quote(key, safe="/~")
        if self.endpoint:
            return f"{self.endpoint.rstrip('/')}/{urllib.parse.quote(bucket, safe='')}{path}"
        domain = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        if _DNS_BUCKET.fullmatch(bucket):
            return f"https://{bucket}.s3.{self.region}.{domain}{path}"
        return f"https://s3.{self.region}.{domain}/{urllib.parse.quote(bucket, safe='')}{path}"


def config_from_env(environ: Mapping[str, str] | None = None) -> tuple[Config | None, str]:
    """The configuration when this client can serve it, else ``(None, why boto3 is needed)``."""
    env = os.environ if environ is None else environ
    if env.get("WARMSTART_S3_CLIENT", "auto").lower() == "boto3":
        return None, "WARMSTART_S3_CLIENT=boto3"
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return None, "no static keys in the environment"
    for name in _BOTO3_ONLY_ENV:
        if env.get(name):
            return None, f"{name} is set"
    if env.get("AWS_CA_BUNDLE") and not os.path.isfile(env["AWS_CA_BUNDLE"]):
        return None, "AWS_CA_BUNDLE is not a file"  # boto3 reports it
    profile = _profile(env)
    if profile is None:
        return None, "the AWS config file sets options for this profile"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or profile.get("region")
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        endpoint = None
    if not region:
        if not endpoint:
            return None, "no region in the environment"  # boto3 follows S3's region redirects
        region = "us-east-1"
    if endpoint:
        endpoint = _normal_endpoint(endpoint)
        if endpoint is None:
            return None, "AWS_ENDPOINT_URL is not an http(s) URL"  # boto3 reports it
    creds = Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None)
    return Config(creds, region, endpoint, env.get("AWS_CA_BUNDLE") or None), ""


def _normal_endpoint(endpoint: str) -> str | None:
    """``scheme://host[:port][/path]`` with the host in lower case (it is signed as sent), or None."""
    try:
        parts = urllib.parse.urlsplit(endpoint.strip())
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _profile(env: Mapping[str, str]) -> dict[str, str] | None:
    """The active profile's settings from the AWS config file ({} when there is none), or None when it
    holds a setting this client does not implement (an endpoint, an ``s3`` section, a role...)."""
    path = os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if not os.path.isfile(path):
        return {}
    name = env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default"  # botocore's order
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error:
        return None  # let boto3 report it
    section = "default" if name == "default" else f"profile {name}"
    if not parser.has_section(section):
        return {} if name == "default" else None
    values = dict(parser.items(section))
    return values if set(values) <= _HARMLESS_PROFILE_KEYS else None


# -- Signature Version 4 --------------------------------------------------------------------------------
def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    k = hmac.digest(("AWS4" + secret).encode(), day.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        k = hmac.digest(k, part.encode(), "sha256")
    return k


def signed_host(url: str) -> str:
    """The ``Host`` header http.client sends for ``url``, which the signature covers: the host as
    written ([...] for IPv6), and the port unless it is the scheme's default."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    if parts.port is not None and parts.port == {"http": 80, "https": 443}.get(parts.scheme):
        host = host.rsplit(":", 1)[0]
    return host


def presign(method: str, url: str, query: Mapping[str, str], creds: Credentials, region: str, expires: int,
            *, now: datetime.datetime | None = None, service: str = "s3") -> str:
    """``url`` (already percent-encoded path, no query) with ``query`` and a SigV4 query signature."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/{region}/{service}/aws4_request"
    parts = urllib.parse.urlsplit(url)
    host = signed_host(url)
    params = dict(query)
    params.update({"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{creds.key}/{scope}",
                   "X-Amz-Date": stamp, "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host"})
    if creds.token:
        params["X-Amz-Security-Token"] = creds.token
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items()))
    canonical = "\n".join((method, parts.path or "/", canonical_query, f"host:{host}", "", "host",
                           "UNSIGNED-PAYLOAD"))
    to_sign = "\n".join(("AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    signature = hmac.new(_signing_key(creds.secret, day, region, service), to_sign.encode(), "sha256").hexdigest()
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}?{canonical_query}&X-Amz-Signature={signature}"


# -- the calls ------------------------------------------------------------------------------------------
class S3Error(Exception):
    """An error answer from S3 (``status`` 0: the endpoint could not be reached; -1: TLS failed)."""

    def __init__(self, status: int, code: str = "", message: str = "") -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(f"{code or status}: {message}" if message else (code or str(status)))


class Api:
    """``ListObjectsV2`` and ``HeadObject`` with bounded retries (5xx, SlowDown, lost connections)."""

    def __init__(self, config: Config, *, timeout: float = 30.0, connect_timeout: float = _http.CONNECT_TIMEOUT,
                 sleep=time.sleep) -> None:
        self.config = config
        self._client = _http.Client(timeout=timeout, connect_timeout=connect_timeout)
        self._sleep = sleep

    def close(self) -> None:
        self._client.close()

    def presign_get(self, bucket: str, key: str, expires: int, version: str | None = None) -> str:
        query = {"versionId": version} if version else {}
        return presign("GET", self.config.url(bucket, key), query, self.config.credentials, self.config.region,
                       expires)

    def list_v2(self, bucket: str, prefix: str, *, page_size: int | None = None) -> list[dict]:
        """Every object under ``prefix``: dicts with Key, Size and ETag, as boto3 returns them."""
        out: list[dict] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if page_size:
                query["max-keys"] = str(page_size)
            if token:
                query["continuation-token"] = token
            body = self._call("GET", bucket, "", query)
            try:
                root = ET.fromstring(body)
                # keys are URL-encoded only when the store says it honoured encoding-type=url (as botocore)
                encoded = (root.findtext(f"{_NS}EncodingType") or "").lower() == "url"
                for item in root.iter(f"{_NS}Contents"):
                    key = item.findtext(f"{_NS}Key") or ""
                    out.append({"Key": urllib.parse.unquote_plus(key) if encoded else key,
                                "Size": int(item.findtext(f"{_NS}Size") or 0),
                                "ETag": item.findtext(f"{_NS}ETag")})
            except (ET.ParseError, ValueError):
                raise S3Error(200, "InvalidListing", "the endpoint's answer to ListObjectsV2 is not an S3 "
                              "listing; is AWS_ENDPOINT_URL an S3 API endpoint?") from None
            previous, token = token, root.findtext(f"{_NS}NextContinuationToken")
            if (root.findtext(f"{_NS}IsTruncated") or "").lower() != "true" or not token:
                return out
            if token == previous:  # a store that repeats itself would be listed forever
                raise S3Error(200, "InvalidListing", "the store returned the same continuation token twice")

    def head(self, bucket: str, key: str, version: str | None = None) -> dict | None:
        """The object's size, ETag and version id, or None when there is no such object (or version)."""
        try:
            headers = self._call("HEAD", bucket, key, {"versionId": version} if version else {})
        except S3Error as exc:
            if exc.status == 404 or (version and exc.status == 400):  # 400: a malformed version id
                return None
            raise
        size = _http.content_length(headers.get("content-length"))
        if size is None:
            raise S3Error(200, "InvalidHead", f"the answer for s3://{bucket}/{key} has no valid Content-Length")
        return {"Key": key, "Size": size, "ETag": headers.get("etag"),
                "VersionId": headers.get("x-amz-version-id")}

    def _call(self, method: str, bucket: str, key: str, query: dict[str, str]):
        """The body (GET) or the headers (HEAD) of a 2xx answer; S3Error otherwise."""
        retry = retry_policy()
        redirected, attempt = False, 0
        while True:
            url = presign(method, self.config.url(bucket, key), query, self.config.credentials,
                          self.config.region, 900)
            if self.config.ca_bundle:
                _http.trust_ca_bundle(url, self.config.ca_bundle)
            retry_after = None
            try:
                resp = self._client.request(method, url)
                body = _http.read_bounded(  # b"" for HEAD
                    resp, what=f"the S3 endpoint's answer for s3://{bucket}/{key}",
                    hint="check AWS_ENDPOINT_URL")
            except TransferError:  # too large or too slow: not a fault a retry mends
                self._client.drop(url)
                raise
            except ssl.SSLError as exc:  # a certificate is not a transient fault: no retry
                self._client.drop(url)
                raise S3Error(-1, "TLSError", str(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self._client.drop(url)
                error = S3Error(0, type(exc).__name__, str(exc))
                # refused, unresolvable, unroutable: at once; an endpoint that keeps failing: after three
                if retry.gives_up(exc) or attempt >= CONNECTION_ATTEMPTS - 1:
                    raise error from None
            else:
                if 200 <= resp.status < 300:
                    return body if method != "HEAD" else _http.headers_of(resp)
                error = _parse_error(resp.status, body)
                region = resp.getheader("x-amz-bucket-region")
                if region and region != self.config.region and not redirected and resp.status in (301, 400, 403):
                    # the bucket lives in another region (PermanentRedirect, AuthorizationQueryParametersError):
                    # sign for that one, as boto3 does; the download URLs are presigned for it too
                    self.config = dataclasses.replace(self.config, region=region)
                    redirected = True
                    continue
                if not (resp.status >= 500 or resp.status == 429 or error.code in _RETRY_CODES):
                    raise error
                if retry.last(attempt):
                    raise error
                retry_after = _seconds(resp.getheader("Retry-After"))
            self._sleep(retry.delay(attempt, retry_after=retry_after))
            attempt += 1


def _seconds(value: str | None) -> float | None:
    try:
        return float(value or "")
    except ValueError:
        return None


def _parse_error(status: int, body: bytes) -> S3Error:
    code = message = ""
    if body:
        try:
            root = ET.fromstring(body)
            code, message = root.findtext("Code") or "", root.findtext("Message") or ""
        except ET.ParseError:
            message = body[:200].decode("utf-8", "replace").strip()
    if not code and status == 404:
        code = "NotFound"
    return S3Error(status, code, " ".join(message.split())[:300])

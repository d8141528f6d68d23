"""S3-compatible object stores: ``s3://BUCKET/PREFIX[@REVISION]``.

The objects under ``PREFIX/`` form a model (or ``PREFIX`` names one object). They are listed and one GET
URL is presigned per object (a purely local computation); the bytes then move through the shared
transfer engine with parallel ranged GETs, hashed with sha256 as they arrive. Each GET carries
``If-Match: <listed ETag>``, so an object that changes between listing and download fails with
HTTP 412 instead of mixing two versions.

The revision is a digest of the listing (``ListObjectsV2``: keys, sizes, ETags; a single object named
by ``PREFIX`` adds its version id): ``s3://b/p@<revision>`` is immutable and served from the cache
without any request once pulled.

Credentials, region and endpoint come from the standard AWS environment and config files
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for MinIO or Ceph RGW).
When all of it is in the environment (static keys and a region or endpoint), :mod:`.s3api` signs the
requests without importing boto3 (0.24 s sooner to the first byte); otherwise boto3 resolves the whole
AWS configuration chain (profiles, SSO, assume-role, instance metadata). The ``[s3]`` extra (boto3) is
required either way, so ``s3://`` behaves the same whatever the credentials' source.

>>> listing_digest([("w/a.bin", 3, '"e1"', None)])[:12]
'05309cb6e9be'
>>> r = S3Source.parse_ref("s3", "models/llama/@3HL4kqtJlcpX", "s3://models/llama/@3HL4kqtJlcpX", False)
>>> str(r), r.pinned, r.key, S3Source.is_pinned(r.with_revision("null"))
('s3://models/llama@3HL4kqtJlcpX', True, 's3://models/llama', False)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Iterable

from .. import _http
from ..errors import ConfigError, GatedRepoError, NotFoundError, TransferError
from ..refs import Malformed, Ref
from . import s3api
from .base import Listing, OriginUnreachable, RemoteFile, Source

log = logging.getLogger(__name__)

#: presigned URLs stay valid this long (a resumed pull resolves again and gets fresh ones)
URL_TTL = 12 * 3600
_DIGEST = re.compile(r"[0-9a-f]{40}")
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "AuthorizationHeaderMalformed", "403", "401"}


@dataclasses.dataclass(frozen=True)
class S3File(RemoteFile):
    """A RemoteFile whose partial/lock name does not depend on the (ever-changing) presigned URL."""

    object_id: str = ""

    @property
    def key(self) -> str:
        if self.sha256:
            return self.sha256
        text = f"{self.object_id}\0{self.etag}\0{self.size}"
        return "s3-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def listing_digest(objects: Iterable[tuple[str, int, str | None, str | None]]) -> str:
    """The revision of a prefix: sha256 over sorted (key, size, ETag, version id), 40 hex digits."""
    h = hashlib.sha256()
    for key, size, etag, version in sorted(objects, key=lambda o: o[0]):
        h.update(f"{key}\0{size}\0{etag or ''}\0{version or ''}\n".encode())
    return h.hexdigest()[:40]


class S3Source(Source):
    """Objects under a prefix of an S3-compatible bucket (needs ``pip install 'warmstart[s3]'``)."""

    schemes = ("s3",)
    forms = ("s3://BUCKET/PREFIX[@VERSION]",)
    default_revision = "latest"
    # boto3 is imported only when s3api cannot serve the configuration (see the module docstring), but
    # required either way, so s3:// behaves the same whatever the credentials' source; the registry
    # turns its absence into the install hint
    requires = ("boto3",)
    extra = "s3"

    @classmethod
    def parse_ref(cls, scheme: str, body: str, text: str, bare: bool) -> Ref:
        loc, rev = cls.split_revision(body)
        bucket = loc.split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise Malformed(f"bad bucket name {bucket!r}")
        return cls.make_ref("s3", loc.rstrip("/"), rev)

    @classmethod
    def is_pinned(cls, ref: Ref) -> bool:
        """A listing digest or an object version id (anything but ``latest``, and ``null``: the version
        S3 overwrites in place)."""
        return bool(ref.revision) and ref.revision not in (cls.default_revision, "null")

    def __init__(self, settings, *, client=None) -> None:
        super().__init__(settings)
        self._client_obj = client
        self._session = None  # boto3's, when the boto3 client is built
        self._api: s3api.Api | None = None
        if client is None:
            config, why = s3api.config_from_env()
            if config is not None:
                self._api = s3api.Api(config, connect_timeout=self._connect_timeout)
            else:
                log.debug("S3 through boto3: %s", why)

    @property
    def _connect_timeout(self) -> float:
        return getattr(self.settings, "connect_timeout", None) or _http.CONNECT_TIMEOUT

    @property
    def client(self):
        """The boto3 client (when :mod:`.s3api` cannot serve this configuration)."""
        if self._client_obj is None:
            import boto3
            from botocore.config import Config

            cfg = Config(retries={"max_attempts": 6, "mode": "standard"}, connect_timeout=self._connect_timeout,
                         read_timeout=60, signature_version="s3v4")
            # AWS_REGION (the AWS SDKs' standard variable) as s3api reads it; botocore reads only
            # AWS_DEFAULT_REGION and the config file
            region = os.environ.get("AWS_REGION") or None
            self._session = boto3.session.Session()
            self._client_obj = self._session.client("s3", config=cfg, region_name=region)
        return self._client_obj

    def _ca_bundle(self) -> str | None:
        """The CA bundle the listing used: AWS_CA_BUNDLE, or (boto3) the profile's ``ca_bundle``."""
        if self._api is not None:
            return self._api.config.ca_bundle
        try:  # botocore's resolved setting (environment, then profile)
            bundle = self._session._session.get_config_variable("ca_bundle")
        except AttributeError:  # no boto3 session (a client handed in), or another boto3
            bundle = None
        return bundle or os.environ.get("AWS_CA_BUNDLE") or None

    def resolve(self, ref: Ref) -> Listing:
        bucket, _, prefix = ref.location.partition("/")
        if self._api is not None and bucket.endswith("--x-s3"):
            self._api = None  # S3 Express directory buckets: their own endpoints and session auth (boto3)
        pin = ref.revision if ref.revision and not _DIGEST.fullmatch(ref.revision) else None
        if pin == self.default_revision:
            pin = None
        if pin:  # an S3 version id of the object PREFIX names
            head = self._call(ref, lambda: self._head(bucket, prefix, pin)) if prefix else None
            if head is not None and head.get("VersionId") != pin:
                head = None  # a store without versioning answers with the live object: not that version
            if head is None:
                raise NotFoundError(f"{ref}: {pin!r} is neither a revision of this prefix (40 hex digits) "
                                    f"nor a version id of the object s3://{bucket}/{prefix}; check the ref")
            objects = [head]
        else:
            objects = self._list(ref, bucket, prefix)
        if self._api is not None:
            self._api.close()  # the listing's connection; the downloads open their own
        revision = listing_digest((o["Key"], o["Size"], o.get("ETag"), o.get("VersionId")) for o in objects)
        if ref.revision and not pin and ref.revision != revision:
            raise NotFoundError(f"{ref}: the objects under this prefix changed since revision {ref.revision} "
                                f"(now {revision}); pull {ref.with_revision(None)} for the current one")
        files = []
        bundle = self._ca_bundle()
        base = prefix + "/" if prefix and not (len(objects) == 1 and objects[0]["Key"] == prefix) else ""
        for o in objects:
            key = o["Key"]
            rel = key[len(base):] if base else key.rsplit("/", 1)[-1]
            params = {"Bucket": bucket, "Key": key}
            version = o.get("VersionId")
            if version and version != "null":
                params["VersionId"] = version
            url = self._presign(ref, params)
            if bundle:  # the downloads verify S3's certificate as the listing did
                _http.trust_ca_bundle(url, bundle)
            etag = o.get("ETag")
            files.append(S3File(
                path=rel, size=int(o["Size"]), url=url, etag=etag,
                headers={"If-Match": etag} if etag else {}, probe=False,
                object_id=f"s3://{bucket}/{key}?versionId={version or ''}",
            ))
        # A version id stays the ref's name (fetch records it, pointing at the revision), so the same ref
        # is served from the cache offline.
        return Listing(ref if pin else ref.with_revision(revision), revision, tuple(files))

    # -- S3 calls ------------------------------------------------------------------------------------
    def _list(self, ref: Ref, bucket: str, prefix: str) -> list[dict]:
        """Every live object under ``prefix/``."""
        folder = prefix + "/" if prefix else ""
        # ListObjectsV2: the live objects only. (ListObjectVersions walks every historical version of
        # every key: measured 3.3 s against moto for one 1 GB object, 5 ms for ListObjectsV2.) The
        # listed ETag, sent as If-Match on every GET, already pins the exact bytes that were listed.
        objects = self._call(ref, lambda: self._list_v2(bucket, folder))
        objects = [o for o in objects if not o["Key"].endswith("/")]  # "directory" markers
        if not objects and prefix:  # PREFIX may name a single object
            head = self._call(ref, lambda: self._head(bucket, prefix))
            if head is not None:
                objects = [head]
        if not objects:
            raise NotFoundError(f"{ref}: no objects under s3://{bucket}/{folder}; check the bucket and prefix")
        return objects

    def _head(self, bucket: str, key: str, version: str | None = None) -> dict | None:
        if self._api is not None:
            return self._api.head(bucket, key, version)
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or (
                    version and code in ("400", "InvalidArgument")):  # a malformed version id
                return None
            raise
        return {"Key": key, "Size": head["ContentLength"], "ETag": head.get("ETag"),
                "VersionId": head.get("VersionId")}

    def _list_v2(self, bucket: str, folder: str) -> list[dict]:
        if self._api is not None:
            return self._api.list_v2(bucket, folder)
        out: list[dict] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
            out.extend(page.get("Contents", ()))
        return out

    def _presign(self, ref: Ref, params: dict) -> str:
        if self._api is not None:
            return self._api.presign_get(params["Bucket"], params["Key"], URL_TTL, params.get("VersionId"))
        return self._call(ref, lambda: self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=URL_TTL))

    def _call(self, ref: Ref, fn):
        """Run one S3 call, turning its errors (s3api's or boto3's) into warmstart's one-line errors."""
        if self._api is not None:
            try:
                return fn()
            except s3api.S3Error as exc:
                if exc.status == -1:
                    raise ConfigError(f"{ref}: TLS verification of the S3 endpoint failed ({exc.message}); set "
                                      "AWS_CA_BUNDLE to the CA certificate that signed it") from None
                if exc.status == 0:
                    endpoint = self._api.config.endpoint or self._api.config.url(ref.location.split("/")[0])
                    raise OriginUnreachable(f"the S3 endpoint {endpoint} is unreachable "
                                            f"({exc.code}); check AWS_ENDPOINT_URL and the network") from None
                raise _error_for(ref, exc.code, exc.status, exc.message) from None
        from botocore import exceptions as bx

        try:
            return fn()
        except (bx.NoCredentialsError, bx.PartialCredentialsError):
            raise GatedRepoError(f"{ref}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE") from None
        except bx.SSLError as exc:
            raise ConfigError(f"{ref}: TLS verification of the S3 endpoint failed ({exc}); set AWS_CA_BUNDLE "
                              "to the CA certificate that signed it") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
            raise OriginUnreachable(f"the S3 endpoint is unreachable ({type(exc).__name__}); check "
                                    "AWS_ENDPOINT_URL and the network") from None
        except bx.ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise _error_for(ref, str(err.get("Code", "")), status, err.get("Message", "")) from None
        except bx.BotoCoreError as exc:
            raise TransferError(f"{ref}: {exc}") from None


def _error_for(ref: Ref, code: str, status: int | None, message: str) -> Exception:
    """The one-line error for an S3 error answer."""
    if code in ("NoSuchBucket",):
        return NotFoundError(f"{ref}: bucket {ref.location.split('/')[0]!r} does not exist; "
                         "check the name and AWS_ENDPOINT_URL")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return NotFoundError(f"{ref}: not found; check the bucket and prefix")
    if code in _AUTH_CODES or status in (401, 403):
        return GatedRepoError(f"{ref}: access denied ({code or status}); check the AWS credentials "
                          "and the bucket policy")
    if code in ("SlowDown", "Throttling", "503") or (status or 0) >= 500:
        return TransferError(f"{ref}: the store kept throttling or failing ({code or status}) after "
                          "retries; try again later")
    return TransferError(f"{ref}: S3 error {code or status}: {message}")

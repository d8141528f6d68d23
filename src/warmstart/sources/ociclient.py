"""A small OCI distribution-spec client: auth challenges, manifests, blob uploads.

Auth as registries use it: a request answered ``401`` with ``WWW-Authenticate: Bearer realm=…,
service=…,scope=…`` gets a token from the realm (with basic credentials when we have them) and is
sent again with ``Authorization: Bearer <token>``; ``WWW-Authenticate: Basic`` gets the credentials
directly. Credentials come from a docker-style ``config.json`` (``{"auths": {"HOST": {"auth":
base64("user:pass")}}}``; see ``Settings.registry_auth_file``).

HTTPS by default; plain HTTP for registries on loopback (as container tools treat them) or listed in
``WARMSTART_INSECURE_REGISTRIES``.

>>> parse_challenge('Bearer realm="https://auth.io/token",service="reg",scope="repository:a/b:pull"')
('bearer', {'realm': 'https://auth.io/token', 'service': 'reg', 'scope': 'repository:a/b:pull'})
>>> registry_scheme("127.0.0.1:5000", ()), registry_scheme("ghcr.io", ())
('http', 'https')
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import logging
import re
import urllib.parse
from pathlib import Path
from typing import BinaryIO

from .. import _http
from ..config import Settings
from ..errors import GatedRepoError, NotFoundError, TransferError
from .base import OriginUnreachable

log = logging.getLogger(__name__)

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate`` -> (scheme in lower case, parameters)."""
    scheme, _, rest = value.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}
    return scheme.lower(), params


def registry_scheme(host: str, insecure: tuple[str, ...]) -> str:
    """``http`` for loopback registries and those marked insecure, else ``https``."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if host in insecure or name in insecure or name == "localhost":
        return "http"
    try:
        return "http" if ipaddress.ip_address(name).is_loopback else "https"
    except ValueError:
        return "https"


def load_credentials(path: Path | None, host: str) -> tuple[str, str] | None:
    """(user, password) for ``host`` from a docker-style config.json, if any."""
    if path is None:
        return None
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/"):
        entry = auths.get(key)
        if isinstance(entry, dict):
            if entry.get("auth"):
                user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
                return user, pw
            if entry.get("username"):
                return entry["username"], entry.get("password", "")
    return None


class Registry:
    """One registry and repository; remembers the Authorization header that worked.

    >>> r = Registry(Settings.from_env({}), "127.0.0.1:5000", "models/tiny")   # doctest: +SKIP
    >>> manifest, digest = r.get_manifest("v1")                                 # doctest: +SKIP
    """

    def __init__(self, settings: Settings, host: str, repo: str, *, push: bool = False,
                 credentials: tuple[str, str] | None = None) -> None:
        self.host, self.repo = host, repo
        self.base = f"{registry_scheme(host, settings.insecure_registries)}://{host}"
        self.credentials = credentials or load_credentials(settings.registry_auth_file, host)
        self.actions = "pull,push" if push else "pull"
        self.auth: dict[str, str] = {}
        self.client = _http.Client(timeout=60.0)
        self.metadata_limit = settings.metadata_limit  # manifests, indexes, token answers, error bodies

    def close(self) -> None:
        self.client.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repo}/{path}"

    # -- requests ---------------------------------------------------------------------------------
    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                body: bytes | BinaryIO | None = None, length: int | None = None) -> tuple[int, dict, bytes]:
        """One request with auth (a 401 is answered once); returns (status, headers, small body)."""
        for attempt in range(2):
            hdrs = {**self.auth, **(headers or {})}
            try:
                status, rh, data = self._send(method, url, hdrs, body, length)
            except TransferError:
                raise  # an answer too large or too slow: not an unreachable registry
            except (OSError, http.client.HTTPException) as exc:
                raise OriginUnreachable(f"registry {self.host} is unreachable ({type(exc).__name__}); check "
                                        "the name, or WARMSTART_INSECURE_REGISTRIES for a plain-HTTP one") from None
            if status != 401:
                return status, rh, data
            if attempt == 0:
                self._authenticate(rh.get("www-authenticate", ""))
                if hasattr(body, "seek"):
                    body.seek(0)  # type: ignore[union-attr]
        raise GatedRepoError(f"oci://{self.host}/{self.repo}: authentication failed; check the credentials in "
                             "the registry auth file (REGISTRY_AUTH_FILE or ~/.docker/config.json)")

    def _send(self, method, url, hdrs, body, length):
        if body is None:
            resp = self.client.request(method, url, hdrs)
            try:
                data = self._read(resp)
            except TransferError:
                self.client.drop(url)
                raise
            return resp.status, _http.headers_of(resp), data
        p = urllib.parse.urlsplit(url)
        conn, absolute = _http.connect(p.scheme, p.netloc, 120)
        try:
            path = p.path + (f"?{p.query}" if p.query else "")
            size = length if length is not None else len(body)  # type: ignore[arg-type]
            headers = {**hdrs, "Content-Length": str(size)}
            if absolute is not None:  # plain HTTP through a proxy
                path, headers = f"{p.scheme}://{p.netloc}{path}", {**headers, **absolute}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, _http.headers_of(resp), self._read(resp)
        finally:
            conn.close()

    def _read(self, resp: http.client.HTTPResponse) -> bytes:
        return _http.read_bounded(resp, self.metadata_limit, what=f"the answer of registry {self.host}",
                                  hint="check the registry (or raise WARMSTART_METADATA_LIMIT)")

    def _authenticate(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        creds = self.credentials
        if scheme == "basic":
            if not creds:
                raise GatedRepoError(f"oci://{self.host}/{self.repo}: the registry needs a user and password; "
                                     "add them to REGISTRY_AUTH_FILE or ~/.docker/config.json")
            self.auth = {"Authorization": "Basic " + base64.b64encode(":".join(creds).encode()).decode()}
            return
        if scheme != "bearer" or "realm" not in params:
            raise GatedRepoError(f"oci://{self.host}/{self.repo}: unsupported auth challenge {challenge!r}")
        query = {"service": params.get("service", ""),
                 "scope": params.get("scope") or f"repository:{self.repo}:{self.actions}"}
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
        hdrs = {}
        if creds:
            hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(creds).encode()).decode()
        try:
            resp = self.client.request("GET", url, hdrs)
            data = self._read(resp)
        except TransferError:
            self.client.drop(url)
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise OriginUnreachable(f"token service of {self.host} is unreachable ({type(exc).__name__})") from None
        if resp.status in (401, 403):
            raise GatedRepoError(f"oci://{self.host}/{self.repo}: the token service refused the credentials "
                                 f"(HTTP {resp.status}); check REGISTRY_AUTH_FILE or ~/.docker/config.json")
        if resp.status != 200:
            raise TransferError(f"token service of {self.host} answered HTTP {resp.status}")
        body = _http.load_json(data, what=f"the token service of {self.host}'s answer", hint="check the registry")
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise TransferError(f"token service of {self.host} returned no token")
        self.auth = {"Authorization": f"Bearer {token}"}

    def check(self, status: int, what: str, data: bytes = b"") -> None:
        """Raise the one-line error for a failed registry answer."""
        if status < 300:
            return
        ref = f"oci://{self.host}/{self.repo}"
        if status == 404:
            raise NotFoundError(f"{ref}: {what} not found; check the repository, tag or digest")
        if status in (401, 403):
            raise GatedRepoError(f"{ref}: access denied to {what} (HTTP {status}); check the credentials")
        detail = data[:200].decode(errors="replace").strip()
        raise TransferError(f"{ref}: {what}: HTTP {status} {detail}".strip())

    # -- high level -----------------------------------------------------------------------------
    def get_manifest(self, reference: str) -> tuple[bytes, dict[str, str]]:
        """The raw manifest (or index) bytes and the response headers; retries throttling (429/503)."""
        import time

        for attempt in range(5):
            status, headers, data = self.request("GET", self.url(f"manifests/{reference}"),
                                                 {"Accept": ", ".join(MANIFEST_TYPES)})
            if status not in (429, 502, 503, 504) or attempt == 4:
                break
            time.sleep(min(8.0, float(headers.get("retry-after") or 0.25 * 2**attempt)))
        if status in (429, 503):
            raise TransferError(f"oci://{self.host}/{self.repo}: the registry kept throttling (HTTP {status}) "
                                "after 5 tries; try again later")
        self.check(status, f"manifest {reference!r}", data)
        try:  # the caller parses it; a manifest nested too deeply for the parser is refused here
            json.loads(data)
        except RecursionError:
            raise TransferError(f"oci://{self.host}/{self.repo}: the manifest {reference!r} is nested too deeply "
                                "to be a manifest; check the registry") from None
        except ValueError:
            pass  # not JSON: the caller says so
        return data, headers

"""A small OCI distribution-spec client: auth challenges, manifests, blob uploads.

Auth as registries use it: a request answered ``401`` with ``WWW-Authenticate: Bearer realm=…,
service=…,scope=…`` gets a token from the realm (with basic credentials when we have them) and is
sent again with ``Authorization: Bearer <token>``; ``WWW-Authenticate: Basic`` gets the credentials
directly. Credentials come from a docker-style ``config.json`` (``{"auths": {"HOST": {"auth":
base64("user:pass")}}}``; see ``Settings.registry_auth_file``).

Where credentials may go (:func:`credentials_refused`): the registry's user and password go only to the
registry's own host name (any port), or to a token service whose host is listed in
``WARMSTART_OCI_AUTH_HOSTS``, and only over HTTPS, or plain HTTP to loopback. A bearer challenge
naming any other realm gets a token request without them (anonymous pull). The Authorization header
that worked is sent only to the registry's own scheme and host; blob redirects to another host
(storage, CDNs) drop it (``_http.Client.follow`` and the transfer engine).

HTTPS by default; plain HTTP for registries on loopback (as container tools treat them) or listed in
``WARMSTART_INSECURE_REGISTRIES``.

>>> parse_challenge('Bearer realm="https://auth.io/token",service="reg",scope="repository:a/b:pull"')
('bearer', {'realm': 'https://auth.io/token', 'service': 'reg', 'scope': 'repository:a/b:pull'})
>>> registry_scheme("127.0.0.1:5000", ()), registry_scheme("ghcr.io", ())
('http', 'https')
>>> credentials_refused("ghcr.io", "https://ghcr.io/token", ()) is None
True
>>> credentials_refused("ghcr.io", "https://auth.evil.example/token", ())
'auth.evil.example is not the registry ghcr.io (list it in WARMSTART_OCI_AUTH_HOSTS if it is its token service)'
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from pathlib import Path
from typing import BinaryIO

from .. import _http
from .._retry import METADATA
from ..config import Settings
from ..errors import GatedRepoError, NotFoundError, TransferError
from .base import OriginUnreachable

# A token answer is a small JSON object; anything larger is refused before it is parsed.
MAX_TOKEN_ANSWER = 1 << 20

log = logging.getLogger(__name__)

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate`` -> (scheme in lower case, parameters)."""
    scheme, _, rest = value.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}
    return scheme.lower(), params


_TOKEN = re.compile(r"[\x21-\x7e]{1,65536}")  # printable, no spaces: what may go into a header


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the number form), or None."""
    try:
        return float(value or "")
    except ValueError:
        return None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


def registry_scheme(host: str, insecure: tuple[str, ...]) -> str:
    """``http`` for loopback registries and those marked insecure, else ``https``."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if host in insecure or name in insecure or name == "localhost":
        return "http"
    try:
        return "http" if ipaddress.ip_address(name).is_loopback else "https"
    except ValueError:
        return "https"


def _is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def credentials_refused(registry_host: str, url: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """Why the user and password of ``registry_host`` must not be sent to ``url``, or None when they
    may: ``url`` is HTTPS (or plain HTTP to a loopback address) and its host is the registry's own
    host name (any port) or is listed in ``allowed_hosts`` (``host`` or ``host:port``).

    >>> credentials_refused("reg.example:5000", "https://reg.example/token", ())   # same host, other port
    >>> credentials_refused("reg.example", "http://reg.example/token", ())
    'http://reg.example is plain HTTP to a host that is not loopback'
    >>> credentials_refused("127.0.0.1:5000", "http://127.0.0.1:5001/token", ())
    >>> credentials_refused("reg.example", "https://auth.example/token", ("auth.example",))
    """
    try:
        p = urllib.parse.urlsplit(url)
        name, port = (p.hostname or "").lower(), p.port
    except ValueError:
        return f"{url!r} is not a valid URL"
    if p.scheme not in ("http", "https") or not name:
        return f"{url!r} is not an http(s) URL"
    if p.scheme == "http" and not _is_loopback(name):
        return f"http://{p.netloc} is plain HTTP to a host that is not loopback"
    try:
        own = (urllib.parse.urlsplit("//" + registry_host).hostname or "").lower()
    except ValueError:
        own = ""
    allowed = {h.strip().lower() for h in allowed_hosts}
    if name == own or name in allowed or (port is not None and f"{name}:{port}" in allowed):
        return None
    return (f"{name} is not the registry {registry_host} (list it in WARMSTART_OCI_AUTH_HOSTS if it is its "
            "token service)")


def load_credentials(path: Path | None, host: str) -> tuple[str, str] | None:
    """(user, password) for ``host`` from a docker-style config.json, if any (None for an unreadable
    or malformed file: the pull then goes on anonymously)."""
    if path is None:
        return None
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        log.warning("%s: cannot read it (%s); going on without registry credentials", path, exc.strerror or exc)
        return None
    try:
        auths = json.loads(text).get("auths", {})
        for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/"):
            entry = auths.get(key)
            if isinstance(entry, dict):
                if entry.get("auth"):
                    user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
                    return user, pw
                if entry.get("username"):
                    return str(entry["username"]), str(entry.get("password", ""))
    except (ValueError, AttributeError, TypeError, RecursionError):
        log.warning("%s: not a docker-style config.json; going on without registry credentials", path)
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
        self.auth_hosts = settings.oci_auth_hosts
        self.actions = "pull,push" if push else "pull"
        self.auth: dict[str, str] = {}
        self.connect_timeout = settings.connect_timeout
        self.client = _http.Client(timeout=60.0, connect_timeout=self.connect_timeout)
        self.metadata_limit = settings.metadata_limit  # manifests, indexes, token answers, error bodies

    def close(self) -> None:
        self.client.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repo}/{path}"

    # -- requests ---------------------------------------------------------------------------------
    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                body: bytes | BinaryIO | None = None, length: int | None = None) -> tuple[int, dict, bytes]:
        """One request with auth (a 401 is answered once); returns (status, headers, small body)."""
        own = _http.host_key(url) == _http.host_key(self.base)
        for attempt in range(2):
            # what authenticated us goes to the registry itself only, never to a Location elsewhere
            hdrs = {**(self.auth if own else {}), **(headers or {})}
            status, rh, data = self._send_retrying(method, url, hdrs, body, length)
            if status != 401 or not own:  # another host's challenge is not ours to answer
                return status, rh, data
            if attempt == 0:
                self._authenticate(rh.get("www-authenticate", ""))
                if hasattr(body, "seek"):
                    body.seek(0)  # type: ignore[union-attr]
        raise GatedRepoError(f"oci://{self.host}/{self.repo}: authentication failed; check the credentials in "
                             "the registry auth file (REGISTRY_AUTH_FILE or ~/.docker/config.json)")

    def _send_retrying(self, method, url, hdrs, body, length) -> tuple[int, dict, bytes]:
        """:meth:`_send`, again after a lost connection (:data:`warmstart._retry.METADATA`); a registry
        that refuses connections, does not resolve or is unroutable fails at once (OriginUnreachable)."""
        for attempt in METADATA.attempts_left():
            try:
                return self._send(method, url, hdrs, body, length)
            except TransferError:
                raise  # an answer too large or too slow: not an unreachable registry
            except (OSError, http.client.HTTPException) as exc:
                rewind = body is None or isinstance(body, bytes) or hasattr(body, "seek")
                if METADATA.gives_up(exc) or METADATA.last(attempt) or not rewind:
                    raise OriginUnreachable(f"registry {self.host} is unreachable ({type(exc).__name__}); check "
                                            "the name, or WARMSTART_INSECURE_REGISTRIES for a plain-HTTP one") from None
                self.client.drop(url)
                time.sleep(METADATA.delay(attempt))
                if hasattr(body, "seek"):
                    body.seek(0)  # type: ignore[union-attr]
        raise AssertionError("unreachable")

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
        conn, absolute = _http.connect(p.scheme, p.netloc, 120, self.connect_timeout)
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

    def _basic(self) -> dict[str, str]:
        assert self.credentials is not None
        return {"Authorization": "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()}

    def _read(self, resp: http.client.HTTPResponse) -> bytes:
        return _http.read_bounded(resp, self.metadata_limit, what=f"the answer of registry {self.host}",
                                  hint="check the registry (or raise WARMSTART_METADATA_LIMIT)")

    def _authenticate(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        creds = self.credentials
        ref = f"oci://{self.host}/{self.repo}"
        if scheme == "basic":
            if not creds:
                raise GatedRepoError(f"{ref}: the registry needs a user and password; "
                                     "add them to REGISTRY_AUTH_FILE or ~/.docker/config.json")
            why = credentials_refused(self.host, self.base, ())
            if why:
                raise GatedRepoError(f"{ref}: not sending the registry's password: {why}; serve the registry "
                                     "over HTTPS")
            self.auth = self._basic()
            return
        if scheme != "bearer" or "realm" not in params:
            raise GatedRepoError(f"{ref}: unsupported auth challenge {_printable(challenge)!r}")
        realm = params["realm"]
        try:
            p = urllib.parse.urlsplit(realm)
            ok = p.scheme in ("http", "https") and bool(p.hostname) and (p.port or 1) > 0
        except ValueError:  # a malformed host or port
            ok = False
        if not ok:
            raise GatedRepoError(f"{ref}: the registry's token realm {_printable(realm)!r} is not an http(s) URL")
        query = {"service": params.get("service", ""),
                 "scope": params.get("scope") or f"repository:{self.repo}:{self.actions}"}
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        hdrs = {}
        refused = credentials_refused(self.host, realm, self.auth_hosts) if creds else None
        if creds and refused:
            log.warning("%s: asking the token service for an anonymous token, without the registry's password: "
                        "%s", ref, refused)
        elif creds:
            hdrs = self._basic()
        resp, data = self._token_answer(url, hdrs)
        if resp.status in (401, 403):
            hint = (f"the registry's password was not sent to it ({refused})" if refused else
                    "check REGISTRY_AUTH_FILE or ~/.docker/config.json")
            raise GatedRepoError(f"{ref}: the token service refused the request (HTTP {resp.status}); {hint}")
        if resp.status != 200:
            raise TransferError(f"token service of {self.host} answered HTTP {resp.status}")
        body = _http.load_json(data, what=f"the token service of {self.host}'s answer", hint="check the registry")
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not _TOKEN.fullmatch(token):
            raise TransferError(f"token service of {self.host} returned no usable token")
        self.auth = {"Authorization": f"Bearer {token}"}

    def _token_answer(self, url: str, hdrs: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
        """The token service's answer, on a connection of its own (the realm may be another host);
        lost connections and 429/5xx answers are retried (:data:`warmstart._retry.METADATA`), a service
        that refuses connections fails at once."""
        client = _http.Client(timeout=60.0, connect_timeout=self.connect_timeout)
        try:
            for attempt in METADATA.attempts_left():
                try:
                    resp = client.request("GET", url, hdrs)
                    data = _http.read_bounded(resp, MAX_TOKEN_ANSWER,
                                              what=f"the token service of {self.host}'s answer",
                                              hint="check the registry")
                except TransferError:
                    raise
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    if METADATA.gives_up(exc) or METADATA.last(attempt) or isinstance(exc, ValueError):
                        raise OriginUnreachable(f"token service of {self.host} is unreachable "
                                                f"({type(exc).__name__})") from None
                    client.drop()
                    time.sleep(METADATA.delay(attempt))
                    continue
                if resp.status in (429, 502, 503, 504) and not METADATA.last(attempt):
                    time.sleep(METADATA.delay(attempt, retry_after=_seconds(resp.getheader("retry-after"))))
                    continue
                return resp, data
        finally:
            client.close()
        raise AssertionError("unreachable")

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
        """The raw manifest (or index) bytes and the response headers; retries throttling (429/5xx) as
        :data:`warmstart._retry.METADATA` says, honouring ``Retry-After``."""
        for attempt in METADATA.attempts_left():
            status, headers, data = self.request("GET", self.url(f"manifests/{reference}"),
                                                 {"Accept": ", ".join(MANIFEST_TYPES)})
            if status not in (429, 502, 503, 504) or METADATA.last(attempt):
                break
            time.sleep(METADATA.delay(attempt, retry_after=_seconds(headers.get("retry-after"))))
        if status in (429, 503):
            raise TransferError(f"oci://{self.host}/{self.repo}: the registry kept throttling (HTTP {status}) "
                                f"after {METADATA.attempts} tries; try again later")
        self.check(status, f"manifest {reference!r}", data)
        try:  # the caller parses it; a manifest nested too deeply for the parser is refused here
            json.loads(data)
        except RecursionError:
            raise TransferError(f"oci://{self.host}/{self.repo}: the manifest {reference!r} is nested too deeply "
                                "to be a manifest; check the registry") from None
        except ValueError:
            pass  # not JSON: the caller says so
        return data, headers

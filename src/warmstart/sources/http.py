"""Any file over HTTP(S): ``https://HOST/PATH`` (or ``http://``).

One HEAD (following redirects) learns the size, whether the origin serves ranges (``Accept-Ranges:
bytes``), and its ETag or Last-Modified, which make the revision. Ranged GETs then carry
``If-Match`` (a strong ETag) or ``If-Unmodified-Since``, so a file that changes mid-download fails
with HTTP 412 instead of mixing two versions. Without Range support the engine uses one stream.

The model's name in the cache is the URL without query string, fragment and ``user:password@``
(:meth:`HttpSource.parse_ref`): a signed URL (S3 presigned, CDN signatures, tokens) is requested as given but never
printed, logged or stored, and a fresh signature of the same object is a cache hit. Credentials in
the URL are sent as HTTP Basic authentication, and not to another host after a redirect.

>>> http_revision('"abc"', None, 3)[:8]
'255915d5'
>>> file_name("https://host/models/a%20b.safetensors?sig=1")
'a b.safetensors'

The ref is named, printed and stored without the query string, fragment and ``user:password@``; the URL
as given is kept apart, for the requests only:

>>> text = "https://u:pw@cdn.example.com/m/model.safetensors?X-Amz-Signature=abc"
>>> r = HttpSource.parse_ref("https", text[8:], text, False)
>>> r
Ref(scheme='https', location='https://cdn.example.com/m/model.safetensors', revision=None)
>>> r.request_url == text, str(r) == r.key == r.location
(True, True)
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import urllib.parse

from .. import _http
from .._redact import redact_url
from ..errors import GatedRepoError, NotFoundError, TransferError
from ..refs import Malformed, Ref
from .base import Listing, OriginUnreachable, RemoteFile, Source, safe_relpath

log = logging.getLogger(__name__)


def http_revision(etag: str | None, last_modified: str | None, size: int | None) -> str:
    """A revision from the origin's version tags: 40 hex digits of sha256(ETag, Last-Modified, size)."""
    return hashlib.sha256(f"{etag or ''}\0{last_modified or ''}\0{size}".encode()).hexdigest()[:40]


def file_name(url: str) -> str:
    """The file's name in the snapshot: the last path segment of the URL (``index`` when empty)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]).rsplit("/", 1)[-1] or "index"
    if name in (".", ".."):
        name = "index"
    return safe_relpath(name)


class HttpSource(Source):
    """One file at an HTTP(S) URL."""

    schemes = ("http", "https")
    forms = ("https://HOST/PATH",)
    default_revision = "latest"

    @classmethod
    def parse_ref(cls, scheme: str, body: str, text: str, bare: bool) -> Ref:
        """The location (the cache's name for it) drops the query string, fragment and userinfo;
        ``request_url`` keeps the URL as given."""
        if any(c.isspace() or ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text):
            raise Malformed("a URL has no spaces or control characters (percent-encode them)")
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:  # its text may quote a password: not shown
            raise Malformed("malformed URL (bad host or port)") from None
        host = parts.netloc.rpartition("@")[2]
        if not parts.hostname or not host:
            raise Malformed("a URL needs a host")
        location = redact_url(text)
        if location != f"{scheme}://{host}{parts.path}":
            raise Malformed("percent-encode '@', '?' and '#' in the user name, password and query")
        return cls.make_ref(scheme, location, request_url=text if text != location else None)

    @classmethod
    def format_ref(cls, ref: Ref) -> str:
        return ref.location  # the URL: a revision is what the origin's tags say, never written

    @classmethod
    def key(cls, ref: Ref) -> str:
        return _http.redact(ref.location)

    def resolve(self, ref: Ref) -> Listing:
        url, auth = request_target(ref.request_url or ref.location)
        client = _http.Client(timeout=30.0, connect_timeout=self.settings.connect_timeout)
        try:
            final, resp = client.follow("HEAD", url, auth)
            _http.drain(resp)
            headers = _http.headers_of(resp)
            if resp.status == 405:  # no HEAD: ask for the first byte instead
                final, resp = client.follow("GET", url, {"Range": "bytes=0-0", **auth})
                _http.drain(resp)
                headers = _http.headers_of(resp)
        except _http.HTTPStatusError as exc:
            raise TransferError(f"{ref}: {exc}") from None
        except TransferError:
            raise  # a refused redirect: the origin answered, it is not unreachable
        except http.client.HTTPException as exc:  # a malformed answer (BadStatusLine…): never echo its bytes
            raise TransferError(f"{_http.redact(url)} did not answer in HTTP ({type(exc).__name__}); check the "
                                "URL and the origin") from None
        except (OSError, ConnectionError) as exc:
            raise OriginUnreachable(f"{_http.redact(url)} is unreachable ({type(exc).__name__})") from None
        finally:
            client.close()
        status = resp.status
        if status == 404 or status == 410:
            raise NotFoundError(f"{ref}: not found (HTTP {status}); check the URL")
        if status in (401, 403):
            raise GatedRepoError(f"{ref}: access denied (HTTP {status}); the URL needs credentials or a "
                                 "fresh signature")
        if status >= 500 or status in (408, 429):
            raise OriginUnreachable(f"{_http.redact(url)} answered HTTP {status}")
        if status not in (200, 206):
            raise TransferError(f"{ref}: unexpected HTTP {status} from {_http.redact(final)}")
        size = _size(status, headers)
        ranges = status == 206 or headers.get("accept-ranges", "").lower() == "bytes"
        etag = headers.get("etag")
        last_modified = headers.get("last-modified")
        cond: dict[str, str] = {}
        if etag and not etag.startswith("W/"):
            cond["If-Match"] = etag  # strong ETags only: If-Match uses the strong comparison
        elif last_modified:
            cond["If-Unmodified-Since"] = last_modified
        revision = http_revision(etag, last_modified, size)
        f = RemoteFile(path=file_name(url), size=size, url=url, etag=etag or last_modified,
                       headers={**cond, **auth}, ranges=ranges and size is not None,
                       probe=final != url)  # ranged GETs go straight to URL unless it redirects
        return Listing(ref, revision, (f,))


def request_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL to request (userinfo and fragment removed, query kept) and the Basic ``Authorization``
    header its ``user:password@`` asks for (none without).

    >>> request_target("https://u:p%40ss@h/x?sig=1#f")
    ('https://h/x?sig=1', {'Authorization': 'Basic dTpwQHNz'})
    """
    p = urllib.parse.urlsplit(url)
    host = p.netloc.rpartition("@")[2]
    target = urllib.parse.urlunsplit((p.scheme, host, p.path, p.query, ""))
    if p.username is None:
        return target, {}
    creds = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
    return target, {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()}


def _size(status: int, headers: dict[str, str]) -> int | None:
    if status == 206:
        cr = _http.parse_content_range(headers.get("content-range"))
        return cr[2] if cr else None
    return _http.content_length(headers.get("content-length"))  # None when absent or not a plain number

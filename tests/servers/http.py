"""A plain HTTP file origin on loopback: a directory or a dict of files, with toggleable Range,
ETag and Last-Modified, and the shaping, faults and counters of :mod:`.shaping`.

Example::

    with HttpOrigin({"w/model.safetensors": Path(...)}, ranges=True) as origin:
        url = origin.url("w/model.safetensors")          # http://127.0.0.1:P/w/model.safetensors
        origin.faults.add("reset", path_glob="/w/*", after_bytes=1 << 20)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

from .shaping import Link, OriginHandler, OriginServer, ServedOrigin, Source


class _HttpServer(OriginServer):
    origin: HttpOrigin


class HttpFileHandler(OriginHandler):
    server: _HttpServer

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self.begin():
            return
        origin = self.server.origin
        found = origin.lookup(self.url_path.lstrip("/"))
        if found is None:
            self.send_json(404, {"error": "Not Found"})
            return
        source, size, etag, mtime = found
        headers = {"Content-Type": "application/octet-stream"}
        if origin.etag:
            headers["ETag"] = f'"{etag}"'
        if origin.last_modified:
            headers["Last-Modified"] = formatdate(mtime, usegmt=True)
        inm = self.headers.get("If-None-Match")
        if origin.etag and inm and inm.strip() in (f'"{etag}"', "*"):
            self.send_empty(304, {k: v for k, v in headers.items() if k != "Content-Type"})
            return
        self.send_resource(source, size, headers, ranges=origin.ranges)


class HttpOrigin(ServedOrigin):
    """Serves ``files`` (``{path: bytes | file}``) or every file under a directory.

    ``ranges``/``etag``/``last_modified`` may be toggled while it runs. ETags are the content's sha1
    for bytes and ``"<mtime_ns hex>-<size hex>"`` for files on disk (as nginx does, cheap to compute).
    """

    def __init__(
        self,
        files: Mapping[str, bytes | str | os.PathLike] | str | os.PathLike,
        *,
        ranges: bool = True,
        etag: bool = True,
        last_modified: bool = True,
        link: Link | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.root: Path | None = None
        self.files: dict[str, bytes | Path] = {}
        if isinstance(files, (str, os.PathLike)):
            self.root = Path(files)
        else:
            for path, src in files.items():
                self.put(path, src)
        self.ranges, self.etag, self.last_modified = ranges, etag, last_modified
        self._server = _HttpServer((host, 0), HttpFileHandler, link=link)
        self._server.origin = self

    def put(self, path: str, source: bytes | str | os.PathLike) -> None:
        """Add or replace a file while serving."""
        self.files[path.lstrip("/")] = source if isinstance(source, bytes) else Path(source)

    def lookup(self, path: str) -> tuple[Source, int, str, float] | None:
        src = self.files.get(path)
        if src is None and self.root is not None:
            candidate = (self.root / path).resolve()
            if candidate.is_file() and candidate.is_relative_to(self.root.resolve()):
                src = candidate
        if src is None:
            return None
        if isinstance(src, Path):
            st = src.stat()
            return src, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime
        return src, len(src), hashlib.sha1(src).hexdigest(), 1_700_000_000.0

    def url(self, path: str) -> str:
        return f"{self.endpoint}/{quote(path.lstrip('/'))}"

    def reset(self) -> None:
        """Between tests: zero counters, drop faults, unshape, restore Range/ETag/Last-Modified."""
        super().reset()
        self.ranges = self.etag = self.last_modified = True

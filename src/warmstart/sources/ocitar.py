"""OCI tar layers (``tar`` and ``tar+gzip``): the unpack hook the pull pipeline calls on a fetched,
verified layer blob (see :class:`~warmstart.sources.base.Unpacker`).

A layer is read twice. :func:`scan_tar` reads only the headers and adds up the sizes of the entries
(no annotation is trusted for this), stopping with :class:`CacheFullError` as soon as the total passes
the room the pipeline gives it, so a decompression bomb costs no disk and at most that much inflating.
:meth:`TarLayers.unpack` then streams every regular entry into the pipeline's sink, which caps every
write by the declared sizes and the count. An entry that would escape the snapshot, is a link, device,
fifo or sparse file, appears twice, or has the name of a raw layer (or of another layer's entry) fails
the pull before anything is published.

>>> TarLayers(()).unpacks(RemoteFile(".layers/x.tar", 1, "u"))
False
"""

from __future__ import annotations

import gzip
import re
import tarfile
import zlib
from pathlib import Path

from ..config import format_size
from ..errors import CacheFullError, IntegrityError, UnsafePathError
from .base import RemoteFile, Sink, Unpacker, safe_relpath


class TarLayers(Unpacker):
    """The tar layers of one listing; ``files``: the whole listing (its raw layers' names are taken)."""

    def __init__(self, files) -> None:
        #: every name the snapshot holds so far, and where it came from
        self.taken = {f.path: "a raw layer" for f in files if getattr(f, "kind", "raw") == "raw"}

    def unpacks(self, file: RemoteFile) -> bool:
        return getattr(file, "kind", "raw") == "tar"

    def label(self, file: RemoteFile) -> str:
        return f"tar layer {file.path}"

    def measure(self, file: RemoteFile, blob: Path, limit: int) -> int:
        return scan_tar(blob, file.path, getattr(file, "compression", ""), limit)

    def unpack(self, file: RemoteFile, blob: Path, sink: Sink) -> None:
        names: list[str] = []
        try:
            _extract(blob, file.path, getattr(file, "compression", ""), sink, names)
        except _TAR_ERRORS as exc:
            raise _bad_tar(file.path, f"it is not a valid tar ({exc})") from None
        _check_names(file.path, names, self.taken)


#: a layer with more entries than this is refused (every entry costs memory while it is checked)
MAX_TAR_ENTRIES = 100_000
#: pax and GNU long-name headers larger than this are refused (they are read into memory)
MAX_TAR_META = 1 << 20
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)
_PLAIN_FILES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeError)


def _bad_tar(layer: str, why: str) -> IntegrityError:
    return IntegrityError(f"tar layer {layer}: {why}; its bytes match the layer digest, so the registry serves "
                          "a broken artifact: ask its publisher to rebuild it")


def _not_regular(layer: str, name: str, kind: str) -> UnsafePathError:
    return UnsafePathError(f"tar layer {layer}: entry {name!r} is a {kind}; ModelPack layers may hold only "
                           "regular files, refusing to write anything")


def _open_layer(path: Path, compression: str):
    return gzip.open(path, "rb") if compression == "gzip" else open(path, "rb")  # noqa: SIM115


def _skip(fh, n: int, layer: str) -> None:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            raise _bad_tar(layer, "it ends inside an entry")
        n -= len(chunk)


def _pax(data: bytes, layer: str) -> dict[str, str]:
    """The records of a pax extended header (``"<len> key=value\\n"``...)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        m = re.match(rb"(\d{1,7}) ", data[pos:pos + 9])
        length = int(m.group(1)) if m else 0
        if not m or length <= len(m.group(0)) or pos + length > len(data):
            raise _bad_tar(layer, "it has a malformed pax header")
        key, _, value = data[pos + len(m.group(0)):pos + length].rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def scan_tar(path: Path, layer: str, compression: str, limit: int) -> int:
    """First pass over a tar layer's headers, writing nothing: the bytes its entries unpack to.

    Raises before anything is written: :class:`CacheFullError` as soon as the declared sizes pass
    ``limit`` (so a decompression bomb costs at most ``limit`` bytes of inflating, never of disk),
    :class:`UnsafePathError` for links, devices, fifos and sparse files, and :class:`IntegrityError`
    for a malformed archive, more than :data:`MAX_TAR_ENTRIES` entries or oversized metadata headers.
    Stops where :mod:`tarfile` stops (the first zero or invalid block)."""
    total = entries = 0
    pax_size: int | None = None
    long_name: str | None = None
    try:
        with _open_layer(path, compression) as fh:
            while True:
                block = fh.read(tarfile.BLOCKSIZE)
                try:
                    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                except tarfile.EOFHeaderError:
                    break
                except tarfile.HeaderError as exc:
                    if entries == 0 and total == 0:
                        raise _bad_tar(layer, f"it is not a tar archive ({exc})") from None
                    break  # tarfile ends the archive here too
                entries += 1
                if entries > MAX_TAR_ENTRIES:
                    raise _bad_tar(layer, f"it has more than {MAX_TAR_ENTRIES} entries")
                if info.size < 0:
                    raise _bad_tar(layer, f"entry {info.name!r} has a negative size")
                if info.type in _META_TYPES:
                    if info.size > MAX_TAR_META:
                        raise _bad_tar(layer, f"it has a {info.size}-byte metadata header (at most {MAX_TAR_META})")
                    data = fh.read(-(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)[:info.size]
                    if len(data) < info.size:
                        raise _bad_tar(layer, "it ends inside a metadata header")
                    if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                        long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
                        continue
                    records = _pax(data, layer)
                    if any(k.startswith("GNU.sparse") for k in records):
                        raise _not_regular(layer, records.get("path", info.name), "sparse file")
                    if "size" in records:
                        if info.type == tarfile.XGLTYPE or not records["size"].isdigit():
                            raise _bad_tar(layer, f"it has a pax size {records['size']!r} it cannot apply")
                        pax_size = int(records["size"])
                    long_name = records.get("path", long_name)
                    continue
                name, size = long_name or info.name, info.size if pax_size is None else pax_size
                long_name, pax_size = None, None
                if info.type == tarfile.DIRTYPE:
                    continue
                if info.type not in _PLAIN_FILES:
                    kind = ("link" if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else
                            "sparse file" if info.type == tarfile.GNUTYPE_SPARSE else "special file")
                    raise _not_regular(layer, name, kind)
                total += size
                if total > limit:
                    raise CacheFullError(
                        f"tar layer {layer} unpacks to more than {format_size(limit)}, the room the cache has "
                        "(WARMSTART_MAX_SIZE, else the free disk); nothing was written. Raise the budget or "
                        "free space if the model is really this large")
                _skip(fh, -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, layer)
    except _TAR_ERRORS as exc:
        raise _bad_tar(layer, f"it is not a valid tar{'+gzip' if compression else ''} ({exc})") from None
    return total




def _check_names(layer: str, names: list[str], taken: dict[str, str]) -> None:
    """No name twice (within a layer, across layers, or over a raw layer), and no file that is also
    another file's directory: each would leave which bytes a path holds to the order of writes."""
    for name in names:
        if name in taken:
            raise UnsafePathError(f"tar layer {layer}: entry {name!r} is also in {taken[name]}; refusing an "
                                  "artifact that names one file twice")
        taken[name] = f"tar layer {layer}"
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in taken:
                raise UnsafePathError(f"tar layer {layer}: entry {name!r} lies under {parent!r}, which is a file "
                                      f"in {taken[parent]}; refusing to write anything")


def _extract(tar_path: Path, layer: str, compression: str, sink: Sink, names: list[str]) -> None:
    """Second pass: give each regular entry to ``sink`` (which caps what it writes), in archive order."""
    mode = "r:gz" if compression == "gzip" else "r:"
    with tarfile.open(tar_path, mode) as tf:
        count = 0
        while (m := tf.next()) is not None:
            count += 1
            if count > MAX_TAR_ENTRIES:
                raise _bad_tar(layer, f"it has more than {MAX_TAR_ENTRIES} entries")
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isdir():
                if name not in ("", "."):
                    safe_relpath(name.rstrip("/"))
                continue
            if not m.isreg() or m.sparse is not None or m.type == tarfile.GNUTYPE_SPARSE:
                kind = ("link" if (m.issym() or m.islnk()) else
                        "sparse file" if m.type == tarfile.GNUTYPE_SPARSE or m.sparse is not None else "special file")
                raise _not_regular(layer, m.name, kind)
            name = safe_relpath(name)
            src = tf.extractfile(m)
            assert src is not None
            with src:
                size = sink(name, m.size, src)
            names.append(name)
            if size != m.size:
                raise _bad_tar(layer, f"entry {name!r} holds {size} bytes, not the {m.size} it declares")

"""Strict parsing and validation of the safetensors format.

A safetensors file is laid out as::

    +----------------+---------------------------+-------------------------------+
    | N (u64, LE)    | header: N bytes UTF-8 JSON | data section (file_size-8-N) |
    +----------------+---------------------------+-------------------------------+
    header = {"__metadata__": {str: str}?,
              "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}

Offsets are relative to the data section. Every rule the reference library enforces is checked
here, before any tensor is built, and a few more (no duplicate names, no unknown keys); every
violation raises :class:`~warmstart.errors.InvalidCheckpointError` naming the file, the tensor and
the rule in one line. Nothing proportional to a claimed size is allocated before that size has been
bounded by the real file size.

>>> h = read_header("model.safetensors")                       # doctest: +SKIP
>>> info = h.tensors["embed.weight"]; info.dtype, info.shape    # doctest: +SKIP
('BF16', (32000, 4096))
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from warmstart.errors import InvalidCheckpointError, NotFoundError

__all__ = ["DTYPES", "DtypeSpec", "Header", "TensorInfo", "MAX_HEADER_BYTES", "read_header", "parse_header"]

logger = logging.getLogger(__name__)

#: The largest header accepted (the reference library uses the same 100 MB bound).
MAX_HEADER_BYTES = 100_000_000

_FIX = "the file is corrupt or not safetensors; re-download or re-export it"


@dataclass(frozen=True)
class DtypeSpec:
    """One safetensors dtype: its width in bits and the numpy / torch types it maps to (or None)."""

    name: str
    bits: int
    numpy: str | None  # attribute of numpy, or "ml_dtypes.<attr>"
    torch: str | None  # attribute of torch

    @property
    def itemsize(self) -> int:
        """Bytes per element in memory (sub-byte dtypes are only addressable as packed bytes)."""
        return max(1, self.bits // 8)


#: Every dtype the safetensors format defines (safetensors 0.8: the Rust ``Dtype`` enum).
DTYPES: dict[str, DtypeSpec] = {
    s.name: s
    for s in (
        DtypeSpec("BOOL", 8, "bool_", "bool"),
        DtypeSpec("U8", 8, "uint8", "uint8"),
        DtypeSpec("I8", 8, "int8", "int8"),
        DtypeSpec("U16", 16, "uint16", "uint16"),
        DtypeSpec("I16", 16, "int16", "int16"),
        DtypeSpec("U32", 32, "uint32", "uint32"),
        DtypeSpec("I32", 32, "int32", "int32"),
        DtypeSpec("U64", 64, "uint64", "uint64"),
        DtypeSpec("I64", 64, "int64", "int64"),
        DtypeSpec("F16", 16, "float16", "float16"),
        DtypeSpec("BF16", 16, "ml_dtypes.bfloat16", "bfloat16"),
        DtypeSpec("F32", 32, "float32", "float32"),
        DtypeSpec("F64", 64, "float64", "float64"),
        DtypeSpec("C64", 64, "complex64", "complex64"),
        DtypeSpec("F8_E4M3", 8, "ml_dtypes.float8_e4m3fn", "float8_e4m3fn"),
        DtypeSpec("F8_E5M2", 8, "ml_dtypes.float8_e5m2", "float8_e5m2"),
        DtypeSpec("F8_E4M3FNUZ", 8, "ml_dtypes.float8_e4m3fnuz", "float8_e4m3fnuz"),
        DtypeSpec("F8_E5M2FNUZ", 8, "ml_dtypes.float8_e5m2fnuz", "float8_e5m2fnuz"),
        DtypeSpec("F8_E8M0", 8, "ml_dtypes.float8_e8m0fnu", "float8_e8m0fnu"),
        # Sub-byte types: two F4 values per byte (torch: float4_e2m1fn_x2, last dim halved);
        # F6 has no numpy/torch type. numpy's ml_dtypes.float4_e2m1fn is unpacked (1 byte each).
        DtypeSpec("F4", 4, None, "float4_e2m1fn_x2"),
        DtypeSpec("F6_E2M3", 6, None, None),
        DtypeSpec("F6_E3M2", 6, None, None),
    )
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: ``start``/``end`` are absolute byte offsets in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Header:
    """A validated header: tensors in file order, metadata, and where the data section starts."""

    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 8
    file_size: int = 8

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start

    def keys(self) -> list[str]:
        return list(self.tensors)


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _fail(file: str, where: str, rule: str, fix: str = _FIX) -> InvalidCheckpointError:
    return InvalidCheckpointError(f"{file}: {where}: {rule}; {fix}")


def read_header(path_or_fd: str | os.PathLike[str] | int, *, name: str | None = None) -> Header:
    """Read and validate the header of a safetensors file (a path or an open file descriptor).

    >>> h = read_header("model.safetensors")       # doctest: +SKIP
    >>> sorted(h.tensors)[:2], h.metadata           # doctest: +SKIP
    (['bias', 'weight'], {'format': 'pt'})
    """
    if isinstance(path_or_fd, int):
        fd, own = path_or_fd, False
        label = name or f"<fd {fd}>"
    else:
        label = name or os.fspath(path_or_fd)
        try:
            fd, own = os.open(path_or_fd, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)), True
        except FileNotFoundError:
            raise NotFoundError(f"{label}: no such file; check the path or pull the model first") from None
        except IsADirectoryError:
            raise InvalidCheckpointError(f"{label}: is a directory, not a safetensors file; "
                                         "pass a .safetensors file or use weight_files()") from None
    try:
        size = os.fstat(fd).st_size
        if size < 8:
            raise _fail(label, "header", f"file is {size} bytes, shorter than the 8-byte length prefix")
        prefix = os.pread(fd, 8, 0)
        n = int.from_bytes(prefix, "little")
        if n > MAX_HEADER_BYTES:
            raise _fail(label, "header", f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if n > size - 8:
            raise _fail(label, "header", f"header length {n} runs past the end of the {size}-byte file "
                        "(truncated file?)")
        raw = _pread_exact(fd, n, 8)
        return parse_header(raw, file_size=size, path=label)
    finally:
        if own:
            os.close(fd)


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = os.pread(fd, n - got, offset + got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def parse_header(raw: bytes, *, file_size: int, path: str = "<memory>") -> Header:
    """Validate header bytes ``raw`` for a file of ``file_size`` bytes (see module docstring)."""
    data_start = 8 + len(raw)
    if file_size < data_start:
        raise _fail(path, "header", f"file ends inside the header ({file_size} < {data_start} bytes)")
    data_size = file_size - data_start
    if not raw.startswith(b"{"):
        raise _fail(path, "header", "header must be a JSON object starting with '{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, "header", f"header is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as d:
        raise _fail(path, f"tensor {d.key!r}", "name appears more than once in the header") from None
    except (ValueError, RecursionError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise _fail(path, "header", f"header is not valid JSON ({msg})") from None
    if not isinstance(obj, dict):
        raise _fail(path, "header", f"header must be a JSON object, got {type(obj).__name__}")

    metadata: dict[str, str] = {}
    tensors: list[tuple[str, TensorInfo]] = []
    for key, entry in obj.items():
        if key == "__metadata__":
            metadata = _check_metadata(path, entry)
            continue
        tensors.append((key, _check_entry(path, key, entry, data_start, data_size)))
    _check_coverage(path, tensors, data_start, data_size)
    return Header(path=path, tensors=dict(tensors), metadata=metadata, data_start=data_start,
                  file_size=file_size)


def _check_metadata(path: str, entry: Any) -> dict[str, str]:
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise _fail(path, "tensor '__metadata__'",
                    f"__metadata__ must be an object of strings, got {type(entry).__name__}")
    for k, v in entry.items():
        if not isinstance(v, str):
            raise _fail(path, "tensor '__metadata__'",
                        f"metadata value for {k!r} must be a string, got {type(v).__name__}")
    return dict(entry)


_KEYS = {"dtype", "shape", "data_offsets"}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entry(path: str, name: str, entry: Any, data_start: int, data_size: int) -> TensorInfo:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise _fail(path, where, f"entry must be an object, got {type(entry).__name__}")
    keys = set(entry)
    if keys != _KEYS:
        missing, extra = sorted(_KEYS - keys), sorted(keys - _KEYS)
        rule = "entry must have exactly dtype, shape, data_offsets"
        rule += f" (missing {missing})" if missing else ""
        rule += f" (unexpected {[k[:40] for k in extra[:5]]})" if extra else ""
        raise _fail(path, where, rule)
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        shown = repr(dtype)[:40]
        raise _fail(path, where, f"unknown dtype {shown}",
                    f"known dtypes: {', '.join(DTYPES)}; upgrade warmstart or re-export the file")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise _fail(path, where, "shape must be a list of integers")
    if any(d < 0 for d in shape):
        raise _fail(path, where, f"shape {shape[:8]} has a negative dimension")
    if any(d >= 2**63 for d in shape):
        raise _fail(path, where, "a shape dimension does not fit in 64 bits")
    if 0 in shape:
        # An empty tensor needs no bytes, yet torch and numpy size it from every other dimension (and raise
        # their own errors past 2^63 bytes): bound that product before anything is built.
        extent = DTYPES[dtype].itemsize
        for d in shape:
            extent *= d or 1
            if extent >= 2**63:
                raise _fail(path, where, f"shape {shape[:8]} x {dtype} overflows a 64-bit size "
                            "(an empty tensor whose other dimensions multiply past 2^63 bytes)")
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise _fail(path, where, "data_offsets must be a list of two integers [begin, end]")
    begin, end = offsets
    if begin < 0 or begin > end:
        raise _fail(path, where, f"data_offsets [{begin}, {end}] must satisfy 0 <= begin <= end")
    if end > data_size:
        raise _fail(path, where, f"data_offsets end {end} is past the {data_size}-byte data section "
                    "(truncated file?)")
    bits = DTYPES[dtype].bits
    # Bound the element count by the data section before multiplying further: no giant products.
    limit = data_size * 8
    nbits = bits if 0 not in shape else 0
    if nbits:
        for d in shape:
            nbits *= d
            if nbits > limit:
                raise _fail(path, where, f"shape {shape[:8]} x {dtype} needs more bytes than the "
                            f"{data_size}-byte data section holds")
    if nbits % 8:
        raise _fail(path, where, f"{dtype} tensor of shape {shape} does not end on a byte boundary")
    if end - begin != nbits // 8:
        raise _fail(path, where, f"data_offsets span {end - begin} bytes but shape {shape} x {dtype} "
                    f"needs {nbits // 8}")
    return TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)


def _check_coverage(path: str, tensors: list[tuple[str, TensorInfo]], data_start: int, data_size: int) -> None:
    expected, prev = data_start, None
    for name, info in sorted(tensors, key=lambda t: (t[1].start, t[1].end)):
        if info.start > expected:
            after = f" (after tensor {prev!r})" if prev is not None else " (at the data section start)"
            raise _fail(path, f"tensor {name!r}", f"{info.start - expected}-byte hole before this tensor"
                        f"{after}; the data section must be fully covered")
        if info.start < expected:
            raise _fail(path, f"tensor {name!r}", f"data_offsets overlap tensor {prev!r}")
        expected, prev = info.end, name
    if expected != data_start + data_size:
        raise _fail(path, "header", f"{data_start + data_size - expected} trailing bytes in the data "
                    "section are not covered by any tensor")


def spec_for(path: str, name: str, dtype: str, framework: str) -> DtypeSpec:
    """The dtype spec, or an error naming the tensor if ``framework`` cannot represent it."""
    spec = DTYPES[dtype]
    if (spec.torch if framework == "pt" else spec.numpy) is None:
        other = "pt" if framework != "pt" else None
        hint = f"load it with framework={other!r}" if other and spec.torch else "convert the checkpoint"
        raise _fail(path, f"tensor {name!r}", f"dtype {dtype} has no {framework} equivalent", hint)
    return spec

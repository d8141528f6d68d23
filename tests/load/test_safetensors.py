from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.load.helpers import entry, minilm_path, raw_file, write
from warmstart.errors import InvalidCheckpointError, NotFoundError
from warmstart.load.safetensors import parse_header, read_header

E = entry
VALID = {"__metadata__": {"format": "pt"}, "a": E("F32", [2, 2], 0, 16), "b": E("I8", [3], 16, 19)}

# (name, header, data, extra kwargs for raw_file, words expected in the message)
HOSTILE: list[tuple[str, object, bytes, dict, str]] = [
    ("unknown_dtype", {"a": E("F33", [1], 0, 4)}, b"\0" * 4, {}, "unknown dtype"),
    ("dtype_not_str", {"a": E(7, [1], 0, 4)}, b"\0" * 4, {}, "unknown dtype"),  # type: ignore[arg-type]
    ("offsets_past_end", {"a": E("F32", [4], 0, 16)}, b"\0" * 8, {}, "past"),
    ("overlap", {"a": E("F32", [2], 0, 8), "b": E("F32", [2], 4, 12)}, b"\0" * 12, {}, "overlap"),
    ("hole", {"a": E("F32", [1], 0, 4), "b": E("F32", [1], 8, 12)}, b"\0" * 12, {}, "hole"),
    ("trailing_data", {"a": E("F32", [1], 0, 4)}, b"\0" * 8, {}, "not covered"),
    ("span_mismatch", {"a": E("F32", [3], 0, 8), "b": E("U8", [8], 8, 16)}, b"\0" * 16, {}, "needs 12"),
    ("shape_overflow", {"a": E("F32", [2**62, 2**62, 2**62], 0, 4)}, b"\0" * 4, {}, "more bytes"),
    ("shape_huge_then_zero", {"a": E("F32", [2**64, 0], 0, 0)}, b"", {}, "64 bits"),
    ("negative_dim", {"a": E("F32", [-1, 2], 0, 8)}, b"\0" * 8, {}, "negative"),
    ("shape_float", {"a": E("F32", [1.0], 0, 4)}, b"\0" * 4, {}, "shape"),
    ("shape_bool", {"a": E("F32", [True], 0, 4)}, b"\0" * 4, {}, "shape"),
    ("shape_not_list", {"a": E("F32", 4, 0, 16)}, b"\0" * 16, {}, "shape"),  # type: ignore[arg-type]
    ("float_offsets", {"a": E("F32", [1], 0.0, 4.0)}, b"\0" * 4, {}, "data_offsets"),  # type: ignore[arg-type]
    ("begin_gt_end", {"a": E("F32", [0], 4, 0)}, b"\0" * 4, {}, "begin <= end"),
    ("negative_offset", {"a": E("F32", [1], -4, 0)}, b"\0" * 4, {}, "begin <= end"),
    ("three_offsets", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 4, {}, "two"),
    ("missing_key", {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, {}, "missing"),
    ("extra_key", {"a": {**E("F32", [1], 0, 4), "x": 1}}, b"\0" * 4, {}, "unexpected"),
    ("entry_not_object", {"a": [1, 2]}, b"", {}, "object"),
    ("metadata_non_string", {"__metadata__": {"k": 1}, "a": E("U8", [1], 0, 1)}, b"\0", {}, "metadata"),
    ("metadata_list", {"__metadata__": ["k"], "a": E("U8", [1], 0, 1)}, b"\0", {}, "metadata"),
    ("json_array", b"[1, 2, 3]", b"", {}, "header"),
    ("json_number", b"12345678", b"", {}, "header"),
    ("json_string", b'"abcdef"', b"", {}, "header"),
    ("non_utf8", b'{"\xff\xfe": 1}', b"", {}, "UTF-8"),
    ("trailing_garbage", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}} xx', b"\0", {}, "JSON"),
    ("truncated_json", b'{"a": {"dtype": "U8", ', b"", {}, "JSON"),
    ("duplicate_names", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
     b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', b"\0\0", {}, "more than once"),
    ("deep_nesting", b"{\"a\": " + b"[" * 100000 + b"]" * 100000 + b"}", b"", {}, "header"),
    ("huge_int", b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 1]}}', b"", {}, None),
    ("header_len_past_end", {"a": E("U8", [1], 0, 1)}, b"\0", {"length": 10_000}, "past the end"),
    ("header_len_absurd", {"a": E("U8", [1], 0, 1)}, b"\0", {"length": 2**63}, "limit"),
    ("header_len_max_u64", {}, b"", {"length": 2**64 - 1}, "limit"),
    ("f4_odd_bits", {"a": E("F4", [3], 0, 2)}, b"\0\0", {}, "byte boundary"),
    ("nan_offset", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [NaN, 1]}}', b"\0", {}, "data_offsets"),
]


@pytest.mark.parametrize("name,header,data,kw,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_raises_invalid_checkpoint(tmp_path: Path, name, header, data, kw, words) -> None:
    path = write(tmp_path / f"{name}.safetensors", header, data, **kw)
    with pytest.raises(InvalidCheckpointError) as ei:
        read_header(path)
    msg = str(ei.value)
    assert str(path) in msg and "\n" not in msg and ";" in msg
    if words:
        assert words in msg, msg
    assert ": tensor '" in msg or ": header: " in msg


@pytest.mark.parametrize("content", [b"", b"\x01" * 7, b"\x00" * 8, struct.pack("<Q", 2) + b"{}x"])
def test_tiny_and_truncated_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "tiny.safetensors"
    p.write_bytes(content)
    with pytest.raises(InvalidCheckpointError, match="tiny.safetensors"):
        read_header(p)


def test_truncated_valid_file(tmp_path: Path) -> None:
    full = raw_file(VALID, b"\1" * 19)
    for cut in (len(full) - 1, len(full) - 19, 20, 9):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(full[:cut])
        with pytest.raises(InvalidCheckpointError):
            read_header(p)


def test_valid_header_and_offsets(tmp_path: Path) -> None:
    p = write(tmp_path / "ok.safetensors", VALID, b"\1" * 19)
    h = read_header(p)
    assert h.metadata == {"format": "pt"} and list(h.tensors) == ["a", "b"]
    assert h.tensors["a"].start == h.data_start and h.tensors["b"].end == h.file_size
    assert h.tensors["b"].shape == (3,) and h.tensors["b"].nbytes == 3
    with open(p, "rb") as f:
        assert read_header(f.fileno()).tensors == h.tensors


def test_empty_header_and_zero_size_tensors(tmp_path: Path) -> None:
    assert read_header(write(tmp_path / "e.safetensors", {})).tensors == {}
    h = read_header(write(tmp_path / "z.safetensors", {"a": E("F32", [0, 5], 0, 0), "b": E("F32", [], 0, 4),
                                                        "c": E("BF16", [3, 0], 4, 4)}, b"\0" * 4))
    assert h.tensors["a"].nbytes == 0 and h.tensors["b"].shape == ()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        read_header(tmp_path / "nope.safetensors")


def test_minilm_header_matches_reference() -> None:
    from safetensors import safe_open

    path = minilm_path()
    h = read_header(path)
    with safe_open(str(path), "np") as f:
        assert sorted(h.tensors) == sorted(f.keys())
        assert h.metadata == (f.metadata() or {})
        for k in sorted(h.tensors):
            assert list(h.tensors[k].shape) == f.get_slice(k).get_shape()


def test_absurd_length_allocates_nothing(tmp_path: Path) -> None:
    """Parse absurd lengths under a 300 MB address-space limit: a naive reader would die here."""
    paths = [write(tmp_path / f"abs{n}.safetensors", {}, b"\0" * 64, length=n) for n in (2**63, 99_999_999)]
    code = textwrap.dedent(f"""
        import resource
        from warmstart.errors import InvalidCheckpointError
        from warmstart.load.safetensors import read_header
        resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))
        for p in {[str(p) for p in paths]!r}:
            try:
                read_header(p)
            except InvalidCheckpointError as e:
                print("OK", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("OK") == 2


# -- property test: mutations of a valid file either parse consistently or raise InvalidCheckpointError


def _valid_bytes() -> bytes:
    return raw_file({"__metadata__": {"m": "v"}, "w": E("BF16", [2, 3], 0, 12), "b": E("F32", [2], 12, 20),
                     "z": E("U8", [0], 20, 20)}, bytes(range(20)))


def _check(raw: bytes) -> None:
    size = len(raw)
    try:
        n = int.from_bytes(raw[:8], "little") if size >= 8 else -1
        if size < 8 or n > size - 8:
            raise InvalidCheckpointError("short")
        h = parse_header(raw[8:8 + n], file_size=size, path="fuzz")
    except InvalidCheckpointError:
        return
    spans = sorted((t.start, t.end) for t in h.tensors.values())
    pos = h.data_start
    for s, e in spans:
        assert s == pos and e >= s
        pos = e
    assert pos == size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_never_crash(data: st.DataObject) -> None:
    raw = bytearray(_valid_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "len"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.sampled_from(b'{}[]",:0-9e.x \xff'))
        elif op == "cut":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        elif op == "insert":
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = data.draw(st.binary(max_size=8))
        elif op == "len" and len(raw) >= 8:
            raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    _check(bytes(raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["w", "b", "z"]), st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), json_values)
def test_json_field_mutations(name: str, field: str, value: object) -> None:
    raw = _valid_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")].decode())
    header[name][field] = value
    _check(raw_file(header, bytes(range(20))))

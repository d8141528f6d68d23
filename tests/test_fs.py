"""The shared filesystem primitives: an atomic replacement either happens whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmstart._fs import atomic_path, atomic_write, reflink_file


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "state.json"
    dest.write_text("old")
    atomic_write(dest, b"new", fsync=True, mode=0o444)
    assert dest.read_bytes() == b"new"
    assert dest.stat().st_mode & 0o777 == 0o444
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_an_error_inside_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half of the new one")
        raise RuntimeError("the writer failed")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_atomic_path_takes_a_symlink(tmp_path: Path) -> None:
    where = tmp_path / "link"
    where.symlink_to("a")
    with atomic_path(where) as tmp:
        tmp.symlink_to("b")
    assert where.readlink() == Path("b")
    assert [p.name for p in tmp_path.iterdir()] == ["link"]


def test_reflink_file_clones_or_says_no_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 8192)
    dst = tmp_path / "dst"
    if reflink_file(src, dst):  # a CoW filesystem
        assert dst.read_bytes() == src.read_bytes()
    else:
        assert not dst.exists()
    assert not reflink_file(tmp_path / "missing", tmp_path / "dst2")
    assert not (tmp_path / "dst2").exists()

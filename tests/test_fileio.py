"""Tests for textualdeg.fileio: atomic replacement, cleanup on error, no stray files.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import os

import pytest

from textualdeg.fileio import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    fsync_tree,
    temp_path_for,
)


def test_atomic_write_creates_and_replaces(tmp_path):
    target = tmp_path / "weights.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    assert atomic_write_text(target, "second") == target
    assert target.read_text() == "second"
    assert sorted(os.listdir(tmp_path)) == ["weights.bin"]


def test_temp_path_is_hidden_in_same_folder_and_not_created(tmp_path):
    target = tmp_path / "image.png"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".") and not tmp.name.endswith(".png")
        assert not tmp.exists()
        assert not target.exists()  # nothing visible before the block ends
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    assert temp_path_for(target) != temp_path_for(target)


def test_error_keeps_old_content_and_removes_temp(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_nothing_written_is_an_error(tmp_path):
    target = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_write(target):
            pass
    assert not target.exists()


def test_missing_parent_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "no" / "such" / "file.txt", "x")


def test_new_file_permissions_follow_umask(tmp_path):
    target = tmp_path / "perm.txt"
    atomic_write_text(target, "x")
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    assert target.stat().st_mode == reference.stat().st_mode


def test_fsync_tree_walks_nested_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.bin").write_bytes(b"1")
    (tmp_path / "g.bin").write_bytes(b"2")
    fsync_tree(tmp_path)  # must not raise on folders or files

"""Tests for textualdeg.fileio: atomic replacement, cleanup on error, no stray files.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import os

import pytest

import textualdeg.fileio as fileio
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


def test_disk_full_says_so_and_names_the_file(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "net_g.safetensors"
    target.write_bytes(b"old")

    def full(_):  # the OS runs out of space while the file is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "fsync_file", full)
    with pytest.raises(OSError, match=r"No space left on device while writing .*net_g\.safetensors") as info:
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"new")
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["net_g.safetensors"]
    # a library's wrapped error (safetensors reports IoError ... StorageFull) reads the same
    with pytest.raises(OSError, match="No space left on device while writing"):
        with atomic_write(tmp_path / "b.bin"):
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")


def test_read_only_folder_is_named_not_the_hidden_temp(tmp_path, monkeypatch):
    import errno

    with pytest.raises(PermissionError, match=r"cannot write .*a\.png: folder .* is not writable") as info:
        with atomic_write(tmp_path / "a.png") as tmp:
            raise PermissionError(errno.EROFS, f"Read-only file system: '{tmp}'")
    assert ".tmp" not in str(info.value)
    monkeypatch.setattr(fileio.os, "access", lambda path, mode: False)  # e.g. a read-only mount
    with pytest.raises(PermissionError, match=rf"folder {tmp_path} is not writable"):
        with atomic_write(tmp_path / "b.png"):
            pass


def test_a_library_writing_a_folder_gets_the_folder_named_on_a_full_or_read_only_disk(tmp_path, monkeypatch):
    """torch.save reports a full disk as 'unexpected pos 704 vs 598', without a path."""
    import errno
    import shutil
    from collections import namedtuple

    cryptic = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(RuntimeError, match="unexpected pos"):  # space is left: not ours to explain
        with fileio.naming_write_errors(tmp_path, "the state"):
            raise cryptic
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 4096))
    with pytest.raises(OSError, match=rf"No space left on device while writing the state into {tmp_path} ") as info:
        with fileio.naming_write_errors(tmp_path, "the state"):
            raise cryptic
    assert info.value.errno == errno.ENOSPC and info.value.__cause__ is cryptic
    monkeypatch.undo()
    with pytest.raises(PermissionError, match=rf"cannot write the state: folder {tmp_path} is not writable"):
        with fileio.naming_write_errors(tmp_path, "the state"):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(ValueError):  # not a write error
        with fileio.naming_write_errors(tmp_path, "the state"):
            raise ValueError("x")


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_weights_and_states_get_the_umask_mode_not_0600(tmp_path, umask):
    """safetensors creates 0600 files; ours follow the umask so a group can read shared runs."""
    import torch

    from textualdeg.checkpoint import save_weights
    from textualdeg.fileio import apply_default_mode, default_file_mode

    old = os.umask(umask)
    try:
        assert default_file_mode() == 0o666 & ~umask
        save_weights({"w": torch.zeros(2)}, tmp_path / "net_g.safetensors")
        assert (tmp_path / "net_g.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
        (tmp_path / "state").mkdir()
        private = tmp_path / "state" / "model.safetensors"
        private.write_bytes(b"x")
        private.chmod(0o600)  # as accelerate's safetensors save leaves it
        apply_default_mode(tmp_path / "state")
        assert private.stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(old)

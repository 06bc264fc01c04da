"""Crash-safe file writing: a file is either the old version or the complete new one.

``atomic_write`` hands out a temporary path in the destination folder; when the block
finishes without error the temporary file is flushed to disk (fsync), renamed over the
destination with ``os.replace`` (atomic on POSIX and Windows within one file system) and
the folder entry is flushed too. A crash or SIGKILL at any moment leaves the previous
file untouched; at worst a hidden ``.<name>.<pid>.<random>.tmp`` file stays behind.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from textualdeg.log import get_logger

logger = get_logger(__name__)

TEMP_SUFFIX = ".tmp"


def temp_path_for(path: str | os.PathLike) -> Path:
    """Return a fresh hidden temporary path next to ``path`` (same folder, same file system).

    The name is ``.<name>.<pid>.<random>.tmp``: hidden, and it never ends with the
    destination's extension, so folder listings of images or weights skip it.

    Args:
        path: the final destination.

    Returns:
        A path that does not exist yet (the file is not created).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process umask.

    Some writers (safetensors among them) create files with mode 0600 whatever the umask,
    so a group sharing an experiments folder could not read a colleague's weights; the
    files written here get this mode instead (0644 under the usual umask 022). Read from
    ``/proc/self/status`` where it exists (no change of the process state), else by
    setting the umask and putting it back.
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def apply_default_mode(path: str | os.PathLike) -> None:
    """Give the file ``path``, or every file under the folder ``path``, ``default_file_mode()``."""
    mode = default_file_mode()
    path = Path(path)
    files = [path] if path.is_file() else [Path(folder) / name for folder, _, names in os.walk(path)
                                           for name in names]
    for file in files:
        os.chmod(file, mode)


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush a folder's entries (creations, renames) to disk.

    A no-op on platforms that cannot open a folder for fsync (Windows).

    Args:
        path: an existing folder.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open folders; rename durability is the OS's job there
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse folder fsync
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's content to disk.

    Args:
        path: an existing regular file.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush every file and folder under ``path`` (inclusive) to disk.

    Used before a folder of files is declared complete (see ``textualdeg.checkpoint``).

    Args:
        path: an existing folder.
    """
    for folder, _, files in os.walk(path):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_directory(folder)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path, then move it over ``path``.

    The caller writes the complete file to the yielded path (with any library:
    ``safetensors.torch.save_file``, ``open``, ``cv2.imwrite``...). On normal exit the
    temporary file is fsynced, renamed to ``path`` with ``os.replace`` and the folder is
    fsynced. On an exception the temporary file is removed and the exception propagates;
    ``path`` keeps its previous content (or stays absent).

    The parent folder must exist (it is not created here).

    Example::

        with atomic_write("net_g.safetensors") as tmp:
            safetensors.torch.save_file(tensors, tmp)

    Args:
        path: the final destination.

    Yields:
        The temporary path (``pathlib.Path``) to write to, in the same folder as ``path``.

    Raises:
        FileNotFoundError: the parent folder is missing, or nothing was written to the
            temporary path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write {path}: folder {path.parent} is not writable "
                                            f"(read-only file system or missing permission)")
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(
                f"atomic_write({path}): nothing was written to the temporary file {tmp}"
            )
        os.chmod(tmp, default_file_mode())  # as a plain open() would create it (not 0600)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        # BaseException: also clean up on KeyboardInterrupt; SIGKILL leaves the hidden temp file.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if _is_disk_full(error):
            raise OSError(errno.ENOSPC, f"No space left on device while writing {path} "
                                        f"(free space in {path.parent} and run again; {path.name} "
                                        f"keeps its previous content)") from error
        if _is_not_writable(error):
            raise PermissionError(errno.EACCES, f"cannot write {path}: folder {path.parent} is not writable "
                                                f"(read-only file system or missing permission)") from error
        raise
    fsync_directory(path.parent)


def _is_disk_full(error: BaseException) -> bool:
    """An out-of-space error, raised by the OS or wrapped by a library (safetensors' IoError)."""
    if getattr(error, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(error)
    return "No space left on device" in text or "StorageFull" in text or "os error 28" in text


def _is_not_writable(error: BaseException) -> bool:
    """A read-only file system or a missing permission."""
    return isinstance(error, PermissionError) or getattr(error, "errno", None) in (errno.EROFS, errno.EACCES)


#: Free bytes below which a failed write into a folder is taken for a full disk.
FULL_DISK_BYTES = 1 << 20


@contextlib.contextmanager
def naming_write_errors(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Name the folder when a library writing several files into it fails on a full or read-only disk.

    For writers that open their files themselves (accelerate's ``save_state``), where
    :func:`atomic_write` cannot help: ``torch.save`` reports a full disk as
    ``unexpected pos 704 vs 598``, without the path. An error that names no cause is
    taken for a full disk when less than :data:`FULL_DISK_BYTES` are free in ``folder``
    after it; any other error passes through unchanged.

    Args:
        folder: the folder being written.
        what: what is being written, for the message (e.g. ``"the training state of step 40"``).

    Raises:
        OSError: errno ENOSPC, "No space left on device while writing <what> into <folder>".
        PermissionError: the folder is on a read-only file system or not writable.
    """
    folder = Path(folder)
    try:
        yield
    except (OSError, RuntimeError) as error:
        if _is_disk_full(error) or _free_bytes(folder) < FULL_DISK_BYTES:
            raise OSError(errno.ENOSPC, f"No space left on device while writing {what} into {folder} "
                                        f"(free space there and run again)") from error
        if _is_not_writable(error):
            raise PermissionError(errno.EACCES, f"cannot write {what}: folder {folder} is not writable "
                                                f"(read-only file system or missing permission)") from error
        raise


def _free_bytes(folder: Path) -> int:
    """Bytes free for writing in ``folder``'s file system (unknown: a large number)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data`` (see ``atomic_write``).

    Args:
        path: the destination file; its folder must exist.
        data: the complete new content.

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text`` (see ``atomic_write``).

    Args:
        path: the destination file; its folder must exist.
        text: the complete new content.
        encoding: text encoding.

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    return atomic_write_bytes(path, text.encode(encoding))

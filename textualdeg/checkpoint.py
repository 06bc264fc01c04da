"""Checkpoints: atomic safetensors weight files and crash-safe full training state.

Two layers (STYLE.md section 2.6):

* ``save_weights`` / ``load_weights``: one network's tensors as a safetensors file,
  written atomically (``textualdeg.fileio.atomic_write``). ``load_weights`` also reads
  legacy torch files (``.pth`` of the official NAFNet / Restormer / BasicSR releases,
  ``{'params': ...}``) with ``torch.load(weights_only=True)``.
* ``StateCheckpointer``: the full resumable state through accelerate's ``save_state`` /
  ``load_state`` (models, optimizers, schedulers, samplers, per-rank RNG, objects
  registered with ``accelerator.register_for_checkpointing``), laid out as::

      <root>/step_00001000/   accelerate files + COMPLETE (json: step, time, processes)
      <root>/step_00002000/
      <root>/latest           text file naming the newest state folder, written last

Crash safety of ``StateCheckpointer.save``: accelerate writes into a hidden
``.tmp_step_XXXXXXXX`` folder; once every rank has finished, the main process fsyncs it,
writes the ``COMPLETE`` marker, renames the folder to ``step_XXXXXXXX``, writes the
``latest`` pointer atomically, and only then deletes states beyond ``keep_last``. A
process killed at any moment therefore leaves every earlier state intact, and a state
folder without its marker (or a hidden temporary folder) is never taken for a complete
one. ``latest()`` trusts the folders, not the pointer: if the pointer is missing or
stale (a kill between the rename and the pointer write) the newest complete folder wins.

The state root must be on a file system shared by all processes (the usual case for
multi-GPU and multi-node training; accelerate writes weights from the main process and
RNG files from every rank).

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import uuid
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from textualdeg.fileio import atomic_write, atomic_write_text, fsync_directory, fsync_tree
from textualdeg.log import get_logger

logger = get_logger(__name__)

COMPLETE_MARKER = "COMPLETE"
LATEST_POINTER = "latest"
WRAPPER_KEYS = ("params", "state_dict", "params_ema", "model")
_STATE_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp_"
_TRASH_PREFIX = ".trash_"
_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_PICKLE_MAGIC = b"\x80"


class CheckpointError(OSError):
    """A checkpoint file or state folder is missing, empty, truncated or not a checkpoint.

    Attributes:
        path: the offending file or folder.
        cause: a short human-readable reason.
    """

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"cannot load checkpoint {self.path}: {cause}")

    def __reduce__(self):  # keep the two-argument constructor picklable (multiprocessing)
        return (type(self), (self.path, self.cause))


# ---------------------------------------------------------------------------------------
# weight files


def save_weights(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save a flat dict of tensors as a safetensors file, atomically.

    Tensors are detached, moved to CPU and made contiguous; tensors that share storage
    (tied weights) are cloned, since safetensors refuses shared storage. The parent
    folder is created. A crash during the write leaves the previous file intact.

    Args:
        tensors: name -> tensor, e.g. ``model.state_dict()``.
        path: destination file, usually ``*.safetensors``.
        metadata: optional string -> string header entries (e.g. the arch name).

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: a key is not a string, a value is not a tensor, or a metadata entry
            is not a string.
    """
    path = Path(path)
    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"tensors: key {name!r} is {type(name).__name__}, expected str")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"tensors[{name!r}] is {type(tensor).__name__}, expected torch.Tensor")
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() > 0 and pointer in seen_storage:
            tensor = tensor.clone()  # tied weights: safetensors stores each storage once
        seen_storage.add(pointer)
        prepared[name] = tensor
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(
                    f"metadata[{key!r}] = {value!r}: safetensors metadata must map str to str"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(prepared, str(tmp), metadata=dict(metadata) if metadata is not None else None)
    return path


def load_weights(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    param_key: str | None = None,
) -> dict[str, torch.Tensor]:
    """Load a flat dict of tensors from a safetensors or legacy torch file.

    The format is recognised from the content, not the extension: safetensors files,
    and torch files (``.pt``/``.pth``, zip or legacy pickle) read with
    ``torch.load(weights_only=True)``. Torch files wrapped as ``{'params': ...}`` (official
    NAFNet, Restormer, BasicSR), ``{'state_dict': ...}``, ``{'params_ema': ...}`` or
    ``{'model': ...}`` are unwrapped (first present key in that order unless
    ``param_key`` names one), and a ``module.`` prefix on every key (DDP) is stripped.

    Args:
        path: the weight file.
        device: where the tensors are placed.
        param_key: for wrapped torch files, which entry to take (e.g. ``"params_ema"``).

    Returns:
        name -> tensor.

    Raises:
        CheckpointError: naming the path and the cause, for a missing, empty, truncated or
            unreadable file, or one that holds something other than tensors.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if path.is_dir():
        raise CheckpointError(path, "is a folder, expected a weight file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "file is empty (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(_TORCH_ZIP_MAGIC):
        return _load_torch_weights(path, device, param_key)
    # safetensors: u64 little-endian header length, then the JSON header. Test it before the
    # legacy pickle magic, since the length's first byte can be 0x80 too.
    if len(head) == 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 8 + header_len > size:
            raise CheckpointError(
                path, f"truncated safetensors file: header needs {8 + header_len} bytes, file has {size}"
            )
        try:
            return load_file(str(path), device=str(device))
        except (SafetensorError, OSError, RuntimeError, ValueError) as error:
            raise CheckpointError(path, f"corrupt or truncated safetensors file ({error})") from error
    if head.startswith(_TORCH_PICKLE_MAGIC):  # torch.save(..., _use_new_zipfile_serialization=False)
        return _load_torch_weights(path, device, param_key)
    raise CheckpointError(path, "not a safetensors or torch checkpoint (unrecognised file header)")


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_network_weights(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    param_key: str | None = None,
) -> dict[str, list[str]]:
    """Load a weight file into ``model``, naming the file and the first mismatches on failure.

    The one place where training (``path.pretrain_network_g``), ``textualdeg restore`` and
    stage-5 evaluation put weights into a network. ``strict=False`` loads every tensor whose
    name and shape match (e.g. a plain backbone checkpoint into a guided network, whose
    ``masa_*`` fusion then starts as an identity) and logs the rest; a warning when fewer
    than half of the network's tensors were found.

    Args:
        model: the network.
        path: safetensors or torch weight file (see :func:`load_weights`).
        strict: every tensor of the network must be in the file with its shape, and
            nothing else.
        param_key: entry of a wrapped torch file (``params``, ``params_ema``...).

    Returns:
        ``{"missing": [...], "unexpected": [...], "reshaped": [...]}`` key lists.

    Raises:
        CheckpointError: an unreadable file, or (strict) a file of another architecture,
            variant or width: one line naming the file, the network class and the first
            missing, unexpected and reshaped keys.
    """
    weights = load_weights(path, param_key=param_key)
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    report = {"missing": missing, "unexpected": unexpected, "reshaped": reshaped}
    arch = type(model).__name__
    if strict and (missing or unexpected or reshaped):
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {len(own)} tensors missing (first: {_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {_first(unexpected)})")
        if reshaped:
            k = reshaped[0]
            shape = "x".join(map(str, weights[k].shape)), "x".join(map(str, own[k].shape))
            parts.append(f"{len(reshaped)} of another shape (first: {k} is {shape[0]} in the file, "
                         f"{shape[1]} in the network)")
        raise CheckpointError(path, f"does not fit {arch}: " + "; ".join(parts)
                              + " (another architecture, variant or width?)")
    usable = {k: v for k, v in weights.items() if k in own and k not in reshaped}
    model.load_state_dict(usable, strict=False)
    if not strict:
        loaded = len(own) - len(missing) - len(reshaped)
        log = logger.warning if loaded < len(own) / 2 else logger.info
        log("loaded %d of %d tensors of %s from %s (strict=False): %d missing (first: %s), %d unexpected, "
            "%d of another shape", loaded, len(own), arch, path, len(missing), _first(missing),
            len(unexpected), len(reshaped))
    return report


def _load_torch_weights(
    path: Path, device: str | torch.device, param_key: str | None
) -> dict[str, torch.Tensor]:
    """Read a legacy torch weight file with ``weights_only=True`` and unwrap it."""
    try:
        # A file object, not the name: torch.load hands "*.safetensors" names to safetensors.
        with open(path, "rb") as handle:
            loaded = torch.load(handle, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            path,
            f"corrupt, truncated or not a plain tensor file ({type(error).__name__}: {error}); "
            "files holding pickled modules need converting to a state_dict first",
        ) from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(path, f"holds a {type(loaded).__name__}, expected a dict of tensors")
    if param_key is not None:
        if param_key not in loaded:
            raise CheckpointError(path, f"no entry {param_key!r}; top-level keys: {sorted(loaded)[:10]}")
        loaded = loaded[param_key]
    else:
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    tensors: dict[str, torch.Tensor] = {}
    for name, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                path, f"entry {name!r} is a {type(value).__name__}, expected a tensor"
            )
        tensors[str(name)] = value
    if tensors and all(name.startswith("module.") for name in tensors):
        tensors = {name[len("module."):]: value for name, value in tensors.items()}
    return tensors


# ---------------------------------------------------------------------------------------
# full training state


def state_dir_name(step: int) -> str:
    """Folder name of the state saved at ``step`` (``step_00001000``)."""
    return f"step_{step:08d}"


def read_state_step(folder: str | os.PathLike) -> int | None:
    """Return the step recorded in a state folder's ``COMPLETE`` marker, or None.

    None means the folder is not a complete state: no marker, an unreadable marker, or a
    marker whose step disagrees with the folder name.

    Args:
        folder: a ``step_XXXXXXXX`` folder.
    """
    folder = Path(folder)
    match = _STATE_DIR.match(folder.name)
    if match is None:
        return None
    try:
        record = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(step, int) or step != int(match.group(1)):
        return None
    return step


def find_resume_state(path: str | os.PathLike) -> Path | None:
    """Resolve ``path`` to a complete state folder.

    Args:
        path: either one state folder (``.../state/step_00001000``) or a state root
            (``.../state``) holding several.

    Returns:
        The folder itself if it is complete, else the newest complete state under it,
        else None (also when ``path`` does not exist).
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if read_state_step(path) is not None:
        return path
    return StateCheckpointer(path).latest()


class StateCheckpointer:
    """Save, rotate and resume full training states under one root folder.

    Every method that takes an ``accelerator`` must be called on all processes; only the
    main process renames folders, writes the pointer and deletes old states.

    Args:
        root: the state root, e.g. ``experiments/<name>/state``. Created on first save.
        keep_last: how many complete states to keep (>= 1); None keeps all. The state
            ``latest`` points to and the one just saved are never deleted.
    """

    def __init__(self, root: str | os.PathLike, keep_last: int | None = 3) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last={keep_last!r}: expected an int >= 1 or None")
        self.root = Path(root)
        self.keep_last = keep_last

    def __repr__(self) -> str:
        return f"StateCheckpointer(root={str(self.root)!r}, keep_last={self.keep_last})"

    # -- queries ------------------------------------------------------------------------

    def complete_states(self) -> list[tuple[int, Path]]:
        """Return ``(step, folder)`` for every complete state, oldest first."""
        if not self.root.is_dir():
            return []
        states = []
        for entry in self.root.iterdir():
            if entry.is_dir():
                step = read_state_step(entry)
                if step is not None:
                    states.append((step, entry))
        return sorted(states)

    def latest(self) -> Path | None:
        """Return the newest complete state folder, or None if there is none.

        Temporary and unmarked folders are ignored. The ``latest`` pointer is checked
        against the folders; when it is missing or stale the newest complete folder wins.
        """
        states = self.complete_states()
        if not states:
            return None
        newest = states[-1][1]
        pointer = self._read_pointer()
        if pointer is not None and pointer != newest.name:
            logger.warning(
                "state pointer %s names %r, but the newest complete state is %s; using it",
                self.root / LATEST_POINTER, pointer, newest,
            )
        return newest

    def _read_pointer(self) -> str | None:
        try:
            return (self.root / LATEST_POINTER).read_text().strip() or None
        except OSError:
            return None

    # -- save ---------------------------------------------------------------------------

    def save(self, accelerator: Any, step: int) -> Path:
        """Save the full training state at ``step`` (call on ALL processes).

        Calls ``accelerator.save_state`` on every rank (so each rank's RNG state is
        written), then finalises on the main process: fsync, ``COMPLETE`` marker, rename
        to ``step_XXXXXXXX``, ``latest`` pointer, rotation. Saving a step that already
        exists replaces it.

        Args:
            accelerator: the ``accelerate.Accelerator`` that prepared the objects.
            step: the optimizer step reached (>= 0).

        Returns:
            The final state folder.

        Raises:
            ValueError: ``step`` is negative or not an int, or the accelerator uses
                ``automatic_checkpoint_naming`` (which ignores the folder we give it).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step={step!r}: expected an int >= 0")
        if accelerator.project_configuration.automatic_checkpoint_naming:
            raise ValueError(
                "accelerator.project_configuration.automatic_checkpoint_naming=True: "
                "StateCheckpointer names and rotates the folders itself; turn it off"
            )
        final = self.root / state_dir_name(step)
        tmp = self.root / f"{_TMP_PREFIX}{final.name}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a save of this step that was killed
                shutil.rmtree(tmp)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self._finalize(tmp, final, step, accelerator.num_processes)
        accelerator.wait_for_everyone()
        return final

    def _finalize(self, tmp: Path, final: Path, step: int, num_processes: int) -> None:
        """Main process: make ``tmp`` durable, mark it complete, publish it, rotate."""
        fsync_tree(tmp)
        record = {
            "step": step,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "num_processes": num_processes,
        }
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps(record) + "\n")
        replaced = None
        if final.exists():
            # Re-saving a step (e.g. after resuming from it). A kill between these two
            # renames loses only this step's folder; earlier states stay complete.
            replaced = self._move_to_trash(final)
        os.replace(tmp, final)
        fsync_directory(self.root)
        atomic_write_text(self.root / LATEST_POINTER, final.name + "\n")
        logger.info("saved training state for step %d to %s", step, final)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        self._rotate(protect=final)

    def _move_to_trash(self, folder: Path) -> Path:
        """Rename ``folder`` to a hidden name (atomic), so a half-deleted state is never visible."""
        trash = self.root / f"{_TRASH_PREFIX}{folder.name}.{uuid.uuid4().hex[:8]}"
        os.replace(folder, trash)
        return trash

    def _rotate(self, protect: Path) -> None:
        """Delete complete states beyond ``keep_last`` and leftovers of killed saves."""
        for entry in self.root.iterdir():
            if entry.is_dir() and entry != protect and entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)
        if self.keep_last is None:
            return
        states = self.complete_states()
        keep = {folder for _, folder in states[-self.keep_last:]}
        keep.add(protect)
        pointer = self._read_pointer()
        for _, folder in states:
            if folder in keep or folder.name == pointer:
                continue
            shutil.rmtree(self._move_to_trash(folder), ignore_errors=True)
            logger.info("removed old training state %s (keep_last=%d)", folder, self.keep_last)

    # -- resume -------------------------------------------------------------------------

    def resume(self, accelerator: Any, path: str | os.PathLike | None = None) -> int | None:
        """Load the newest complete state (or the one ``path`` names); call on ALL processes.

        The main process chooses the folder and broadcasts it, so every rank loads the
        same state even while the file system settles.

        Args:
            accelerator: the ``accelerate.Accelerator`` that prepared the objects (and
                registered the same custom objects as when saving).
            path: None for the newest state under ``root``; else a state folder or a state
                root (see ``find_resume_state``).

        Returns:
            The step of the loaded state, or None when ``path`` is None and nothing has
            been saved yet (a fresh run).

        Raises:
            CheckpointError: ``path`` was given but holds no complete state.
        """
        payload: list[Any] = [None, None, None]  # folder, step, error cause
        if accelerator.is_main_process:
            if path is None:
                folder = self.latest()
            else:
                folder = find_resume_state(path)
                if folder is None:
                    payload[2] = (
                        "no complete training state there (a state folder holds a "
                        f"{COMPLETE_MARKER} marker written by StateCheckpointer.save)"
                    )
            if folder is not None:
                payload[0], payload[1] = str(folder), read_state_step(folder)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(payload, from_process=0)
        folder, step, cause = payload
        if cause is not None:
            raise CheckpointError(path, cause)
        if folder is None:
            return None
        accelerator.load_state(folder)
        logger.info("resumed training state of step %d from %s", step, folder)
        return step

    def start_step(self, accelerator: Any, resume_state: str | os.PathLike | None, auto_resume: bool) -> int:
        """The step a training run starts from; call on ALL processes.

        ``resume_state`` (an option file's ``path.resume_state``) wins; otherwise, with
        ``auto_resume``, the newest complete state of this run; otherwise step 0.
        """
        if resume_state:
            return self.resume(accelerator, resume_state) or 0
        if auto_resume:
            return self.resume(accelerator) or 0
        return 0

"""Checkpoints: atomic safetensors weight files and crash-safe full training state.

Two layers:

* ``save_weights`` / ``load_weights``: one network's tensors as a safetensors file,
  written atomically (``textualdeg.fileio.atomic_write``). ``load_weights`` also reads
  legacy torch files (``.pth`` of the official NAFNet / Restormer / BasicSR releases,
  ``{'params': ...}``) with ``torch.load(weights_only=True)``.
* ``StateCheckpointer``: the full resumable state (models, optimizers, schedulers, per-rank
  RNG streams, objects registered with ``StateCheckpointer.register``: data position,
  EMA...), laid out as::

      <root>/step_00001000/            one complete state:
          model.safetensors              accelerate: prepared models (safetensors)
          optimizer.bin, scheduler.bin   accelerate: torch.save files, read back with
                                         torch.load(weights_only=True) (plain tensors, numbers)
          rng_state_<rank>.safetensors   torch (CPU, CUDA), numpy and python RNG streams and
                                         accelerate's step counter, one file per process
          objects.json                   registered objects' states, tensors replaced by
          objects.safetensors            references into this file (absent without tensors)
          COMPLETE                       json: step, time, processes, format, the size
                                         and sha256 of every file above, and the caller's
                                         ``info`` (e.g. which start of the run wrote it)
      <root>/step_00002000/
      <root>/latest                    text file naming the newest state folder, written last
      <root>/.tmp_step_XXXXXXXX/       a save in progress (or killed), never resumed
      <root>/.trash_step_XXXXXXXX.<hex>/  a state being deleted
      <weights_dir>/<prefix>_<step>.safetensors  per-step weights, rotated with the states
                                         (``<prefix>_latest.safetensors`` is never touched)

No pickle is loaded on resume: accelerate's own RNG file (a pickle of numpy arrays) is
replaced by ``rng_state_<rank>.safetensors``, registered objects are JSON + safetensors
instead of accelerate's ``custom_checkpoint_*.pkl`` (which accelerate unpickles without
restriction, so objects registered with ``accelerator.register_for_checkpointing`` are
refused), and a folder holding a ``custom_checkpoint_*.pkl`` is rejected.

Crash safety of ``StateCheckpointer.save``: accelerate writes into a hidden
``.tmp_step_XXXXXXXX`` folder; once every rank has finished, the main process fsyncs it,
writes the ``COMPLETE`` marker (with every file's checksum), renames the folder to
``step_XXXXXXXX``, writes the ``latest`` pointer atomically, and only then deletes states
beyond ``keep_last`` and their per-step weight files. A process killed at any moment
therefore leaves every earlier state intact, and a state folder without its marker (or a
hidden temporary folder) is never taken for a complete one. ``latest()`` trusts the
folders, not the pointer: if the pointer is missing or stale (a kill between the rename
and the pointer write) the newest complete folder wins. What killed saves leave behind
(temporary folders and ``atomic_write`` temporaries of the pointer and the weight files)
is removed at start-up and on rotation once no process uses it (``clean_stale``).

Lineage: a run folder can hold states of several branches (a run resumed from an older
state with changed options writes new states beside the old, higher-step ones). With a
``lineage`` predicate set, auto-resume picks the newest state the predicate accepts, and
rotation counts and deletes only those; the others are left alone.

Resume verifies the chosen state against the checksums in its marker, so truncation and
bit rot inside tensor data are caught before anything is loaded. Auto-resume then falls
back to the previous complete state with a warning naming the bad file; an explicitly
requested state (``path.resume_state``) that fails raises ``CheckpointError`` instead.

The state root must be on a file system shared by all processes (the usual case for
multi-GPU and multi-node training; accelerate writes weights from the main process and
RNG files from every rank, and the main process checksums them all).

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from textualdeg.fileio import (apply_default_mode, atomic_write, atomic_write_text, fsync_directory, fsync_tree,
                               naming_write_errors)
from textualdeg.log import get_logger

logger = get_logger(__name__)

COMPLETE_MARKER = "COMPLETE"
LATEST_POINTER = "latest"
WRAPPER_KEYS = ("params", "state_dict", "params_ema", "model")
STATE_FORMAT = 2  # 1: accelerate's pickled custom objects and RNG files, no checksums
OBJECTS_JSON = "objects.json"
OBJECTS_TENSORS = "objects.safetensors"
_STATE_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp_"
_TRASH_PREFIX = ".trash_"
_TMP_DIR = re.compile(r"^\.tmp_step_(\d+)$")
_TRASH_DIR = re.compile(r"^\.trash_step_\d+\.[0-9a-f]{8}$")
# the names textualdeg.fileio.temp_path_for gives: .<name>.<pid>.<8 hex>.tmp
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_UNSAFE_PICKLE = re.compile(r"^custom_checkpoint_\d+\.pkl$")  # accelerate: torch.load(weights_only=False)
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_TENSOR_REF = "__tensor__"
_RNG_FORMAT = "textualdeg-rng-1"
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


def _marker_step(folder: Path, expected: int) -> int | None:
    """The step in ``folder``'s ``COMPLETE`` marker if it is readable and equals ``expected``."""
    try:
        record = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step != expected:
        return None
    return step


def read_state_step(folder: str | os.PathLike) -> int | None:
    """Return the step recorded in a state folder's ``COMPLETE`` marker, or None.

    None means the folder is not a complete state: no marker, an unreadable marker, or a
    marker whose step disagrees with the folder name. The files are not checked here
    (see :func:`verify_state`).

    Args:
        folder: a ``step_XXXXXXXX`` folder.
    """
    folder = Path(folder)
    match = _STATE_DIR.match(folder.name)
    return None if match is None else _marker_step(folder, int(match.group(1)))


def read_state_info(folder: str | os.PathLike) -> dict[str, Any]:
    """Return the ``info`` a state's ``COMPLETE`` marker records (``{}`` when none or unreadable).

    Args:
        folder: a state folder.
    """
    try:
        info = json.loads((Path(folder) / COMPLETE_MARKER).read_text()).get("info")
    except (OSError, ValueError, AttributeError):
        return {}
    return info if isinstance(info, dict) else {}


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_files(folder: Path) -> list[str]:
    """Every file under ``folder`` except its top-level ``COMPLETE`` marker, as sorted POSIX paths."""
    names = []
    for parent, _, files in os.walk(folder):
        for name in files:
            rel = (Path(parent) / name).relative_to(folder).as_posix()
            if rel != COMPLETE_MARKER:
                names.append(rel)
    return sorted(names)


def _file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` for every file of a state folder."""
    return {rel: {"size": (folder / rel).stat().st_size, "sha256": _sha256(folder / rel)}
            for rel in _state_files(folder)}


def verify_state(folder: str | os.PathLike) -> int:
    """Check a state folder against the checksums its ``COMPLETE`` marker recorded at save.

    Every recorded file must exist with its size and sha256 (so bit rot inside tensor data
    is caught, not only truncation), and no file that resuming would unpickle
    unrestricted (accelerate's ``custom_checkpoint_*.pkl``) may be present. Files that
    are not recorded are reported with a warning (they are not verified).

    Args:
        folder: a ``step_XXXXXXXX`` folder.

    Returns:
        The folder's step.

    Raises:
        CheckpointError: naming the offending file (or the marker) and why.
    """
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    match = _STATE_DIR.match(folder.name)
    if match is None or _marker_step(folder, int(match.group(1))) is None:
        raise CheckpointError(marker, f"missing, unreadable, or its step disagrees with the folder name {folder.name}")
    step = int(match.group(1))
    files = json.loads(marker.read_text()).get("files")
    if not isinstance(files, dict):
        raise CheckpointError(
            marker, "records no checksums: the state was written by an older textualdeg (objects pickled by "
            "accelerate), which cannot be verified or loaded without unpickling; start a new run from its "
            "checkpoints/ weights instead (e.g. path.pretrain_network_g)"
        )
    present = _state_files(folder)
    for rel in present:
        if _UNSAFE_PICKLE.match(Path(rel).name):
            raise CheckpointError(folder / rel, "accelerate would unpickle this file without restriction on resume; "
                                  "textualdeg never writes it, so the state folder was tampered with")
    unexpected = sorted(set(present) - set(files))
    if unexpected:
        logger.warning("state %s holds files its %s marker does not record (not verified): %s",
                       folder, COMPLETE_MARKER, _first(unexpected))
    for rel, entry in sorted(files.items()):
        path = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not isinstance(entry, dict):
            raise CheckpointError(marker, f"malformed file entry {rel!r}")
        if not path.is_file():
            raise CheckpointError(path, f"missing (recorded in {COMPLETE_MARKER} at save)")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(path, f"{size} bytes, {entry.get('size')} recorded at save (truncated or replaced)")
        if _sha256(path) != entry.get("sha256"):
            raise CheckpointError(path, "sha256 differs from the one recorded at save (bit rot or an edit)")
    return step


# -- registered objects and RNG streams, written without pickle ---------------------------


def _encode(value: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``value``; tensors are moved to ``tensors`` and replaced by a reference."""
    where = "/".join(path)
    if isinstance(value, torch.Tensor):
        if where in tensors:
            raise ValueError(f"state entry {where!r} appears twice")
        tensors[where] = value
        return {_TENSOR_REF: where}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key == _TENSOR_REF:
                raise ValueError(f"state entry {where!r}: key {key!r} cannot be saved (expected a str)")
            out[key] = _encode(item, (*path, key), tensors)
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(item, (*path, str(i)), tensors) for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"state entry {where!r} is a {type(value).__name__}; registered objects may hold tensors, "
        "str-keyed dicts, lists, numbers, strings and None (saved without pickle)"
    )


def _decode(node: Any, tensors: Mapping[str, torch.Tensor], source: Path) -> Any:
    if isinstance(node, dict):
        if set(node) == {_TENSOR_REF}:
            if node[_TENSOR_REF] not in tensors:
                raise CheckpointError(source, f"no tensor {node[_TENSOR_REF]!r} in {OBJECTS_TENSORS}")
            return tensors[node[_TENSOR_REF]]
        return {key: _decode(item, tensors, source) for key, item in node.items()}
    if isinstance(node, list):
        return [_decode(item, tensors, source) for item in node]
    return node


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_state_{rank}.safetensors"


def _save_rng_state(folder: Path, rank: int, accelerator_step: int) -> None:
    """This process's torch (CPU and CUDA), numpy and python RNG streams as safetensors + JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["python_state"] = torch.tensor(internal, dtype=torch.int64)  # 625 words < 2**32
    record = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "gauss_next": gauss_next},
        "accelerator_step": int(accelerator_step),
    }
    save_weights(tensors, _rng_file(folder, rank), metadata={"format": _RNG_FORMAT, "state": json.dumps(record)})


def _load_rng_state(folder: Path, rank: int) -> int | None:
    """Restore what ``_save_rng_state`` wrote; returns the accelerator's step, None without a file."""
    path = _rng_file(folder, rank)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        record = json.loads(metadata["state"])
        numpy_state, python_state = record["numpy"], record["python"]
        torch.set_rng_state(tensors["torch"])
        np.random.set_state((numpy_state["kind"], tensors["numpy_keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        random.setstate((python_state["version"], tuple(tensors["python_state"].tolist()), python_state["gauss_next"]))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(path, f"not a textualdeg RNG state ({type(error).__name__}: {error})") from error
    cuda = sorted((int(key.split(".")[1]), value) for key, value in tensors.items() if key.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            logger.warning("%s holds %d CUDA RNG states, this process sees %d devices; restoring the common ones",
                           path, len(cuda), torch.cuda.device_count())
        for index, state in cuda[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(state, device=index)
    return int(record["accelerator_step"])


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; False where that cannot be asked (the age check decides)."""
    if os.name != "posix":
        return False  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return False
    return True


def _age_s(path: Path) -> float:
    """Seconds since anything under ``path`` (inclusive) was last modified; 0 if it vanished meanwhile."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
    return time.time() - newest


class StateCheckpointer:
    """Save, verify, rotate and resume full training states under one root folder.

    Every method that takes an ``accelerator`` must be called on all processes; only the
    main process renames folders, writes the pointer and deletes old states. Objects with
    ``state_dict``/``load_state_dict`` (data position, EMA...) are registered with
    :meth:`register`, never with ``accelerator.register_for_checkpointing`` (accelerate
    pickles those and unpickles them without restriction on resume).

    Args:
        root: the state root, e.g. ``experiments/<name>/state``. Created on first save.
        keep_last: how many complete states to keep (>= 1); None keeps all. The state
            ``latest`` points to and the one just saved are never deleted.
        weights_dir: the run's weight folder (``experiments/<name>/checkpoints``) whose
            per-step files are rotated with the states and whose temporaries are cleaned;
            None leaves weight files alone.
        weight_prefixes: names of the weight files in ``weights_dir``: ``<prefix>_<step>.safetensors``
            are rotated (the last ``keep_last`` steps and the steps of kept states stay),
            ``<prefix>_latest.safetensors`` and every other name are never touched.
        stale_after_s: temporaries younger than this (seconds, newest file inside for
            folders) are taken to be in use and left alone.
        lineage: ``lineage(step, info) -> bool``, where ``info`` is what the state's marker
            records (:func:`read_state_info`): the states auto-resume may pick and rotation
            may count and delete. None: every complete state. May be replaced between calls.

    Attributes:
        resumed: the state folder the last :meth:`resume` loaded (None before, or for a fresh run).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        keep_last: int | None = 3,
        *,
        weights_dir: str | os.PathLike | None = None,
        weight_prefixes: tuple[str, ...] = (),
        stale_after_s: float = 120.0,
        lineage: Callable[[int, Mapping[str, Any]], bool] | None = None,
    ) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last={keep_last!r}: expected an int >= 1 or None")
        if (weights_dir is None) != (not weight_prefixes):
            raise ValueError(f"weights_dir={weights_dir!r}, weight_prefixes={weight_prefixes!r}: give both or neither")
        for prefix in weight_prefixes:
            if not isinstance(prefix, str) or not _NAME.match(prefix):
                raise ValueError(f"weight_prefixes: {prefix!r} is not a plain file-name prefix ([A-Za-z0-9_]+)")
        if stale_after_s < 0:
            raise ValueError(f"stale_after_s={stale_after_s!r}: expected a number >= 0")
        self.root = Path(root)
        self.keep_last = keep_last
        self.weights_dir = None if weights_dir is None else Path(weights_dir)
        self.weight_prefixes = tuple(weight_prefixes)
        self.stale_after_s = float(stale_after_s)
        alternatives = "|".join(re.escape(prefix) for prefix in sorted(weight_prefixes, key=len, reverse=True))
        # net_g_500.safetensors (rotated); net_g_latest.safetensors, i2t_mapper.json (temporaries cleaned)
        self._step_weight = re.compile(rf"^(?:{alternatives})_(\d+)\.safetensors$") if alternatives else None
        self._weight_name = (re.compile(rf"^(?:{alternatives})(?:_[A-Za-z0-9]+)?\.(?:safetensors|json)$")
                             if alternatives else None)
        self._objects: dict[str, Any] = {}
        self.lineage = lineage
        self.resumed: Path | None = None

    def __repr__(self) -> str:
        return (f"StateCheckpointer(root={str(self.root)!r}, keep_last={self.keep_last}, "
                f"objects={sorted(self._objects)})")

    def register(self, name: str, obj: Any) -> None:
        """Add an object with ``state_dict``/``load_state_dict`` to every saved state.

        Its state is written as ``objects.json`` plus ``objects.safetensors`` (no pickle),
        by the main process, and loaded on every process; it may hold tensors, str-keyed
        dicts, lists, numbers, strings and None (tuples come back as lists).

        Args:
            name: a unique key (``[A-Za-z0-9_]+``), e.g. ``"position"`` or ``"ema"``.
            obj: the object.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"name={name!r}: expected a non-empty [A-Za-z0-9_]+ string")
        if name in self._objects:
            raise ValueError(f"name={name!r} is already registered")
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise ValueError(f"{name!r}: a {type(obj).__name__} has no state_dict/load_state_dict")
        self._objects[name] = obj

    # -- queries ------------------------------------------------------------------------

    def complete_states(self) -> list[tuple[int, Path]]:
        """Return ``(step, folder)`` for every complete state, oldest first (files not verified)."""
        if not self.root.is_dir():
            return []
        states = []
        for entry in self.root.iterdir():
            if entry.is_dir():
                step = read_state_step(entry)
                if step is not None:
                    states.append((step, entry))
        return sorted(states)

    def lineage_states(self) -> list[tuple[int, Path]]:
        """Return the complete states ``lineage`` accepts (all of them without one), oldest first."""
        states = self.complete_states()
        if self.lineage is None:
            return states
        return [(step, folder) for step, folder in states if self.lineage(step, read_state_info(folder))]

    def latest(self) -> Path | None:
        """Return the newest complete state folder, or None if there is none.

        Temporary and unmarked folders are ignored. The ``latest`` pointer is checked
        against the folders; when it is missing or stale the newest complete folder wins.
        The files are not verified (:meth:`resume` does that).
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

    def save(self, accelerator: Any, step: int, info: Mapping[str, Any] | None = None) -> Path:
        """Save the full training state at ``step`` (call on ALL processes).

        Calls ``accelerator.save_state`` on every rank, replaces accelerate's pickled RNG
        file with ``rng_state_<rank>.safetensors``, writes the registered objects (main
        process), then finalises on the main process: fsync, ``COMPLETE`` marker with
        every file's sha256, rename to ``step_XXXXXXXX``, ``latest`` pointer, rotation.
        Saving a step that already exists replaces it.

        Args:
            accelerator: the ``accelerate.Accelerator`` that prepared the objects.
            step: the optimizer step reached (>= 0).
            info: JSON-serialisable facts recorded in the marker (main process), read back
                with :func:`read_state_info`.

        Returns:
            The final state folder.

        Raises:
            ValueError: ``step`` is negative or not an int, the accelerator uses
                ``automatic_checkpoint_naming`` (which ignores the folder we give it), or
                objects were registered with ``accelerator.register_for_checkpointing``.
            OSError: the disk filled up ("No space left on device", naming the state folder;
                the earlier states are untouched).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step={step!r}: expected an int >= 0")
        if accelerator.project_configuration.automatic_checkpoint_naming:
            raise ValueError(
                "accelerator.project_configuration.automatic_checkpoint_naming=True: "
                "StateCheckpointer names and rotates the folders itself; turn it off"
            )
        _refuse_pickled_objects(accelerator)
        from accelerate.utils import RNG_STATE_NAME

        final = self.root / state_dir_name(step)
        tmp = self.root / f"{_TMP_PREFIX}{final.name}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a save of this step that was killed
                shutil.rmtree(tmp)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        rank = accelerator.process_index
        with naming_write_errors(tmp, f"the training state of step {step}"):
            accelerator.save_state(str(tmp))
            # accelerate's RNG file is a pickle (numpy arrays inside); ours holds the same streams
            (tmp / f"{RNG_STATE_NAME}_{rank}.pkl").unlink(missing_ok=True)
            _save_rng_state(tmp, rank, accelerator.step)
            if accelerator.is_main_process:
                self._save_objects(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self._finalize(tmp, final, step, accelerator.num_processes, info)
        accelerator.wait_for_everyone()
        return final

    def _save_objects(self, folder: Path) -> None:
        """Main process: the registered objects as ``objects.json`` (+ ``objects.safetensors``)."""
        if not self._objects:
            return
        tensors: dict[str, torch.Tensor] = {}
        tree = {name: _encode(obj.state_dict(), (name,), tensors) for name, obj in self._objects.items()}
        if tensors:
            save_weights(tensors, folder / OBJECTS_TENSORS)
        (folder / OBJECTS_JSON).write_text(json.dumps(tree, indent=1) + "\n")

    def _finalize(self, tmp: Path, final: Path, step: int, num_processes: int,
                  info: Mapping[str, Any] | None = None) -> None:
        """Main process: make ``tmp`` durable, mark it complete with checksums, publish it, rotate.

        Files get the umask's mode (``apply_default_mode``): accelerate's safetensors are 0600.
        """
        apply_default_mode(tmp)
        fsync_tree(tmp)
        record = {
            "step": step,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "num_processes": num_processes,
            "format": STATE_FORMAT,
            "files": _file_manifest(tmp),
        }
        if info:
            record["info"] = dict(info)
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps(record, indent=1) + "\n")
        replaced = None
        if final.exists():
            # Re-saving a step (e.g. after resuming from it). A kill between these two
            # renames leaves the new state complete under its temporary name, and
            # clean_stale() publishes it.
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
        """Delete leftovers of killed saves, lineage states beyond ``keep_last`` and their weight files."""
        self.clean_stale()
        if self.keep_last is None:
            return
        states = self.lineage_states()
        keep = {folder for _, folder in states[-self.keep_last:]}
        keep.add(protect)
        pointer = self._read_pointer()
        for _, folder in states:
            if folder in keep or folder.name == pointer:
                continue
            shutil.rmtree(self._move_to_trash(folder), ignore_errors=True)
            logger.info("removed old training state %s (keep_last=%d)", folder, self.keep_last)
        if self.weights_dir is not None:
            self._rotate_weights({step for step, _ in self.complete_states()})

    def _rotate_weights(self, state_steps: set[int]) -> None:
        """Delete ``<prefix>_<step>.safetensors`` files except the last ``keep_last`` steps' and ``state_steps``'."""
        if not self.weights_dir.is_dir():
            return
        by_step: dict[int, list[Path]] = {}
        for entry in self.weights_dir.iterdir():
            match = self._step_weight.match(entry.name)
            if match is not None and entry.is_file() and not entry.is_symlink():
                by_step.setdefault(int(match.group(1)), []).append(entry)
        steps = sorted(by_step)
        keep = set(steps[-self.keep_last:]) | state_steps
        removed = [path for step in steps if step not in keep for path in by_step[step]]
        for path in removed:
            path.unlink(missing_ok=True)
        if removed:
            logger.info("removed %d weight files of steps %s from %s (keep_last=%d)", len(removed),
                        sorted(step for step in steps if step not in keep), self.weights_dir, self.keep_last)

    def clean_stale(self) -> list[Path]:
        """Main process: remove what interrupted saves left behind; called at start-up and on rotation.

        Only names this module and ``textualdeg.fileio.atomic_write`` create are touched,
        and only once nothing under them changed for ``stale_after_s`` seconds:

        * ``.tmp_step_XXXXXXXX`` without a valid marker (a killed ``save``) is deleted; one
          with its marker (killed between marker and rename) is a complete state and is
          published as ``step_XXXXXXXX`` when that name is free, else left alone;
        * ``.trash_step_*`` (a killed rotation or re-save) is deleted;
        * ``.latest.<pid>.<hex>.tmp`` in the state root and ``.<weight name>.<pid>.<hex>.tmp``
          in ``weights_dir`` are deleted unless process ``pid`` still runs on this host.

        Returns:
            The removed paths.
        """
        removed: list[Path] = []
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                if entry.is_symlink():
                    continue
                if entry.is_dir() and _TRASH_DIR.match(entry.name):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                elif entry.is_dir() and _TMP_DIR.match(entry.name):
                    if self._clean_tmp_state(entry, int(_TMP_DIR.match(entry.name).group(1))):
                        removed.append(entry)
                elif self._stale_temp_file(entry, lambda name: name == LATEST_POINTER):
                    entry.unlink(missing_ok=True)
                    removed.append(entry)
        if self.weights_dir is not None and self.weights_dir.is_dir():
            for entry in sorted(self.weights_dir.iterdir()):
                if not entry.is_symlink() and self._stale_temp_file(entry, self._weight_name.match):
                    entry.unlink(missing_ok=True)
                    removed.append(entry)
        if removed:
            logger.info("removed %d leftovers of interrupted saves: %s", len(removed),
                        _first([str(path) for path in removed]))
        return removed

    def _clean_tmp_state(self, tmp: Path, step: int) -> bool:
        """Publish or delete one stale ``.tmp_step_XXXXXXXX`` folder; True if it was deleted."""
        if _age_s(tmp) < self.stale_after_s:
            return False
        if _marker_step(tmp, step) is None:
            shutil.rmtree(tmp, ignore_errors=True)
            return True
        final = self.root / state_dir_name(step)
        if final.exists():
            logger.warning("left %s alone: it holds a complete state, but %s exists too", tmp, final.name)
            return False
        os.replace(tmp, final)
        fsync_directory(self.root)
        logger.warning("published %s as %s: its save was interrupted after it completed", tmp, final)
        return False

    def _stale_temp_file(self, entry: Path, is_ours: Callable[[str], object]) -> bool:
        """Whether ``entry`` is an ``atomic_write`` temporary of a name ``is_ours`` accepts, no longer in use."""
        match = _TEMP_FILE.match(entry.name)
        if match is None or not is_ours(match.group("name")) or not entry.is_file():
            return False
        pid = int(match.group("pid"))
        return _age_s(entry) >= self.stale_after_s and (pid == os.getpid() or not _pid_alive(pid))

    # -- resume -------------------------------------------------------------------------

    def resume(self, accelerator: Any, path: str | os.PathLike | None = None) -> int | None:
        """Verify and load the newest usable state (or the one ``path`` names); call on ALL processes.

        The main process chooses the folder, verifies every file against the checksums
        of its ``COMPLETE`` marker, and broadcasts its choice, so every rank loads the
        same state. With ``path=None`` a state that fails verification is skipped with a
        warning naming the bad file, and the previous complete state is tried. An explicit
        ``path`` has no fallback. Nothing is unpickled: registered objects and RNG streams
        come from JSON and safetensors, accelerate's optimizer/scheduler files are read
        with ``torch.load(weights_only=True)``.

        Args:
            accelerator: the ``accelerate.Accelerator`` that prepared the objects (the
                same objects must be registered with :meth:`register` as when saving).
            path: None for the newest state under ``root`` that ``lineage`` accepts; else a
                state folder or a state root (see ``find_resume_state``).

        Returns:
            The step of the loaded state, or None when ``path`` is None and nothing has
            been saved yet (a fresh run).

        Raises:
            CheckpointError: naming the file and the cause: ``path`` holds no complete
                state or fails verification; with ``path=None``, every complete state fails
                verification; or a verified state does not fit this run.
        """
        _refuse_pickled_objects(accelerator)
        payload: list[Any] = [None, None, None, None]  # folder, step, error path, error cause
        if accelerator.is_main_process:
            try:
                chosen = self._choose(path)
            except CheckpointError as error:
                payload[2], payload[3] = str(error.path), error.cause
            else:
                if chosen is not None:
                    payload[0], payload[1] = str(chosen[1]), chosen[0]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(payload, from_process=0)
        folder, step, error_path, cause = payload
        if cause is not None:
            raise CheckpointError(error_path, cause)
        if folder is None:
            return None
        self._load(accelerator, Path(folder))
        self.resumed = Path(folder)
        logger.info("resumed training state of step %d from %s", step, folder)
        return step

    def _choose(self, path: str | os.PathLike | None) -> tuple[int, Path] | None:
        """Main process: the verified ``(step, folder)`` to resume, None for a fresh run."""
        if path is not None:
            folder = find_resume_state(path)
            if folder is None:
                raise CheckpointError(path, "no complete training state there (a state folder holds a "
                                            f"{COMPLETE_MARKER} marker written by StateCheckpointer.save)")
            try:
                return verify_state(folder), folder
            except CheckpointError as error:
                raise CheckpointError(error.path, f"{error.cause}; the state {folder} was requested explicitly "
                                      "(path.resume_state), so no other state is tried") from error
        rejected = []
        for step, folder in reversed(self.lineage_states()):
            try:
                return verify_state(folder), folder
            except CheckpointError as error:
                logger.warning("training state %s is unusable (%s: %s); falling back to the previous complete state",
                               folder, error.path, error.cause)
                rejected.append(f"{error.path}: {error.cause}")
        if rejected:
            raise CheckpointError(self.root, f"none of its {len(rejected)} complete states can be resumed ("
                                  + "; ".join(rejected) + "); remove them to start over")
        return None

    def _load(self, accelerator: Any, folder: Path) -> None:
        """Every process: accelerate's files, then the registered objects and this rank's RNG streams."""
        try:
            accelerator.load_state(str(folder))  # weights_only=True for optimizer/scheduler/scaler files
        except pickle.UnpicklingError as error:
            raise _refused_pickle(folder) from error
        except (SafetensorError, RuntimeError, ValueError, KeyError, EOFError, OSError) as error:
            raise CheckpointError(folder, f"does not load into this run ({type(error).__name__}: {error})") from error
        self._load_objects(folder)
        accelerator_step = _load_rng_state(folder, accelerator.process_index)
        if accelerator_step is None:
            logger.warning("%s has no RNG state for process %d (saved by fewer processes?); random streams not "
                           "restored", folder, accelerator.process_index)
        else:
            accelerator.step = accelerator_step

    def _load_objects(self, folder: Path) -> None:
        if not self._objects:
            return
        source = folder / OBJECTS_JSON
        try:
            tree = json.loads(source.read_text())
            tensors = load_file(str(folder / OBJECTS_TENSORS)) if (folder / OBJECTS_TENSORS).is_file() else {}
        except (OSError, ValueError, SafetensorError) as error:
            raise CheckpointError(source, f"registered objects unreadable ({type(error).__name__}: {error})") from error
        missing = sorted(set(self._objects) - set(tree))
        if missing:
            raise CheckpointError(source, f"no state for the registered object(s) {missing} (saved: {sorted(tree)})")
        extra = sorted(set(tree) - set(self._objects))
        if extra:
            logger.warning("%s holds objects this run does not register (ignored): %s", source, extra)
        for name, obj in self._objects.items():
            try:
                obj.load_state_dict(_decode(tree[name], tensors, source))
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                raise CheckpointError(
                    source, f"object {name!r} does not load ({type(error).__name__}: {error})") from error

    def start_step(self, accelerator: Any, resume_state: str | os.PathLike | None, auto_resume: bool) -> int:
        """The step a training run starts from; call on ALL processes.

        First cleans what interrupted saves left behind (:meth:`clean_stale`, main
        process). Then ``resume_state`` (an option file's ``path.resume_state``) wins;
        otherwise, with ``auto_resume``, the newest usable state ``lineage`` accepts; otherwise 0.
        """
        if accelerator.is_main_process:
            self.clean_stale()
        if resume_state:
            return self.resume(accelerator, resume_state) or 0
        if auto_resume:
            return self.resume(accelerator) or 0
        return 0


def _refused_pickle(folder: Path) -> CheckpointError:
    """The error for a torch file of ``folder`` that the restricted unpickler refused, naming it.

    accelerate does not say which file failed, so (on this failure path only) each torch
    file is read again with ``torch.load(weights_only=True)``, which never runs its code.
    """
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".bin", ".pt", ".pkl") or not path.is_file():
            continue
        try:
            with open(path, "rb") as handle:
                torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            what = f"it references {found.group(1)}" if found else type(error).__name__
            return CheckpointError(path, f"holds objects other than tensors and plain values ({what}); refused "
                                   "without running them. The state folder was edited or not written by textualdeg")
    return CheckpointError(folder, "a torch file holds objects other than tensors and plain values; refused without "
                           "running them")


def _refuse_pickled_objects(accelerator: Any) -> None:
    """Objects registered with accelerate are pickled, and unpickled with weights_only=False on resume."""
    registered = getattr(accelerator, "_custom_objects", None) or []
    if registered:
        names = ", ".join(type(obj).__name__ for obj in registered)
        raise ValueError(
            f"objects registered with accelerator.register_for_checkpointing ({names}) are pickled by accelerate "
            "and unpickled without restriction on resume; register them with StateCheckpointer.register instead"
        )

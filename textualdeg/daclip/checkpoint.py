"""Loading and saving DA-CLIP: the official ``daclip_ViT-B-32.pt``, our folders, plain CLIP files.

``load_daclip`` accepts three kinds of path:

(a) the official file (e.g. ``daclip_ViT-B-32.pt``, a training checkpoint): read with
    ``torch.load(weights_only=True)`` (``textualdeg.checkpoint.load_weights``), the
    ``state_dict`` entry unwrapped and a ``module.`` prefix stripped, then loaded with
    ``strict=True``. Its keys are the official layout (``clip.*``, ``visual.*`` twice
    registered, ``visual_control.*``, ``logit_scale``), which open_clip 3.3's modules
    reproduce exactly for ViT-B-32 (no key mapping is needed; checked against the
    official code by tests/daclip/test_model.py). Without ``model``, the architecture is
    the first of ``ViT-B-32`` and ``ViT-L-14`` (the wild-IR variant) whose key/shape
    layout the file has.
(b) a folder written by :func:`save_daclip`: ``daclip.safetensors`` (the ``visual.*``
    aliases of ``clip.visual.*`` are stored once) and ``daclip_config.json`` (the open_clip
    model config and the degradation names the model was trained with).
(c) a plain open_clip CLIP checkpoint (no ``visual_control`` keys), the starting point of
    DA-CLIP training: loaded into ``DAClip.clip``, then ``initial_controller()``.

Paper: "Controlling Vision-Language Models for Multi-Task Image Restoration" (Luo et al.,
ICLR 2024), arXiv:2310.01018; official code github.com/Algolzw/daclip-uir, commit
90c957438f69d251a7a57cceadab67092f622df7 (``da-clip/src``). Details: docs/daclip.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from textualdeg.checkpoint import CheckpointError, load_weights, save_weights
from textualdeg.daclip.model import DEGRADATIONS, DAClip, build_daclip, resolve_config
from textualdeg.fileio import atomic_write_text
from textualdeg.log import get_logger

logger = get_logger(__name__)

WEIGHTS_NAME = "daclip.safetensors"
CONFIG_NAME = "daclip_config.json"
CONFIG_FORMAT = "textualdeg-daclip-1"
# Architectures tried, in order, for an official file when ``model`` is not given.
DEFAULT_ARCHITECTURES: tuple[str, ...] = ("ViT-B-32", "ViT-L-14")
_ALIAS_PREFIX = "visual."  # DAClip.visual is DAClip.clip.visual
_CLIP_VISUAL_PREFIX = "clip.visual."


class DAClipCheckpointError(ValueError):
    """A DA-CLIP checkpoint that cannot be read or does not fit the architecture tried."""


# -------------------------------------------------------------------- helpers
def _first(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _layout(model: str | os.PathLike | dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a DA-CLIP of this architecture, built on the meta device (no memory)."""
    with torch.device("meta"):
        built = build_daclip(model)
    return {key: tuple(value.shape) for key, value in built.state_dict().items()}


def _mismatches(
    expected: Mapping[str, tuple[int, ...]], weights: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, reshaped) keys of ``weights`` against ``expected``."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [k for k in expected if k in weights and tuple(weights[k].shape) != expected[k]]
    return missing, unexpected, reshaped


def _describe(
    expected: Mapping[str, tuple[int, ...]], weights: Mapping[str, torch.Tensor]
) -> str:
    """One line naming the first missing, unexpected and reshaped keys (empty if it fits)."""
    missing, unexpected, reshaped = _mismatches(expected, weights)
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {len(expected)} keys missing (first: {_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {_first(unexpected)})")
    if reshaped:
        key = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (first: {key} is {_shape(weights[key].shape)} in the file, "
            f"{_shape(expected[key])} in the model)"
        )
    return "; ".join(parts)


def _arch_name(model: str | os.PathLike | dict) -> str:
    return "the given config dict" if isinstance(model, dict) else repr(str(model))


def _read_tensors(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_weights(path, device=map_location)
    except CheckpointError as error:
        raise DAClipCheckpointError(str(error)) from error


def _with_aliases(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the ``visual.*`` keys (aliases of ``clip.visual.*``) when a file stores them once."""
    out = dict(weights)
    for key, value in weights.items():
        if key.startswith(_CLIP_VISUAL_PREFIX):
            out.setdefault(_ALIAS_PREFIX + key[len(_CLIP_VISUAL_PREFIX):], value)
    return out


def _fit(
    path: Path,
    weights: Mapping[str, torch.Tensor],
    candidates: Sequence[str | os.PathLike | dict],
    prefix: str = "",
) -> str | os.PathLike | dict:
    """The first candidate architecture whose (prefixed) layout the weights have exactly.

    Raises:
        DAClipCheckpointError: naming the file, the architectures tried and the first
            mismatches against the first candidate.
    """
    reports = []
    for candidate in candidates:
        layout = _layout(candidate)
        if prefix:
            layout = {k[len(prefix):]: v for k, v in layout.items() if k.startswith(prefix)}
        report = _describe(layout, weights)
        if not report:
            return candidate
        reports.append((candidate, report))
    tried = ", ".join(_arch_name(c) for c in candidates)
    what = "a plain CLIP" if prefix else "DA-CLIP"
    raise DAClipCheckpointError(
        f"{path} does not fit {what} {tried} (tried in that order): against {_arch_name(reports[0][0])}: "
        f"{reports[0][1]} (another architecture? pass model=... with its open_clip name or config)"
    )


# -------------------------------------------------------------------- loading
def _load_folder(folder: Path, model: str | os.PathLike | dict | None, map_location) -> DAClip:
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise DAClipCheckpointError(
            f"{folder} is not a DA-CLIP folder: expected {CONFIG_NAME} and {WEIGHTS_NAME} (written by save_daclip)"
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_cfg = config.get("model_cfg")
    if model_cfg is None:
        raise DAClipCheckpointError(f"{config_file} has no 'model_cfg' entry")
    arch = resolve_config(model) if model is not None else model_cfg
    weights = _with_aliases(_read_tensors(weights_file, map_location))
    _fit(weights_file, weights, [arch])
    daclip = build_daclip(arch)
    daclip.load_state_dict(weights, strict=True)
    return daclip


def load_daclip(
    path: str | os.PathLike,
    model: str | os.PathLike | dict | None = None,
    map_location: str | torch.device = "cpu",
) -> DAClip:
    """Load a DA-CLIP from the official file, a ``save_daclip`` folder or a plain CLIP file.

    Args:
        path: ``daclip_ViT-B-32.pt`` (official), a folder with ``daclip.safetensors`` and
            ``daclip_config.json``, or an open_clip CLIP checkpoint (torch or safetensors).
        model: architecture (open_clip name, JSON config file or dict). Default: the
            folder's config, else the first of ``DEFAULT_ARCHITECTURES`` that fits.
        map_location: device the tensors are read to.

    Returns:
        The model in eval mode; ``model.config`` holds its open_clip config.

    Raises:
        DAClipCheckpointError: unreadable file, or a checkpoint of another architecture
            (naming the file, the architecture(s) tried and the first mismatched keys/shapes).
    """
    path = Path(path)
    if path.is_dir():
        daclip = _load_folder(path, model, map_location)
    else:
        if not path.exists():
            raise DAClipCheckpointError(f"{path}: no such DA-CLIP file or folder")
        weights = _read_tensors(path, map_location)
        candidates = [model] if model is not None else list(DEFAULT_ARCHITECTURES)
        if any(key.startswith("visual_control.") for key in weights):  # (a) official DA-CLIP file
            weights = _with_aliases(weights)
            arch = _fit(path, weights, candidates)
            daclip = build_daclip(arch)
            daclip.load_state_dict(weights, strict=True)
        else:  # (c) plain open_clip CLIP: the start of DA-CLIP training
            arch = _fit(path, weights, candidates, prefix="clip.")
            daclip = build_daclip(arch)
            daclip.clip.load_state_dict(weights, strict=True)
            daclip.initial_controller()
            logger.info("%s is a plain CLIP checkpoint: controller initialised from its image tower", path)
    return daclip.eval()


def read_degradations(path: str | os.PathLike) -> tuple[str, ...]:
    """The degradation names a DA-CLIP was trained with.

    A ``save_daclip`` folder whose config lists ``degradations`` gives those; anything else
    (the official file, a folder without the entry) gives :data:`DEGRADATIONS`.
    """
    config_file = Path(path) / CONFIG_NAME
    if Path(path).is_dir() and config_file.is_file():
        names = json.loads(config_file.read_text(encoding="utf-8")).get("degradations")
        if names:
            return tuple(str(name) for name in names)
    return DEGRADATIONS


# -------------------------------------------------------------------- saving
def save_daclip(
    model: DAClip, folder: str | os.PathLike, degradations: Sequence[str] | None = None
) -> Path:
    """Write ``folder/daclip.safetensors`` and ``folder/daclip_config.json`` atomically.

    The ``visual.*`` keys (the same tensors as ``clip.visual.*``) are stored once; the
    loader restores them.

    Args:
        model: a DA-CLIP with ``model.config`` (set by ``build_daclip``/``load_daclip``).
        folder: output folder (created).
        degradations: the degradation names it was trained with (read back by
            :func:`read_degradations`); omitted from the config when None.

    Returns:
        The folder.
    """
    if model.config is None:
        raise ValueError("save_daclip needs model.config (build the model with build_daclip or load_daclip)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(_ALIAS_PREFIX)}
    save_weights(state, folder / WEIGHTS_NAME, metadata={"format": CONFIG_FORMAT})
    config: dict[str, Any] = {"format": CONFIG_FORMAT, "model_cfg": model.config}
    if degradations is not None:
        config["degradations"] = [str(name) for name in degradations]
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return folder

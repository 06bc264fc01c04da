"""What every plain backbone is built on: ``PaddedBackbone`` and its helpers.

``PaddedBackbone.forward`` checks the input, pads it to the backbone's multiple, runs the
network and crops back; ``FuseFn`` / ``no_fuse`` are the per-level hook a guided
subclass passes in; ``pad_to_multiple`` is the one padding helper (inference uses it
too); ``as_int_tuple`` and ``check_image_input`` check constructor arguments and inputs.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.restoration.archs.memory import CHECKPOINT_MODES

__all__ = [
    "FuseFn",
    "PaddedBackbone",
    "as_int_tuple",
    "check_image_input",
    "crop_stages",
    "no_fuse",
    "pad_to_multiple",
]


# ``fuse(level, x) -> x``: hook a guided subclass passes to a backbone's ``_forward_padded``;
# called on the feature entering each encoder level and the bottleneck (same shape out).
FuseFn = Callable[[int, torch.Tensor], torch.Tensor]


def no_fuse(level: int, x: torch.Tensor) -> torch.Tensor:
    """The identity ``fuse`` hook (plain backbone)."""
    return x


class PaddedBackbone(nn.Module):
    """Base of the plain backbones: one ``forward`` for NAFNet, Restormer and PromptIR.

    ``forward(x)`` checks the input channels, pads right/bottom to ``pad_multiple`` with
    ``pad_mode`` (NAFNet's official check_image_size zero-pads; Restormer's and PromptIR's
    test scripts reflect-pad), runs ``_forward_padded`` and crops back. Subclasses set
    ``input_channels``, ``pad_multiple`` and ``pad_mode`` and define ``_forward_padded``.

    Activation checkpointing (``memory.apply_activation_checkpointing``): a backbone lists
    the modes it supports in ``checkpoint_modes``; the mode is stored in ``checkpointing``
    (here and on its ``memory.CheckpointedSequential`` stages), which its forward reads.
    """

    input_channels: int
    pad_multiple: int
    pad_mode: str = "reflect"
    checkpoint_modes: tuple[str, ...] = CHECKPOINT_MODES
    checkpointing: str = "none"

    def forward(self, x: torch.Tensor, stages: bool = False, **backbone_inputs: Any) -> Any:
        """Restore a batch.

        Args:
            x: (B, input_channels, H, W) in [0, 1], any H and W.
            stages: return every output of a multi-stage network (``_forward_stages_padded``;
                SFNet's scales, DSRIR's stages), each cropped to its share of (H, W), for
                the stage losses (``restoration/stage_losses.py``). Going through
                ``forward`` keeps DDP's gradient hooks.
            **backbone_inputs: further keywords of ``_forward_padded`` /
                ``_forward_stages_padded`` (checked by the caller): TextPromptIR's
                ``text_embedding``, a DA-CLIP conditioned network's ``daclip``.

        Returns:
            (B, output channels, H, W); with ``stages``, the network's stage outputs.
        """
        check_image_input(x, self.input_channels)
        h, w = x.shape[-2:]
        padded = self._pad(x)
        if stages:
            return crop_stages(self._forward_stages_padded(padded, **backbone_inputs), padded.shape[-2:], (h, w))
        out = self._forward_padded(padded, **backbone_inputs)
        return out[:, :, :h, :w]

    def _forward_stages_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None, **backbone_inputs: Any) -> Any:
        """Every output of a multi-stage network (a NamedTuple of tensor lists, final first)."""
        raise ValueError(f"{type(self).__name__} has a single output: train it with a pixel loss "
                         f"(train.pixel_opt), not a stage loss")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad right/bottom to a multiple of ``pad_multiple`` with ``pad_mode``."""
        return pad_to_multiple(x, self.pad_multiple, mode=self.pad_mode)

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        raise NotImplementedError


def as_int_tuple(name: str, value, length: int | None = None, minimum: int = 0) -> tuple[int, ...]:
    """Validate a sequence of ints (YAML gives lists) and return it as a tuple.

    Args:
        name: argument name used in the error message.
        value: the sequence to check.
        length: required length, or None for any length.
        minimum: smallest allowed entry.

    Returns:
        The entries as a tuple of ints.

    Raises:
        ValueError: naming ``name`` and ``value`` when it is not such a sequence.
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of ints, got {value!r}")
    items = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{name} must contain ints, got {value!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")
    return items


def check_image_input(x: torch.Tensor, channels: int, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a (B, channels, H, W) tensor.

    Args:
        x: the input batch.
        channels: expected channel count.
        name: argument name used in the message.
    """
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{name} must have shape (B, {channels}, H, W); got {tuple(x.shape)}"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad the right and bottom of ``x`` so H and W are multiples of ``multiple``.

    Args:
        x: (B, C, H, W) tensor.
        multiple: target multiple (1 disables padding).
        mode: ``"constant"`` (zeros, NAFNet's ``check_image_size``) or ``"reflect"``
            (Restormer's test script). Reflect falls back to ``"replicate"`` when a side is
            too small to reflect (pad >= size).

    Returns:
        (B, C, H', W') tensor with H' = ceil(H / multiple) * multiple, same for W'.
    """
    h, w = x.shape[-2:]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "constant":
        return F.pad(x, (0, pad_w, 0, pad_h))
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def crop_stages(out: Any, padded_hw: Sequence[int], hw: Sequence[int]) -> Any:
    """Crop every tensor of a stage tuple to its share of the unpadded size.

    Args:
        out: a NamedTuple whose fields are lists of (B, C, H_i, W_i) tensors computed on a
            padded input of size ``padded_hw``; an output at scale ``H_i / H_pad`` keeps
            ``ceil(h * H_i / H_pad)`` rows (and likewise columns).
        padded_hw: (H_pad, W_pad).
        hw: (h, w), the input size before padding.

    Returns:
        The same type with cropped tensors.
    """
    (hp, wp), (h, w) = padded_hw, hw

    def crop(t: torch.Tensor) -> torch.Tensor:
        return t[..., : math.ceil(h * t.shape[-2] / hp), : math.ceil(w * t.shape[-1] / wp)]

    return type(out)(*[[crop(t) for t in field] for field in out])

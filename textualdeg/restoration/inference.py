"""Whole-image inference for restoration models: padding, tiling with blending, x8 ensemble.

Test images (GoPro 1280x720, SIDD full frames, 4K photos) often do not fit in GPU
memory at once (Restormer #29/#104, NAFNet #11/#126, PromptIR #2). :func:`restore`
runs a model on images of any size: it reflect-pads to the model's ``pad_multiple``,
optionally splits the image into overlapping tiles blended with a weight ramp, and
optionally averages the eight flip/rot90 versions (self-ensemble). Validation during
training, stage-5 evaluation and ``textualdeg restore`` all restore through it, so the
same image and weights give the same output in all three; :func:`resolve_device` reads
their ``device`` settings.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import torch
from torch import nn

from textualdeg.log import get_logger
from textualdeg.restoration.archs.backbone_base import pad_to_multiple  # the one padding helper; re-exported

logger = get_logger(__name__)


def resolve_device(name: str | None = "auto", argument: str = "device") -> torch.device:
    """The device a ``device`` setting names.

    Args:
        name (str | None): ``auto`` or None (cuda when available, else cpu), ``cpu``,
            ``cuda`` or ``cuda:N``.
        argument (str): the option or flag named in error messages (``test.device``,
            ``--device``).

    Raises:
        ValueError: not a device name, or a CUDA device when none is available.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"{argument} {name!r}: expected auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{argument} {name!r}: no CUDA device is available (use cpu)")
    return device


def _pad_multiple(model: nn.Module) -> int:
    multiple = getattr(model, "pad_multiple", 1)
    return int(multiple) if multiple else 1


def _call(model: nn.Module, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
    return model(x) if ref is None else model(x, ref)


def _tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` shared.

    ``length`` and ``tile`` are multiples of ``multiple`` and so is every start, so each
    tile sees the same down-sampling grid as the whole image (U-Nets are only
    translation-equivariant by multiples of their total stride).
    """
    if length <= tile:
        return [0]
    stride = (tile - overlap) // multiple * multiple  # >= multiple, checked by restore_tensor()
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(size: int, overlap: int, ramp_start: bool, ramp_end: bool, device: torch.device) -> torch.Tensor:
    """1-D blending weights of one tile along one axis, shape (size,).

    Next to an edge shared with another tile the weight is 0 for ``overlap // 4``
    pixels (where a model's padding effects live), then rises linearly to 1 over the
    middle half of the overlap; edges on the image border keep weight 1. Two
    neighbours sharing ``overlap`` pixels therefore never both have weight 0.
    """
    weights = torch.ones(size, dtype=torch.float64)
    margin = overlap // 4
    width = max(overlap - 2 * margin, 1)
    d = torch.arange(size, dtype=torch.float64)  # distance to the start edge
    if ramp_start:
        weights = torch.minimum(weights, ((d - margin + 0.5) / width).clamp(0.0, 1.0))
    if ramp_end:
        weights = torch.minimum(weights, ((size - 1 - d - margin + 0.5) / width).clamp(0.0, 1.0))
    return weights.to(device)


def _forward_tiled(model: nn.Module, x: torch.Tensor, ref: torch.Tensor | None, tile: int,
                   overlap: int, multiple: int) -> torch.Tensor:
    """Tiled inference with weighted overlap blending. x: (B, C, H, W) -> (B, C_out, H, W).

    H, W and ``tile`` are multiples of the model's ``pad_multiple``, so every tile is too.
    """
    h, w = x.shape[-2:]
    tops, lefts = _tile_starts(h, tile, overlap, multiple), _tile_starts(w, tile, overlap, multiple)
    logger.debug("tiled inference: %d x %d tiles of %d px (overlap %d)", len(tops), len(lefts), tile, overlap)
    out_sum: torch.Tensor | None = None
    weight_sum = torch.zeros(1, 1, h, w, dtype=torch.float32, device=x.device)
    for top in tops:
        th = min(tile, h)
        wy = _ramp(th, overlap, top > 0, top + th < h, x.device)
        for left in lefts:
            tw = min(tile, w)
            wx = _ramp(tw, overlap, left > 0, left + tw < w, x.device)
            out = _call(model, x[..., top:top + th, left:left + tw], ref)  # (B, C_out, th, tw)
            if out_sum is None:
                out_sum = torch.zeros(out.shape[0], out.shape[1], h, w, dtype=torch.float32, device=x.device)
            weight = (wy[:, None] * wx[None, :]).to(torch.float32)  # (th, tw)
            out_sum[..., top:top + th, left:left + tw] += out.float() * weight
            weight_sum[..., top:top + th, left:left + tw] += weight
    return (out_sum / weight_sum).to(x.dtype)


_ENSEMBLE = [(k, flip) for flip in (False, True) for k in range(4)]


def _transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _inverse(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -k, dims=(-2, -1))
    if flip:
        x = x.flip(-1)
    return x


@torch.no_grad()
def restore_tensor(model: nn.Module, lq: torch.Tensor, ref: torch.Tensor | None = None, tile: int | None = None,
                   tile_overlap: int = 32, self_ensemble: bool = False) -> torch.Tensor:
    """Restore a batch of images of any size.

    The model is called as ``model(x)`` or, when ``ref`` is given, ``model(x, ref)``
    (guided models do their own matching against the full reference, so every tile
    receives the whole ``ref``). Put the model in ``eval()`` mode first; the output is
    not clamped.

    Args:
        model (nn.Module): restoration network; its ``pad_multiple`` attribute (default 1)
            sets the reflect padding (bottom/right) applied to the input before the model
            (or the tiling) sees it; the output is cropped back.
        lq (torch.Tensor): (B, C, H, W) degraded images in [0, 1].
        ref (torch.Tensor | None): (B, C, Hr, Wr) guidance images in [0, 1], any size.
        tile (int | None): tile side in pixels (rounded up to a multiple of
            ``pad_multiple``; tile offsets are multiples of it too); None runs the whole
            image at once.
            Tiles overlap by ``tile_overlap``; outputs are blended with weights that are
            0 within ``tile_overlap // 4`` pixels of a shared tile edge and ramp up to 1
            across the middle of the overlap, so a model whose receptive-field radius is
            at most ``tile_overlap // 4`` gives the untiled result exactly.
        tile_overlap (int): overlap between neighbouring tiles, 0 <= overlap < tile.
        self_ensemble (bool): average the outputs of the 8 flip/rot90 versions of the
            input (each mapped back); ``ref`` is transformed the same way.

    Returns:
        (B, C_out, H, W) tensor, C_out as the model produces.
    """
    if lq.ndim != 4:
        raise ValueError(f"lq must be (B, C, H, W); got shape {tuple(lq.shape)}")
    if ref is not None and (ref.ndim != 4 or ref.shape[0] != lq.shape[0]):
        raise ValueError(f"ref must be (B, C, Hr, Wr) with B={lq.shape[0]}; got shape {tuple(ref.shape)}")
    if tile is not None:
        if not isinstance(tile, int) or tile < 1:
            raise ValueError(f"tile must be a positive integer or None; got {tile!r}")
        if not isinstance(tile_overlap, int) or not 0 <= tile_overlap < tile:
            raise ValueError(f"tile_overlap must be an integer in [0, tile={tile}); got {tile_overlap!r}")

    multiple = _pad_multiple(model)
    tile_size = None if tile is None else -(-tile // multiple) * multiple  # round up to the multiple
    if tile_size is not None and tile_size - tile_overlap < multiple:
        raise ValueError(f"tile={tile} (rounded up to {tile_size}, a multiple of the model's pad_multiple "
                         f"{multiple}) must exceed tile_overlap={tile_overlap} by at least {multiple}")

    def run(x: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        # pad the whole image once, so tiles at the image border see the same padding as
        # the untiled run and every tile is already a multiple of the model's multiple
        padded = pad_to_multiple(x, multiple, mode="reflect")  # (B, C, H', W')
        if tile_size is None or (padded.shape[-2] <= tile_size and padded.shape[-1] <= tile_size):
            out = _call(model, padded, r)
        else:
            out = _forward_tiled(model, padded, r, tile_size, tile_overlap, multiple)
        return out[..., :h, :w]

    if not self_ensemble:
        return run(lq, ref)
    total: torch.Tensor | None = None
    for k, flip in _ENSEMBLE:
        r = None if ref is None else _transform(ref, k, flip)
        out = _inverse(run(_transform(lq, k, flip), r), k, flip)
        total = out.float() if total is None else total + out.float()
    return (total / len(_ENSEMBLE)).to(lq.dtype)


__all__ = ["pad_to_multiple", "resolve_device", "restore_tensor"]

"""The refined reference path (``reference_mode: refined``): dense, border-safe,
pixel-precise correspondences that cannot collapse the matching features, and a gate.

The faithful path (``reference_mode: masa``, ``matching.py`` + ``transfer.py``) is the
authors' MASA-SR transfer, kept bit-exact. Measured on it (docs/reference_path.md) it has
three properties that cap what a guidance image can add:

1. **Border defect.** A matched 3x3 patch centre can never lie on the reference border,
   so the outer ring of deepest cells is displaced even for a perfectly aligned reference.
2. **Collapse.** The warp is multiplied by the differentiable top-1 cosine of ReLU
   features; training raises that cosine everywhere by making all positions alike, the
   matches degrade and the network learns to ignore the reference.
3. **One-cell precision.** Correspondences exist only at the deepest level (4 px in the
   tiny configuration, 16 px in option 002) and are copied cell-wise to finer levels, so a
   few-pixel misalignment of a generated image is never corrected.

This module keeps the shared encoder and the fusion stacks and replaces matching,
transfer and confidence:

* **Centred unit features.** Matching compares features minus their per-image,
  per-channel spatial mean, L2-normalised per position (:func:`centred_unit`). Raw ReLU
  features share a large common component (mean cosine 0.88-0.97 between *different*
  positions at initialisation); centring removes it, so the similarity says which
  position matches rather than that all are positive.
* **Border margin.** The deepest reference level is padded by one replicated cell before
  the block-wise coarse-to-fine search (the faithful :class:`CoarseToFineMatcher`, reused),
  so a matched patch centre can be any reference cell, borders included.
* **Pixel-precise refinement.** The correspondence is propagated level by level to the
  finest one (``2 * match(p // 2) + p % 2``) and at every level each position tries its
  3x3 neighbourhood of candidates (:func:`refine`); the cost of each candidate is the
  cosine of the unit features averaged over a ``refine_window`` box (cost aggregation, as
  in stereo matching), which makes the choice robust to noise in the degraded input. A
  shift of a few pixels is corrected to the pixel at the finest level.
* **Detached, bounded gate.** The warped features are multiplied by
  ``sigmoid(w_l * s + b_l)`` where ``s`` is the aggregated similarity of the chosen match,
  *detached*, and ``w_l``, ``b_l`` are two learned scalars per level (:class:`MatchGate`,
  ``masa_gate``). No gradient reaches the features through the similarity, so nothing
  rewards making positions alike; the gate can still learn to close for a reference the
  network cannot use (an unrelated image, noise).
* **A correspondence loss** (:func:`correspondence_loss`, weighted by
  ``train.correspondence_opt.loss_weight``). Nothing in the restoration loss asks the
  encoder to give a degraded image and a clean one similar features at corresponding
  places. In training the clean target is exactly aligned with the input, so the encoder
  can be taught directly: the clean target is moved by a random shift of up to one deepest
  cell and a random zoom (:class:`Move`), and at the deepest level every input position
  must pick its moved clean position among all positions (InfoNCE), at each finer level
  among the 3x3 candidates :func:`refine` chooses from. Features that do this are
  degradation-invariant and match at sub-cell offsets, which is what a generated guidance
  image needs.
* **Warping by gathering.** Each level is warped by reading the reference feature at its
  own correspondence (:func:`warp`), so identity correspondences reproduce the reference
  exactly, borders included, and gradients reach the encoder through the reference side.
  Because the finest correspondences are per pixel, the guidance *pixels* are warped too
  and added, through a zero-initialised convolution (``masa_ref_pixels``), to the finest
  warped feature (``guided.py``).

Measurements (tiny GuidedNAFNet, sigma-50 denoising, 3 seeds; ``bench/oracle_guidance.py``)
are in docs/reference_path.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.restoration.reference.matching import CoarseToFineMatcher

__all__ = [
    "Correspondence",
    "MatchGate",
    "Move",
    "RefinedMatcher",
    "candidate_costs",
    "centred_unit",
    "correspondence_loss",
    "identity_correspondence",
    "refine",
    "similarity",
    "upsample_correspondence",
    "warp",
]

# the 3x3 candidate offsets (dy, dx) tried at each refinement level, centre first
_OFFSETS = ((0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# a neighbour must beat the current match by this much to replace it: narrow features
# (4 channels at the finest level of a small model) have many exactly parallel unit
# vectors, whose cosines tie up to rounding; far below the cost differences of real matches
_STAY_MARGIN = 1e-3


@dataclass(frozen=True)
class Correspondence:
    """Dense correspondences of one pyramid level.

    Attributes:
        coords (Tensor): (N, 2, H, W) int64: (row, column) in the reference level read
            by each input position.
        similarity (Tensor): (N, 1, H, W) aggregated centred cosine of each match, in
            [-1, 1], detached.
    """

    coords: torch.Tensor
    similarity: torch.Tensor


def centred_unit(feat: torch.Tensor) -> torch.Tensor:
    """Subtract each channel's spatial mean (per image), then L2-normalise each position.

    Args:
        feat (Tensor): (N, C, H, W).

    Returns:
        Tensor: (N, C, H, W) unit vectors along C (zero where a position equals the mean).
    """
    centred = feat - feat.mean(dim=(2, 3), keepdim=True)
    return F.normalize(centred, dim=1, eps=1e-6)


def warp(feat: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Read ``feat`` at integer ``coords``: out[n, :, y, x] = feat[n, :, *coords[n, :, y, x]].

    Args:
        feat (Tensor): (N, C, Hr, Wr) reference feature.
        coords (Tensor): (N, 2, H, W) int64 (row, column), inside ``feat``.

    Returns:
        Tensor: (N, C, H, W); differentiable with respect to ``feat``.
    """
    n, c, hr, wr = feat.shape
    h, w = coords.shape[2:]
    index = (coords[:, 0] * wr + coords[:, 1]).reshape(n, 1, h * w).expand(n, c, h * w)  # (N, C, H*W)
    return torch.gather(feat.reshape(n, c, hr * wr), 2, index).view(n, c, h, w)


def identity_correspondence(n: int, size: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(N, 2, H, W) int64 coordinates that read every position from itself."""
    h, w = size
    ys = torch.arange(h, device=device)[:, None].expand(h, w)
    xs = torch.arange(w, device=device)[None, :].expand(h, w)
    return torch.stack([ys, xs])[None].expand(n, 2, h, w).clone()


def _clamp(coords: torch.Tensor, ref_size: tuple[int, int]) -> torch.Tensor:
    y = coords[:, 0].clamp(0, ref_size[0] - 1)
    x = coords[:, 1].clamp(0, ref_size[1] - 1)
    return torch.stack([y, x], dim=1)


def similarity(lq_unit: torch.Tensor, ref_unit: torch.Tensor, coords: torch.Tensor, window: int) -> torch.Tensor:
    """Cosine of each position with its match, box-averaged over ``window`` x ``window``.

    Args:
        lq_unit (Tensor): (N, C, H, W) centred unit input features.
        ref_unit (Tensor): (N, C, Hr, Wr) centred unit reference features.
        coords (Tensor): (N, 2, H, W) int64 correspondences.
        window (int): odd side of the aggregation box (1: no aggregation).

    Returns:
        Tensor: (N, 1, H, W) in [-1, 1].
    """
    cos = (warp(ref_unit, coords) * lq_unit).sum(dim=1, keepdim=True)  # (N, 1, H, W)
    if window > 1:
        cos = F.avg_pool2d(cos, window, stride=1, padding=window // 2, count_include_pad=False)
    return cos


def upsample_correspondence(coords: torch.Tensor, ref_size: tuple[int, int]) -> torch.Tensor:
    """Correspondences of the next finer level: ``2 * coords[p // 2] + p % 2``, clamped.

    Args:
        coords (Tensor): (N, 2, H, W) int64 at one level.
        ref_size (tuple[int, int]): (Hr, Wr) of the finer reference level.

    Returns:
        Tensor: (N, 2, 2H, 2W) int64.
    """
    n, _, h, w = coords.shape
    up = coords.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 2  # (N, 2, 2H, 2W)
    parity = identity_correspondence(1, (2 * h, 2 * w), coords.device) % 2  # (1, 2, 2H, 2W)
    return _clamp(up + parity, ref_size)


def candidate_costs(
    lq_unit: torch.Tensor, ref_unit: torch.Tensor, coords: torch.Tensor, window: int
) -> torch.Tensor:
    """Aggregated similarity of each position with the 3x3 neighbours of its match.

    Args:
        lq_unit (Tensor): (N, C, H, W) centred unit input features.
        ref_unit (Tensor): (N, C, Hr, Wr) centred unit reference features.
        coords (Tensor): (N, 2, H, W) int64 matches.
        window (int): aggregation box side (see :func:`similarity`).

    Returns:
        Tensor: (N, 9, H, W), candidates in ``_OFFSETS`` order (the match itself first).
    """
    ref_size = tuple(ref_unit.shape[2:])
    offsets = torch.tensor(_OFFSETS, device=coords.device)  # (9, 2)
    return torch.cat(
        [similarity(lq_unit, ref_unit, _clamp(coords + d[None, :, None, None], ref_size), window) for d in offsets],
        dim=1,
    )  # (N, 9, H, W)


def refine(
    lq_unit: torch.Tensor, ref_unit: torch.Tensor, coords: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each correspondence to the best of its 3x3 neighbours (aggregated cost).

    Args:
        lq_unit (Tensor): (N, C, H, W) centred unit input features.
        ref_unit (Tensor): (N, C, Hr, Wr) centred unit reference features.
        coords (Tensor): (N, 2, H, W) int64 current correspondences.
        window (int): aggregation box side (see :func:`similarity`).

    Returns:
        tuple[Tensor, Tensor]: refined (N, 2, H, W) coordinates and their (N, 1, H, W)
        aggregated similarity.
    """
    costs = candidate_costs(lq_unit, ref_unit, coords, window)  # (N, 9, H, W)
    biased = costs.clone()
    biased[:, 0] += _STAY_MARGIN  # candidate 0 is the current match
    best = biased.argmax(dim=1, keepdim=True)  # (N, 1, H, W)
    offsets = torch.tensor(_OFFSETS, device=coords.device)  # (9, 2)
    delta = offsets[best[:, 0]].permute(0, 3, 1, 2)  # (N, H, W, 2) -> (N, 2, H, W)
    return _clamp(coords + delta, tuple(ref_unit.shape[2:])), costs.gather(1, best)


class RefinedMatcher(nn.Module):
    """Dense correspondences for every level of a feature pyramid (no parameters).

    Args:
        block_size (int): coarse-search block side at the deepest level.
        window_scale (float): coarse search-window scale.
        dilations (Sequence[int]): coarse-search dilations.
        refine_window (int): odd side of the cost-aggregation box of :func:`refine`.
            Default 5.
    """

    def __init__(
        self,
        block_size: int = 8,
        window_scale: float = 1.5,
        dilations: Sequence[int] = (1, 2, 3),
        refine_window: int = 5,
    ) -> None:
        super().__init__()
        if not isinstance(refine_window, int) or isinstance(refine_window, bool) or refine_window < 1 \
                or refine_window % 2 == 0:
            raise ValueError(f"refine_window must be an odd int >= 1, got {refine_window!r}")
        self.search = CoarseToFineMatcher(block_size=block_size, window_scale=window_scale, dilations=dilations)
        self.refine_window = refine_window

    def forward(self, lq_feats: Sequence[torch.Tensor], ref_feats: Sequence[torch.Tensor]) -> list[Correspondence]:
        """Match an input pyramid to a reference pyramid.

        Args:
            lq_feats (Sequence[Tensor]): input features, finest first; level l is
                (N, C_l, H / 2**l, W / 2**l); the deepest H, W are multiples of ``block_size``.
            ref_feats (Sequence[Tensor]): reference features, same levels,
                (N, C_l, Hr / 2**l, Wr / 2**l).

        Returns:
            list[Correspondence]: one per level, finest first.
        """
        if len(lq_feats) != len(ref_feats):
            raise ValueError(f"RefinedMatcher: {len(lq_feats)} input levels but {len(ref_feats)} reference levels")
        lq_units = [centred_unit(f) for f in lq_feats]
        ref_units = [centred_unit(f) for f in ref_feats]
        with torch.no_grad():  # correspondences are indices: nothing to differentiate
            coords = self._deepest(lq_units[-1], ref_units[-1])
            levels = [Correspondence(coords, similarity(lq_units[-1], ref_units[-1], coords, self.refine_window))]
            for lq_unit, ref_unit in zip(reversed(lq_units[:-1]), reversed(ref_units[:-1])):
                coords = upsample_correspondence(coords, tuple(ref_unit.shape[2:]))
                coords, sim = refine(lq_unit, ref_unit, coords, self.refine_window)
                levels.append(Correspondence(coords, sim))
        return levels[::-1]

    def _deepest(self, lq_unit: torch.Tensor, ref_unit: torch.Tensor) -> torch.Tensor:
        """Block-wise search against the reference padded by one replicated cell."""
        hr, wr = ref_unit.shape[2:]
        padded = F.pad(ref_unit, (1, 1, 1, 1), mode="replicate")  # (N, C, Hr+2, Wr+2)
        match = self.search(lq_unit, padded)
        coords = torch.stack([match.ref_y - 1, match.ref_x - 1], dim=1)  # (N, 2, H, W), unpadded
        return _clamp(coords, (hr, wr))


class MatchGate(nn.Module):
    """Per-level gate ``sigmoid(weight[l] * similarity + bias[l])`` on the warped features.

    The similarity is detached (:class:`RefinedMatcher`), so only ``weight`` and ``bias``
    learn from it. At initialisation (weight 4, bias 0) a perfect match passes 0.98 of its
    feature, an uncorrelated one (similarity 0) half of it.

    Args:
        num_levels (int): pyramid levels.
    """

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_levels,), 4.0))
        self.bias = nn.Parameter(torch.zeros(num_levels))

    def forward(self, warped: Sequence[torch.Tensor], matches: Sequence[Correspondence]) -> list[torch.Tensor]:
        """Args: warped: per level (N, C_l, H_l, W_l); matches: per level. Returns: gated features."""
        return [
            feat * torch.sigmoid(self.weight[level] * match.similarity.to(feat.dtype) + self.bias[level])
            for level, (feat, match) in enumerate(zip(warped, matches))
        ]


#: softmax temperature of :func:`correspondence_loss` (cosines in [-1, 1])
CORRESPONDENCE_TEMPERATURE = 0.1
#: largest zoom (per axis, either way) of the clean image in the correspondence loss
CORRESPONDENCE_ZOOM = 1.5


def _moved_targets(
    n: int, size: tuple[int, int], image_hw: tuple[int, int], move: Move, scale: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each position of one level should match in the moved clean image, and which
    positions to score (target and source at least one cell inside the level)."""
    h, w = size
    ident = identity_correspondence(n, size, device).double()  # (N, 2, H, W) cells
    centre = torch.tensor([(image_hw[0] - 1) / 2, (image_hw[1] - 1) / 2], device=device, dtype=torch.float64)
    zoom = torch.tensor(move.zoom, device=device, dtype=torch.float64).view(1, 2, 1, 1)
    shift = torch.tensor(move.shift, device=device, dtype=torch.float64).view(1, 2, 1, 1)
    pixels = (ident + 0.5) * scale - 0.5  # cell centres in input pixels
    moved = zoom * (pixels - centre.view(1, 2, 1, 1)) + centre.view(1, 2, 1, 1) + shift
    target = torch.round((moved + 0.5) / scale - 0.5).long()
    inside = lambda c: (c[:, 0] >= 1) & (c[:, 0] < h - 1) & (c[:, 1] >= 1) & (c[:, 1] < w - 1)
    return target, inside(target) & inside(ident.long())  # (N, 2, H, W), (N, H, W)


@dataclass(frozen=True)
class Move:
    """A synthetic move of the clean image: ``moved(zoom * (p - centre) + centre + shift)
    = clean(p)``, per axis (rows, columns), in input pixels."""

    shift: tuple[float, float] = (0.0, 0.0)
    zoom: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def draw(cls, max_shift: int, max_zoom: float, generator: torch.Generator | None = None) -> Move:
        """Integer shift uniform in [-max_shift, max_shift], zoom log-uniform in
        [1 / max_zoom, max_zoom], independently per axis."""
        shift = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)
        log_zoom = (torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1) * math.log(max_zoom)
        return cls(shift=(float(shift[0]), float(shift[1])), zoom=tuple(float(z) for z in log_zoom.exp()))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """The moved image (bilinear, edges replicated; exact for integer shifts at zoom 1).

        Args:
            image (Tensor): (N, C, H, W).

        Returns:
            Tensor: (N, C, H, W).
        """
        n, _, h, w = image.shape
        if self.zoom == (1.0, 1.0) and all(float(s).is_integer() for s in self.shift):
            dy, dx = int(self.shift[0]), int(self.shift[1])
            pad = max(abs(dy), abs(dx))
            padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")  # (N, C, H+2p, W+2p)
            return padded[:, :, pad - dy : pad - dy + h, pad - dx : pad - dx + w]  # moved[p] = image[p - shift]
        zy, zx = self.zoom
        theta = torch.tensor(
            [[1 / zx, 0.0, -2 * self.shift[1] / w / zx], [0.0, 1 / zy, -2 * self.shift[0] / h / zy]],
            dtype=image.dtype, device=image.device,
        ).expand(n, 2, 3)
        grid = F.affine_grid(theta, [n, image.shape[1], h, w], align_corners=False)  # (N, H, W, 2)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def correspondence_loss(
    lq_feats: Sequence[torch.Tensor], clean_feats: Sequence[torch.Tensor], window: int,
    move: Move = Move(), temperature: float = CORRESPONDENCE_TEMPERATURE,
) -> torch.Tensor:
    """InfoNCE loss that teaches the encoder to match a degraded input to a clean image.

    ``clean_feats`` encode the clean target moved by ``move`` (:meth:`Move.apply`), so the
    right match of each input position is known at every level; random shifts of up to a
    deepest cell and zooms teach the strided encoder to match at sub-cell offsets and
    across scale, as a generated guidance image needs. Deepest level: each input position
    classifies its match among all clean positions of its image. Finer levels: among the
    3x3 candidates around the right match, scored as :func:`refine` scores them (aggregated
    cosine), so the loss trains exactly the decisions the matcher makes. Positions whose
    match or own place is on the border ring are left out.

    Args:
        lq_feats (Sequence[Tensor]): input pyramid, finest first, (N, C_l, H_l, W_l).
        clean_feats (Sequence[Tensor]): pyramid of the moved clean target, same shapes.
        window (int): aggregation box (the matcher's ``refine_window``).
        move (Move): how the clean target was moved.
        temperature (float): softmax temperature.

    Returns:
        Tensor: scalar, the mean of the per-level losses.
    """
    if len(lq_feats) != len(clean_feats) or any(a.shape != b.shape for a, b in zip(lq_feats, clean_feats)):
        raise ValueError("correspondence_loss needs input and clean pyramids of equal shapes")
    depth = len(lq_feats)
    n, _, h, w = lq_feats[-1].shape
    device = lq_feats[-1].device
    image_hw = tuple(lq_feats[0].shape[2:])
    losses = []
    target, valid = _moved_targets(n, (h, w), image_hw, move, 2 ** (depth - 1), device)
    if valid.any():
        q, k = centred_unit(lq_feats[-1]).flatten(2), centred_unit(clean_feats[-1]).flatten(2)  # (N, C, P)
        logits = torch.bmm(q.transpose(1, 2), k) / temperature  # (N, P, P)
        target = _clamp(target, (h, w))  # only valid positions are scored; keep the rest in range
        flat = (target[:, 0] * w + target[:, 1]).reshape(-1)  # (N*P,)
        per_position = F.cross_entropy(logits.reshape(n * h * w, h * w), flat, reduction="none")
        losses.append(per_position[valid.reshape(-1)].mean())
    for level, (lq, clean) in enumerate(zip(lq_feats[:-1], clean_feats[:-1])):
        size = tuple(lq.shape[2:])
        target, valid = _moved_targets(n, size, image_hw, move, 2**level, device)
        if not valid.any():
            continue
        costs = candidate_costs(centred_unit(lq), centred_unit(clean), target, window)  # (N, 9, H, W)
        per_position = F.cross_entropy(costs / temperature, torch.zeros_like(valid, dtype=torch.long), reduction="none")
        losses.append(per_position[valid].mean())
    if not losses:
        raise ValueError(f"correspondence_loss: no position to score with {move} at sizes "
                         f"{[tuple(f.shape[2:]) for f in lq_feats]}")
    return torch.stack(losses).mean()

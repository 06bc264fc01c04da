"""Coarse-to-fine correspondence search between input and reference features.

Part of the reference-guidance branch of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334); the
search itself comes from MASA-SR (Lu et al., CVPR 2021, arXiv:2104.01074).

Both stages run on the deepest encoder level:

* coarse: the input feature is cut into ``block_size`` x ``block_size`` blocks; the 3x3
  samples around each block's centre, taken with every dilation in ``dilations``, are
  compared (cosine similarity, summed over dilations) with the 3x3 patch around every
  reference position; the best position gives a search window on the reference whose
  size grows with the reference/input size ratio (``window_scale``);
* fine: every input position (with its 3x3 neighbourhood) is compared with every 3x3
  patch inside its block's window; the top-1 gives the correspondence and its cosine
  similarity the match confidence.

Re-implemented following the authors' arithmetic
(``mrluin/TextualDegRemoval@e755c39 models/archs/network_nafnet_guided_arch.py``,
``search``/``search_org``; no license file upstream) but vectorised over blocks and
batch, and without two defects (docs/official_differences.md): windows of a non-square
pair are indexed correctly (their D54), and a window never leaves the reference (their
D55: it is clamped, and shrunk to the reference when the reference is smaller than the
window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Match", "CoarseToFineMatcher", "gather_windows"]


@dataclass(frozen=True)
class Match:
    """Result of :class:`CoarseToFineMatcher` at the deepest feature level.

    Attributes:
        ref_y (Tensor): (N, H, W) int64, row in the deepest reference feature of the
            centre of the 3x3 patch matched to each input position.
        ref_x (Tensor): (N, H, W) int64, the matching column.
        confidence (Tensor): (N, 1, H, W) cosine similarity of each match, in [-1, 1];
            differentiable with respect to both features.
        window_y0 (Tensor): (N, py, px) int64, top row of each block's search window.
        window_x0 (Tensor): (N, py, px) int64, left column of each block's window.
        window_size (tuple[int, int]): (height, width) of every search window.
        block_size (int): side of the input blocks, in deepest-level pixels.
        ref_size (tuple[int, int]): (Hr, Wr) of the deepest reference feature.
    """

    ref_y: torch.Tensor
    ref_x: torch.Tensor
    confidence: torch.Tensor
    window_y0: torch.Tensor
    window_x0: torch.Tensor
    window_size: tuple[int, int]
    block_size: int
    ref_size: tuple[int, int]


def gather_windows(
    feat: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, size: tuple[int, int], scale: int = 1
) -> torch.Tensor:
    """Crop one window per (batch element, block) from a feature map, without loops.

    Args:
        feat (Tensor): (N, C, Hf, Wf) feature map.
        y0 (Tensor): (N, P) int64 top rows, in units of ``1 / scale`` of ``feat``'s grid.
        x0 (Tensor): (N, P) int64 left columns, same units.
        size (tuple[int, int]): (h, w) window size in the same units.
        scale (int): resolution of ``feat`` relative to the grid of ``y0``/``x0``;
            origins and size are multiplied by it. Default: 1.

    Returns:
        Tensor: (N * P, C, h * scale, w * scale), windows of batch element n first.
    """
    n, c, _, _ = feat.shape
    p = y0.shape[1]
    h, w = size[0] * scale, size[1] * scale
    rows = y0[:, :, None] * scale + torch.arange(h, device=feat.device)  # (N, P, h)
    cols = x0[:, :, None] * scale + torch.arange(w, device=feat.device)  # (N, P, w)
    batch = torch.arange(n, device=feat.device)[:, None, None, None]  # (N, 1, 1, 1)
    windows = feat.permute(0, 2, 3, 1)[batch, rows[:, :, :, None], cols[:, :, None, :]]  # (N, P, h, w, C)
    return windows.permute(0, 1, 4, 2, 3).reshape(n * p, c, h, w)  # (N*P, C, h, w)


class CoarseToFineMatcher(nn.Module):
    """Block-wise coarse search plus in-window 3x3 patch search (no parameters).

    Args:
        block_size (int): side of the input blocks at the deepest level (the authors'
            ``lr_block_size``). Default: 8.
        window_scale (float): window size relative to the reference/input block ratio
            (the authors' ``ref_down_block_size``). Default: 1.5.
        dilations (Sequence[int]): dilations of the 3x3 centre samples compared in the
            coarse search. Default: (1, 2, 3).
    """

    patch_size = 3

    def __init__(
        self,
        block_size: int = 8,
        window_scale: float = 1.5,
        dilations: Sequence[int] = (1, 2, 3),
    ) -> None:
        super().__init__()
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ValueError(f"CoarseToFineMatcher: block_size must be a positive int, got {block_size!r}")
        if not isinstance(window_scale, (int, float)) or isinstance(window_scale, bool) or window_scale < 0:
            raise ValueError(f"CoarseToFineMatcher: window_scale must be a number >= 0, got {window_scale!r}")
        dilations = tuple(dilations)
        centre = (block_size + 2) // 2
        limit = min(centre, block_size + 1 - centre)
        if not dilations or any(
            not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= limit for d in dilations
        ):
            raise ValueError(
                f"CoarseToFineMatcher: dilations must be ints in [1, {limit}] for block_size={block_size} "
                f"(the dilated 3x3 sample must fit in the block plus its 1-pixel margin), got {dilations!r}"
            )
        self.block_size = block_size
        self.window_scale = float(window_scale)
        self.dilations = dilations

    def diameters(self, lq_size: tuple[int, int], ref_size: tuple[int, int]) -> tuple[int, int]:
        """The authors' search diameters (height, width) for deepest features of these sizes.

        Per axis: ``2 * int(ref // (2 * blocks) * window_scale) + 1``, where ``blocks`` is
        the number of input blocks along that axis.
        """
        (h, w), (hr, wr) = lq_size, ref_size
        py, px = h // self.block_size, w // self.block_size
        return 2 * int(hr // (2 * py) * self.window_scale) + 1, 2 * int(wr // (2 * px) * self.window_scale) + 1

    def window_size(self, lq_size: tuple[int, int], ref_size: tuple[int, int]) -> tuple[int, int]:
        """Search-window (height, width): the diameter plus a 1-pixel margin on each side,
        clipped to the reference (the authors' window overran a smaller reference: D55)."""
        dh, dw = self.diameters(lq_size, ref_size)
        return min(dh + 2, ref_size[0]), min(dw + 2, ref_size[1])

    def _check(self, lq: torch.Tensor, ref: torch.Tensor) -> None:
        if lq.ndim != 4 or ref.ndim != 4 or lq.shape[:2] != ref.shape[:2]:
            raise ValueError(
                "CoarseToFineMatcher expects lq (N, C, H, W) and ref (N, C, Hr, Wr) with equal N and C, "
                f"got lq {tuple(lq.shape)} and ref {tuple(ref.shape)}"
            )
        k = self.block_size
        if lq.shape[2] % k or lq.shape[3] % k:
            raise ValueError(
                f"CoarseToFineMatcher: lq feature height and width must be multiples of block_size={k}, "
                f"got lq {tuple(lq.shape)}"
            )
        if min(ref.shape[2:]) < self.patch_size:
            raise ValueError(
                f"CoarseToFineMatcher: ref feature must be at least {self.patch_size}x{self.patch_size}, "
                f"got ref {tuple(ref.shape)}"
            )

    def _blocks(self, lq: torch.Tensor) -> torch.Tensor:
        """Input blocks with a 1-pixel (replicated) margin: (N, P, C, k+2, k+2)."""
        n, c, _, _ = lq.shape
        k = self.block_size
        padded = F.pad(lq, (1, 1, 1, 1), mode="replicate")
        blocks = F.unfold(padded, kernel_size=k + 2, stride=k)  # (N, C*(k+2)*(k+2), P)
        blocks = blocks.view(n, c, k + 2, k + 2, -1)  # (N, C, k+2, k+2, P)
        return blocks.permute(0, 4, 1, 2, 3)  # (N, P, C, k+2, k+2)

    def coarse(self, blocks: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Best reference position for each block centre.

        Args:
            blocks (Tensor): (N, P, C, k+2, k+2) input blocks with margin.
            ref (Tensor): (N, C, Hr, Wr) deepest reference feature.

        Returns:
            Tensor: (N, P) int64 flat index ``y * Wr + x`` into the reference.
        """
        n, p, c, _, _ = blocks.shape
        centre = (self.block_size + 2) // 2
        corr = 0
        for d in self.dilations:  # a handful of dilations, not blocks
            taps = slice(centre - d, centre + d + 1, d)
            lq_patches = blocks[:, :, :, taps, taps].reshape(n, p, c * 9)  # (N, P, C*3*3)
            ref_patches = F.unfold(ref, kernel_size=3, padding=d, dilation=d)  # (N, C*3*3, Hr*Wr)
            corr = corr + torch.bmm(F.normalize(lq_patches, dim=2), F.normalize(ref_patches, dim=1))  # (N, P, Hr*Wr)
        return torch.topk(corr, 1, dim=-1).indices[..., 0]

    def forward(self, lq: torch.Tensor, ref: torch.Tensor) -> Match:
        """Match every deepest-level input position to a reference position.

        Args:
            lq (Tensor): (N, C, H, W) deepest input feature; H and W multiples of
                ``block_size``.
            ref (Tensor): (N, C, Hr, Wr) deepest reference feature, any size >= 3x3.

        Returns:
            Match: correspondences, confidences and the windows searched.
        """
        self._check(lq, ref)
        n, c, h, w = lq.shape
        hr, wr = ref.shape[2:]
        k = self.block_size
        py, px = h // k, w // k
        win_h, win_w = self.window_size((h, w), (hr, wr))

        # coarse: one window per block, centred on the best position, kept inside ref
        blocks = self._blocks(lq)  # (N, P, C, k+2, k+2)
        best = self.coarse(blocks, ref)  # (N, P)
        diam_h, diam_w = self.diameters((h, w), (hr, wr))
        y0 = (best // wr - diam_h // 2 - 1).clamp(min=0).clamp(max=hr - win_h)  # (N, P)
        x0 = (best % wr - diam_w // 2 - 1).clamp(min=0).clamp(max=wr - win_w)  # (N, P)

        # fine: every input 3x3 patch against every 3x3 patch of its block's window
        windows = gather_windows(ref, y0, x0, (win_h, win_w))  # (N*P, C, win_h, win_w)
        lq_patches = F.unfold(blocks.reshape(n * py * px, c, k + 2, k + 2), kernel_size=3)  # (N*P, C*9, k*k)
        ref_patches = F.unfold(windows, kernel_size=3)  # (N*P, C*9, (win_h-2)*(win_w-2))
        corr = torch.bmm(
            F.normalize(lq_patches.transpose(1, 2), dim=2), F.normalize(ref_patches, dim=1)
        )  # (N*P, k*k, (win_h-2)*(win_w-2))
        conf, idx = torch.topk(corr, 1, dim=-1)  # (N*P, k*k, 1) each
        idx = idx.view(n, py * px, k * k)  # (N, P, k*k)
        ref_y = y0[:, :, None] + idx // (win_w - 2) + 1  # (N, P, k*k), patch centre
        ref_x = x0[:, :, None] + idx % (win_w - 2) + 1  # (N, P, k*k)

        def to_map(t: torch.Tensor) -> torch.Tensor:
            t = t.reshape(n, py, px, k, k)  # (N, py, px, k, k)
            return t.permute(0, 1, 3, 2, 4).reshape(n, h, w)  # (N, H, W)

        return Match(
            ref_y=to_map(ref_y),
            ref_x=to_map(ref_x),
            confidence=to_map(conf).unsqueeze(1),  # (N, 1, H, W)
            window_y0=y0.view(n, py, px),  # (N, P) -> (N, py, px)
            window_x0=x0.view(n, py, px),  # (N, P) -> (N, py, px)
            window_size=(win_h, win_w),
            block_size=k,
            ref_size=(hr, wr),
        )

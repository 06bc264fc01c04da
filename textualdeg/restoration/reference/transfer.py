"""Multi-scale transfer of reference features along the matched correspondences.

Part of the reference-guidance branch of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334),
taken from MASA-SR (Lu et al., CVPR 2021, arXiv:2104.01074).

For every input position the matcher (``matching.py``) gives the centre of a 3x3 patch
of the deepest reference feature. At a level ``s`` times finer, that patch covers a
``3s x 3s`` region; the authors (``mrluin/TextualDegRemoval@e755c39
models/archs/network_nafnet_guided_arch.py``, ``transfer``; no license file upstream)
unfold the window with kernel ``3s`` / stride ``s``, pick the matched patch of each of
the block's input positions, fold the patches back with padding ``s`` (so neighbouring
patches overlap and are averaged, patches never crossing a block border) and multiply
the result by the match confidence, resized bilinearly per block.

This module computes the same average without unfolding whole windows: an ``s x s``
output cell receives, from each neighbour ``q = c - d`` in its block (``d`` in
{-1, 0, 1}^2), the reference cell at ``match(q) + d``. That is nine gathers of
output-sized tensors instead of a ``C * 9s^2 x window`` unfold, vectorised over blocks
and batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.restoration.reference.matching import Match

__all__ = ["PatchTransfer"]


def _neighbour_offsets(match: Match, device: torch.device):
    """Yield, for each offset d in {-1, 0, 1}^2: (flat reference cell index per input
    position, (H*W,) bool mask of positions whose neighbour ``c - d`` is in their block)."""
    n, h, w = match.ref_y.shape
    k = match.block_size
    wr = match.ref_size[1]
    in_block_y = torch.arange(h, device=device) % k  # (H,)
    in_block_x = torch.arange(w, device=device) % k  # (W,)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            # neighbour q = c - d: rolled[c] = match[c - d]; wrapped entries are masked
            ry = torch.roll(match.ref_y, shifts=(dy, dx), dims=(1, 2))  # (N, H, W)
            rx = torch.roll(match.ref_x, shifts=(dy, dx), dims=(1, 2))  # (N, H, W)
            valid_y = ((in_block_y - dy) >= 0) & ((in_block_y - dy) < k)  # (H,)
            valid_x = ((in_block_x - dx) >= 0) & ((in_block_x - dx) < k)  # (W,)
            valid = (valid_y[:, None] & valid_x[None, :]).reshape(h * w)  # (H*W,)
            index = ((ry + dy) * wr + (rx + dx)).reshape(n, h * w)  # (N, H*W)
            yield index, valid


class PatchTransfer(nn.Module):
    """Warp a reference feature pyramid onto the input grid (no parameters).

    The output at each level is the overlap-averaged matched 3x3 (scaled) reference
    patches, multiplied by the match confidence.
    """

    def forward(self, ref_feats: Sequence[torch.Tensor], match: Match) -> list[torch.Tensor]:
        """Transfer every level of a reference pyramid.

        Args:
            ref_feats (Sequence[Tensor]): reference features, finest first, each level
                twice the resolution of the next; the last is the deepest level, of
                size ``match.ref_size``. Level j has shape
                (N, C_j, Hr * s_j, Wr * s_j) with s_j = 2**(len - 1 - j).
            match (Match): correspondences from :class:`CoarseToFineMatcher` (matched
                3x3 patch centres lie inside the reference, at least 1 pixel from its
                border, as the matcher guarantees).

        Returns:
            list[Tensor]: warped features, finest first; level j is
            (N, C_j, H * s_j, W * s_j) where (H, W) is the matched input grid.
        """
        depth = len(ref_feats)
        return [self.transfer_level(feat, match, 2 ** (depth - 1 - j)) for j, feat in enumerate(ref_feats)]

    def transfer_level(self, feat: torch.Tensor, match: Match, scale: int) -> torch.Tensor:
        """Transfer one level.

        Args:
            feat (Tensor): (N, C, Hr * scale, Wr * scale) reference feature.
            match (Match): correspondences at the deepest level.
            scale (int): resolution of ``feat`` relative to the deepest level.

        Returns:
            Tensor: (N, C, H * scale, W * scale) warped feature.
        """
        n, h, w = match.ref_y.shape
        hr, wr = match.ref_size
        c = feat.shape[1]
        s = scale
        if feat.ndim != 4 or feat.shape[0] != n or tuple(feat.shape[2:]) != (hr * s, wr * s):
            raise ValueError(
                f"PatchTransfer: reference level at scale {s} must be (N={n}, C, {hr * s}, {wr * s}), "
                f"got {tuple(feat.shape)}"
            )
        cells = feat.reshape(n, c, hr, s, wr, s)  # (N, C, Hr, s, Wr, s)
        cells = cells.permute(0, 2, 4, 1, 3, 5).reshape(n, hr * wr, c * s * s)  # (N, Hr*Wr, C*s*s)

        total = feat.new_zeros(n, h * w, c * s * s)  # (N, H*W, C*s*s)
        count = feat.new_zeros(h * w, 1)  # (H*W, 1)
        for index, valid in _neighbour_offsets(match, feat.device):  # 9 offsets
            picked = torch.gather(cells, 1, index[:, :, None].expand(-1, -1, c * s * s))  # (N, H*W, C*s*s)
            weight = valid.to(feat.dtype)[:, None]  # (H*W, 1)
            total = total + picked * weight
            count = count + weight
        out = total / count  # (N, H*W, C*s*s)
        out = out.view(n, h, w, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h * s, w * s)  # (N, C, H*s, W*s)
        return out * self._confidence(match, s).to(out.dtype)

    @staticmethod
    def _confidence(match: Match, scale: int) -> torch.Tensor:
        """Per-block bilinear resize of the confidence: (N, 1, H * scale, W * scale)."""
        conf = match.confidence
        if scale == 1:
            return conf
        n, _, h, w = conf.shape
        k = match.block_size
        py, px = h // k, w // k
        blocks = conf.view(n, py, k, px, k).permute(0, 1, 3, 2, 4).reshape(n * py * px, 1, k, k)  # (N*P, 1, k, k)
        blocks = F.interpolate(blocks, size=(k * scale, k * scale), mode="bilinear", align_corners=False)
        ks = k * scale
        blocks = blocks.view(n, py, px, ks, ks).permute(0, 1, 3, 2, 4)  # (N, py, ks, px, ks)
        return blocks.reshape(n, 1, h * scale, w * scale)  # (N, 1, H*s, W*s)

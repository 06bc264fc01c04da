"""Fusion of warped reference features into a backbone level, starting as identity.

Part of the reference-guidance branch of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).

At the input of each encoder level the backbone feature ``x`` (C channels) and the
warped reference feature (C channels) are concatenated, passed through a stack of the
backbone's own blocks at width 2C, and the first C channels are kept (the authors'
fusion pattern, the same for every guided backbone). Every block of the stack starts as
an identity, so at initialisation the fusion returns ``x`` unchanged and a guided model
holding a plain backbone's weights computes exactly the plain backbone:

* NAFNet blocks are identities by construction (their ``beta``/``gamma`` start at 0);
* transformer blocks get a zero-initialised scalar gate through
  :class:`ZeroGatedResidual` (the authors' ``TransformerResFusionBlock``).

Layout origin: ``mrluin/TextualDegRemoval@e755c39 models/archs/network_*_guided_arch.py``
(no license file upstream); re-implemented, keeping the authors' parameter names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textualdeg.restoration.archs.memory import CheckpointedSequential

__all__ = ["ReferenceFusion", "ZeroGatedResidual"]


class ReferenceFusion(CheckpointedSequential):
    """``cat([x, warped]) -> blocks -> first C channels``.

    An ``nn.Sequential`` of the fusion blocks, so its parameters are named
    ``<index>.<block param>`` exactly as the authors' ``nn.Sequential`` stacks; as a
    ``CheckpointedSequential`` (``archs/memory.py``) it can recompute its blocks in backward.

    Args:
        *blocks (nn.Module): blocks mapping (B, 2C, H, W) to (B, 2C, H, W); each should
            start as an identity for the fusion to start as one.
    """

    def forward(self, x: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Fuse a warped reference feature into ``x``.

        Args:
            x (Tensor): (B, C, H, W) backbone feature.
            warped (Tensor): (B, C, H, W) warped reference feature of the same level.

        Returns:
            Tensor: (B, C, H, W) fused feature (equal to ``x`` while the blocks are
            identities).
        """
        if warped.shape != x.shape:
            raise ValueError(
                f"ReferenceFusion expects x and warped of equal shape, got x {tuple(x.shape)} "
                f"and warped {tuple(warped.shape)}"
            )
        channels = x.shape[1]
        h = torch.cat([x, warped], dim=1)  # (B, 2C, H, W)
        h = super().forward(h)  # the blocks, checkpointed if enabled
        return h[:, :channels]  # (B, C, H, W)


class ZeroGatedResidual(nn.Module):
    """Mixin turning a residual block ``f`` into ``x + alpha * f(x)`` with ``alpha = 0``.

    Put it first in the bases of a block class: ``class B(ZeroGatedResidual, Block)``.
    The block's own parameters keep their names and ``alpha`` (shape (1,)) is added,
    which is the authors' ``TransformerResFusionBlock`` layout.

    Args:
        *args: forwarded to the wrapped block class.
        **kwargs: forwarded to the wrapped block class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (Tensor): (B, C, H, W). Returns: (B, C, H, W), ``x`` while alpha is 0."""
        return super().forward(x) * self.alpha + x

"""Multi-level residual feature encoder shared by the input and the reference image.

Part of the reference-guidance branch of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334),
whose guided backbones take this encoder from MASA-SR (Lu et al., CVPR 2021,
arXiv:2104.01074). The same weights encode the degraded input and the guidance image, so
their features can be compared by cosine similarity (see ``matching.py``).

Origin of the layout: ``mrluin/TextualDegRemoval@e755c39
models/archs/network_nafnet_guided_arch.py`` (class ``Encoder``; the upstream repository
ships no license file). This is a re-implementation from a description of that class
(per level a 3x3 convolution, stride 2 from the second level on, ReLU and residual
blocks); the attribute names ``conv_L<k>`` / ``blk_L<k>`` are kept so the authors'
``masa_enc.*`` checkpoint entries load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.restoration.archs.memory import CheckpointedSequential

__all__ = ["ResidualBlock", "ReferenceEncoder"]


class ResidualBlock(nn.Module):
    """Conv3x3 -> ReLU -> Conv3x3 plus identity (no final activation).

    Args:
        channels (int): input and output channels. Default: 64.
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (Tensor): (B, C, H, W). Returns: (B, C, H, W)."""
        return x + self.conv2(F.relu(self.conv1(x)))


class ReferenceEncoder(nn.Module):
    """Pyramid of residual stages, each halving the resolution and doubling the width.

    Level 1 is Conv3x3(in -> nf, stride 1) -> ReLU -> ``num_blocks[0]`` residual blocks;
    level k >= 2 is Conv3x3(stride 2, channels doubled) -> ReLU -> residual blocks. Level
    k has ``nf * 2**(k-1)`` channels at ``1 / 2**(k-1)`` of the input resolution.

    ``num_blocks`` gives the residual-block count per level; when it is shorter than
    ``num_levels`` its last entry is repeated. (The authors' code reuses the third entry
    for levels 4 and 5; with their only setting, ``[4, 4, 4, 4]``, both readings agree.)

    Args:
        in_channels (int): channels of the images it encodes. Default: 3.
        nf (int): width of level 1; must equal the backbone's base width for the
            fusion. Default: 64.
        num_levels (int): number of levels (5 for NAFNet, 4 for Restormer/PromptIR).
            Default: 5.
        num_blocks (Sequence[int]): residual blocks per level (see above).
            Default: (4, 4, 4, 4).
    """

    def __init__(
        self,
        in_channels: int = 3,
        nf: int = 64,
        num_levels: int = 5,
        num_blocks: Sequence[int] = (4, 4, 4, 4),
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("nf", nf), ("num_levels", num_levels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ReferenceEncoder: {name} must be a positive int, got {value!r}")
        blocks = tuple(num_blocks)
        if not blocks or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in blocks):
            raise ValueError(
                f"ReferenceEncoder: num_blocks must be a non-empty sequence of ints >= 0, got {num_blocks!r}"
            )
        self.in_channels = in_channels
        self.nf = nf
        self.num_levels = num_levels
        self.num_blocks = tuple(blocks[min(i, len(blocks) - 1)] for i in range(num_levels))

        channels_in = in_channels
        for level in range(1, num_levels + 1):
            channels = nf * 2 ** (level - 1)
            stride = 1 if level == 1 else 2
            # Names conv_L<k> / blk_L<k> are the authors' checkpoint layout.
            self.add_module(f"conv_L{level}", nn.Conv2d(channels_in, channels, 3, stride, 1, bias=True))
            self.add_module(
                f"blk_L{level}",
                CheckpointedSequential(*[ResidualBlock(channels) for _ in range(self.num_blocks[level - 1])]),
            )
            channels_in = channels

    @property
    def channels(self) -> tuple[int, ...]:
        """Channel count of each level, finest first."""
        return tuple(self.nf * 2**i for i in range(self.num_levels))

    @property
    def downsample_factor(self) -> int:
        """Resolution ratio between the input and the deepest level (``2**(num_levels-1)``)."""
        return 2 ** (self.num_levels - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode an image into a feature pyramid.

        Args:
            x (Tensor): (B, in_channels, H, W), values in [0, 1]. H and W should be
                multiples of ``downsample_factor`` for the levels to nest exactly.

        Returns:
            list[Tensor]: ``num_levels`` features, finest first; level k (1-based) is
            (B, nf * 2**(k-1), ceil(H / 2**(k-1)), ceil(W / 2**(k-1))).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ReferenceEncoder expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        feats = []
        for level in range(1, self.num_levels + 1):
            x = F.relu(getattr(self, f"conv_L{level}")(x))
            x = getattr(self, f"blk_L{level}")(x)
            feats.append(x)
        return feats

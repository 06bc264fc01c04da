"""NAFNet's building blocks: ``SimpleGate`` and the nonlinear-activation-free ``NAFBlock``.

Ported (re-written, same computation and parameter names) from
megvii-research/NAFNet@2b4af71 ``basicsr/models/archs/NAFNet_arch.py`` (MIT license).

Parameter names equal the official ones, so official checkpoints load with ``strict=True``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import torch
from torch import nn

from textualdeg.restoration.archs.norms import LayerNorm2d

__all__ = [
    "NAFBlock",
    "SimpleGate",
]


class SimpleGate(nn.Module):
    """NAFNet's gate: split channels in two halves and multiply them, (B, 2C, H, W) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class NAFBlock(nn.Module):
    """NAFNet's nonlinear-activation-free block.

    ``y = x + beta * conv3(SCA(SG(dwconv(conv1(LN(x))))))`` then
    ``out = y + gamma * conv5(SG(conv4(LN(y))))``; beta and gamma start at zero, so a fresh
    block is the identity.

    Args:
        c (int): channels.
        dw_expand (int): expansion of the depthwise branch (official ``DW_Expand``). Default 2.
        ffn_expand (int): expansion of the FFN branch (official ``FFN_Expand``). Default 2.
        drop_out_rate (float): dropout after each branch. Default 0.
    """

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0) -> None:
        super().__init__()
        dw_channel = c * dw_expand
        ffn_channel = c * ffn_expand
        # Registration order fixes the state_dict order of the official checkpoints:
        # beta, gamma (own parameters) first, then conv1..3, sca, conv4, conv5, norm1, norm2.
        self.conv1 = nn.Conv2d(c, dw_channel, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, kernel_size=3, padding=1, groups=dw_channel, bias=True)
        self.conv3 = nn.Conv2d(dw_channel // 2, c, kernel_size=1, bias=True)
        # Simplified channel attention; index 0 is swapped for LocalAvgPool2d by TLC.
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw_channel // 2, dw_channel // 2, kernel_size=1, bias=True),
        )
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, ffn_channel, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, kernel_size=1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = self.conv2(self.conv1(self.norm1(inp)))  # (B, 2C, H, W)
        x = self.sg(x)  # (B, C, H, W)
        x = x * self.sca(x)
        x = self.dropout1(self.conv3(x))
        y = inp + x * self.beta
        x = self.sg(self.conv4(self.norm2(y)))
        x = self.dropout2(self.conv5(x))
        return y + x * self.gamma

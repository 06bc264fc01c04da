"""Restormer's building blocks: the MDTA/GDFN transformer block, patch embedding, resizing.

Ported (re-written, same computation and parameter names) from swz30/Restormer@df766d5
``basicsr/models/archs/restormer_arch.py`` (Restormer license, research use):
``Attention`` (MDTA), ``FeedForward`` (GDFN), ``TransformerBlock``,
``OverlapPatchEmbed``, ``Downsample``, ``Upsample``. PromptIR and DRSformer build on
them too.

Parameter names equal the official ones, so official checkpoints load with ``strict=True``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.restoration.archs.memory import CheckpointedSequential
from textualdeg.restoration.archs.norms import RestormerLayerNorm

__all__ = [
    "Downsample",
    "GDFN",
    "MDTA",
    "OverlapPatchEmbed",
    "TransformerBlock",
    "Upsample",
    "transformer_stage",
]


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention (Restormer's ``Attention``).

    Channel attention: q, k, v from a 1x1 then depthwise 3x3 conv; q and k L2-normalised
    over pixels; a learnable per-head temperature scales the (C/h x C/h) logits.

    Args:
        dim (int): channels C (divisible by ``num_heads``).
        num_heads (int): heads.
        bias (bool): conv biases.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads must divide dim; got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)  # 3 x (B, C, H, W)
        q = q.reshape(b, self.num_heads, c // self.num_heads, h * w)  # (B, nh, C/nh, HW)
        k = k.reshape(b, self.num_heads, c // self.num_heads, h * w)  # (B, nh, C/nh, HW)
        v = v.reshape(b, self.num_heads, c // self.num_heads, h * w)  # (B, nh, C/nh, HW)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (B, nh, C/nh, C/nh)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).reshape(b, c, h, w)  # (B, nh, C/nh, HW) -> (B, C, H, W)
        return self.project_out(out)


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network (Restormer's ``FeedForward``).

    Args:
        dim (int): channels C.
        ffn_expansion_factor (float): hidden width is ``int(dim * ffn_expansion_factor)``.
        bias (bool): conv biases.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        if hidden < 1:
            raise ValueError(
                f"ffn_expansion_factor too small: dim={dim}, ffn_expansion_factor={ffn_expansion_factor}"
            )
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)  # 2 x (B, hidden, H, W)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Restormer block: ``x + MDTA(LN(x))`` then ``+ GDFN(LN(.))``.

    Args:
        dim (int): channels.
        num_heads (int): MDTA heads.
        ffn_expansion_factor (float): GDFN expansion.
        bias (bool): conv biases.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``.
    """

    #: the attention and feed-forward classes; variants (DRSformer's sparse block) swap them
    attention_cls: type[nn.Module] = MDTA
    ffn_cls: type[nn.Module] = GDFN

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # noqa: N803
    ) -> None:
        super().__init__()
        self.norm1 = RestormerLayerNorm(dim, LayerNorm_type)
        self.attn = self.attention_cls(dim, num_heads, bias)
        self.norm2 = RestormerLayerNorm(dim, LayerNorm_type)
        self.ffn = self.ffn_cls(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(
    num: int,
    dim: int,
    num_heads: int,
    ffn_expansion_factor: float,
    bias: bool,
    LayerNorm_type: str,  # noqa: N803
    block: type[TransformerBlock] | None = None,
) -> CheckpointedSequential:
    """``num`` blocks (default :class:`TransformerBlock`) in a stage (keys ``<stage>.<i>.<...>``).

    The stage is a :class:`~textualdeg.restoration.archs.memory.CheckpointedSequential`, an
    ``nn.Sequential`` that can recompute its activations in backward.
    """
    block = TransformerBlock if block is None else block
    blocks = [block(dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(num)]
    return CheckpointedSequential(*blocks)


class OverlapPatchEmbed(nn.Module):
    """3x3 conv patch embedding (key ``proj``), (B, in_c, H, W) -> (B, embed_dim, H, W).

    Args:
        in_c (int): input channels.
        embed_dim (int): output channels.
        bias (bool): conv bias (the official models always build it without).
    """

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Conv3x3 (C -> C/2) then PixelUnshuffle(2): (B, C, H, W) -> (B, 2C, H/2, W/2).

    Args:
        n_feat (int): input channels C (even).
    """

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, padding=1, bias=False),
            nn.PixelUnshuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Conv3x3 (C -> 2C) then PixelShuffle(2): (B, C, H, W) -> (B, C/2, 2H, 2W).

    Args:
        n_feat (int): input channels C (even).
    """

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, padding=1, bias=False),
            nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

"""Channel layer norms of NCHW feature maps: NAFNet's ``LayerNorm2d`` and Restormer's two.

Ported (re-written, same computation and parameter names) from:
- megvii-research/NAFNet@2b4af71 ``basicsr/models/archs/arch_util.py`` (MIT license):
  ``LayerNorm2d``;
- swz30/Restormer@df766d5 ``basicsr/models/archs/restormer_arch.py`` (Restormer license,
  research use): ``LayerNorm`` (``RestormerLayerNorm`` around ``LayerNorm2d`` or
  ``BiasFreeLayerNorm2d``).

Parameter names equal the official ones, so official checkpoints load with ``strict=True``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BiasFreeLayerNorm2d",
    "LAYER_NORM_TYPES",
    "LayerNorm2d",
    "RestormerLayerNorm",
]


LAYER_NORM_TYPES = ("WithBias", "BiasFree")


class LayerNorm2d(nn.Module):
    """Layer norm over the channel dimension of an NCHW tensor (NAFNet's LayerNorm2d).

    Computes ``(x - mean_c) / sqrt(var_c + eps) * weight + bias`` per pixel, with the
    biased variance. Plain tensor ops (autograd derives the backward that NAFNet's
    hand-written ``LayerNormFunction`` implements).

    Args:
        channels (int): number of channels C.
        eps (float): added to the variance. Default 1e-6 (NAFNet); Restormer's WithBias
            norm uses 1e-5.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, H, W) over C; returns (B, C, H, W)."""
        mu = x.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (x - mu).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class BiasFreeLayerNorm2d(nn.Module):
    """Restormer's BiasFree layer norm over channels: ``x / sqrt(var_c + eps) * weight``.

    The input is not centred (only the variance removes the mean), as in the official code.

    Args:
        channels (int): number of channels C.
        eps (float): added to the variance. Default 1e-5.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, H, W) over C; returns (B, C, H, W)."""
        var = x.var(1, keepdim=True, unbiased=False)  # (B, 1, H, W)
        return x / (var + self.eps).sqrt() * self.weight.view(1, -1, 1, 1)


class RestormerLayerNorm(nn.Module):
    """Restormer's ``LayerNorm`` wrapper: the norm lives in ``body`` (checkpoint keys
    ``norm1.body.weight`` / ``norm1.body.bias``).

    Args:
        dim (int): channels.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``.
    """

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias") -> None:  # noqa: N803
        super().__init__()
        if LayerNorm_type not in LAYER_NORM_TYPES:
            raise ValueError(
                f"LayerNorm_type must be one of {LAYER_NORM_TYPES}, got {LayerNorm_type!r}"
            )
        if LayerNorm_type == "BiasFree":
            self.body: nn.Module = BiasFreeLayerNorm2d(dim, eps=1e-5)
        else:
            self.body = LayerNorm2d(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.body(x)

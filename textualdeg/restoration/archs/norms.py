"""Channel layer norms of NCHW feature maps: NAFNet's ``LayerNorm2d`` and Restormer's two.

Ported (re-written, same computation and parameter names) from:
- megvii-research/NAFNet@2b4af71 ``basicsr/models/archs/arch_util.py`` (MIT license):
  ``LayerNorm2d``;
- swz30/Restormer@df766d5 ``basicsr/models/archs/restormer_arch.py`` (Restormer license,
  research use): ``LayerNorm`` (``RestormerLayerNorm`` around ``LayerNorm2d`` or
  ``BiasFreeLayerNorm2d``).

Parameter names equal the official ones, so official checkpoints load with ``strict=True``.
The forward and backward are custom autograd functions that keep only the input for
backward and recompute the per-pixel statistics (about a third of the activation bytes
autograd keeps through the plain formula; measured in docs/memory.md).

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


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half inputs (bf16 autocast), else the input's own float type."""
    return torch.promote_types(x.dtype, torch.float32)


def _statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel channel mean and ``sqrt(var + eps)`` (biased variance) of (B, C, H, W).

    The same expressions as the official modules, so results agree to the last bit in
    float32; recomputed in backward instead of being kept.

    Returns:
        (mean, std), each (B, 1, H, W).
    """
    mu = x.mean(1, keepdim=True)  # (B, 1, H, W)
    var = (x - mu).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
    return mu, (var + eps).sqrt()


class _LayerNorm2dFunction(torch.autograd.Function):
    """``(x - mean_c) / sqrt(var_c + eps) * weight + bias`` keeping only ``x`` for backward.

    Autograd through the plain formula keeps about three tensors of the input's size
    (the centred input, its square and the normalised output); this keeps ``x`` and
    recomputes the per-pixel statistics in backward (a reduction over C, cheap against
    the convolutions around it). Computes in float32 for bf16/fp16 inputs, with autocast
    off; the output has the dtype of ``x`` promoted with ``weight``, as the plain formula.
    Double backward is not supported.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        ctx.eps = eps
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            xf = x.to(_compute_dtype(x))
            mu, std = _statistics(xf, eps)
            y = (xf - mu) / std * weight.view(1, -1, 1, 1)  # (B, C, H, W)
            if bias is not None:
                y = y + bias.view(1, -1, 1, 1)
        return y.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            xf = x.to(_compute_dtype(x))
            mu, std = _statistics(xf, ctx.eps)
            rstd = 1.0 / std  # (B, 1, H, W)
            xhat = (xf - mu) / std  # (B, C, H, W), as in forward
            g = grad.to(xf.dtype)
            gw = g * weight.view(1, -1, 1, 1).to(xf.dtype)  # dL/dxhat
            # d/dx of (x - mu) * rstd: rstd * (gw - mean_c(gw) - xhat * mean_c(gw * xhat))
            dx = rstd * (gw - gw.mean(1, keepdim=True) - xhat * (gw * xhat).mean(1, keepdim=True))
            dweight = (g * xhat).sum((0, 2, 3)) if ctx.needs_input_grad[1] else None
            dbias = g.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (
            dx.to(x.dtype) if ctx.needs_input_grad[0] else None,
            None if dweight is None else dweight.to(weight.dtype),
            None if dbias is None else dbias.to(weight.dtype),
            None,
        )


class _BiasFreeLayerNorm2dFunction(torch.autograd.Function):
    """``x / sqrt(var_c + eps) * weight`` (not centred) keeping only ``x`` for backward.

    As :class:`_LayerNorm2dFunction`: float32 inside for half inputs, statistics
    recomputed in backward, no double backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.eps = eps
        ctx.save_for_backward(x, weight)
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            xf = x.to(_compute_dtype(x))
            var = xf.var(1, keepdim=True, unbiased=False)  # (B, 1, H, W), the official expression
            y = xf / (var + eps).sqrt() * weight.view(1, -1, 1, 1)
        return y.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            xf = x.to(_compute_dtype(x))
            mu = xf.mean(1, keepdim=True)  # (B, 1, H, W)
            std = (xf.var(1, keepdim=True, unbiased=False) + ctx.eps).sqrt()  # as in forward
            rstd = 1.0 / std
            g = grad.to(xf.dtype)
            gw = g * weight.view(1, -1, 1, 1).to(xf.dtype)
            # y = x * rstd(x), d rstd / dx_j = -rstd**3 * (x_j - mu) / C
            dx = rstd * gw - rstd.pow(3) * (xf - mu) * (gw * xf).mean(1, keepdim=True)
            dweight = (g * (xf / std)).sum((0, 2, 3)) if ctx.needs_input_grad[1] else None
        return (
            dx.to(x.dtype) if ctx.needs_input_grad[0] else None,
            None if dweight is None else dweight.to(weight.dtype),
            None,
        )


class LayerNorm2d(nn.Module):
    """Layer norm over the channel dimension of an NCHW tensor (NAFNet's LayerNorm2d).

    Computes ``(x - mean_c) / sqrt(var_c + eps) * weight + bias`` per pixel, with the
    biased variance. A custom autograd function keeps only the input for backward (the
    plain formula kept about 3x its input; NAFNet's ``LayerNormFunction`` keeps the
    output and the variance): see docs/memory.md.

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
        return _LayerNorm2dFunction.apply(x, self.weight, self.bias, self.eps)


class BiasFreeLayerNorm2d(nn.Module):
    """Restormer's BiasFree layer norm over channels: ``x / sqrt(var_c + eps) * weight``.

    The input is not centred (only the variance removes the mean), as in the official code.
    Keeps only its input for backward, as :class:`LayerNorm2d`.

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
        return _BiasFreeLayerNorm2dFunction.apply(x, self.weight, self.eps)


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

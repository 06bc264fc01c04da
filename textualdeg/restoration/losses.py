"""Pixel losses for guided restoration training, registered in ``LOSS_REGISTRY``.

The option files name a loss in ``train.pixel_opt`` (``type: L1Loss``,
``loss_weight: 1``, ``reduction: mean``), BasicSR's vocabulary. These are the four
losses the authors' code defines (``losses/losses.py``): ``L1Loss``, ``MSELoss``,
``PSNRLoss`` and ``CharbonnierLoss``. All take predictions and targets as float
tensors of shape (B, C, H, W) in [0, 1] and return a scalar (or an unreduced
tensor with ``reduction="none"``).

A network may return a list of outputs (multi-output backbones); ``pixel_loss``
sums the loss of every output against the same target, as the authors' model does.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
Ported in spirit from XPixelGroup/BasicSR@8d56e3a basicsr/losses/basic_loss.py
(Apache-2.0) and megvii-research/NAFNet@2b4af71 basicsr/models/losses/losses.py
(MIT, PSNRLoss).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from textualdeg.registry import LOSS_REGISTRY

_REDUCTIONS = ("none", "mean", "sum")


def _check(loss_weight: float, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(loss_weight, (int, float)) or isinstance(loss_weight, bool):
        raise ValueError(f"loss_weight must be a number, got {loss_weight!r}")


def _reduce(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Apply an optional element-wise weight, then reduce (BasicSR's weighted_loss)."""
    if weight is not None:
        loss = loss * weight
    if reduction == "mean":
        if weight is None:
            return loss.mean()
        # BasicSR: mean over the elements the weight covers.
        return loss.sum() / weight.expand_as(loss).sum().clamp_min(1e-12)
    if reduction == "sum":
        return loss.sum()
    return loss


class _PixelLoss(nn.Module):
    """Shared constructor for the element-wise pixel losses."""

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        _check(loss_weight, reduction)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: (B, C, H, W) prediction in [0, 1].
            target: (B, C, H, W) ground truth in [0, 1].
            weight: optional element-wise weight broadcastable to (B, C, H, W).

        Returns:
            A scalar tensor (``mean``/``sum``) or (B, C, H, W) (``none``).
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        return self.loss_weight * _reduce(self.elementwise(pred, target), weight, self.reduction)


@LOSS_REGISTRY.register()
class L1Loss(_PixelLoss):
    """Mean absolute error (the loss of all 19 authors' option files).

    Args:
        loss_weight (float): multiplier of the loss. Default 1.0.
        reduction (str): ``none`` | ``mean`` | ``sum``. Default ``mean``.
    """

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs()


@LOSS_REGISTRY.register()
class MSELoss(_PixelLoss):
    """Mean squared error.

    Args:
        loss_weight (float): multiplier of the loss. Default 1.0.
        reduction (str): ``none`` | ``mean`` | ``sum``. Default ``mean``.
    """

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).square()


@LOSS_REGISTRY.register()
class CharbonnierLoss(_PixelLoss):
    """Charbonnier loss ``sqrt((pred - target)^2 + eps)``, a smooth L1.

    Args:
        loss_weight (float): multiplier of the loss. Default 1.0.
        reduction (str): ``none`` | ``mean`` | ``sum``. Default ``mean``.
        eps (float): the squared smoothing constant. Default 1e-6 (the authors' value;
            BasicSR uses 1e-12).
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", eps: float = 1e-6) -> None:
        super().__init__(loss_weight, reduction)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.eps = float(eps)

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((pred - target).square() + self.eps)


@LOSS_REGISTRY.register()
class PSNRLoss(nn.Module):
    """Negative-PSNR-like loss ``10/ln(10) * log(MSE + 1e-8)`` per image, averaged.

    Minimising it maximises PSNR. With ``toY`` the images are first converted to the
    Y channel (BT.601, as NAFNet's PSNRLoss does).

    Args:
        loss_weight (float): multiplier of the loss. Default 1.0.
        reduction (str): only ``mean`` (over the batch). Default ``mean``.
        toY (bool): compare the Y channel of RGB inputs. Default False.
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", toY: bool = False) -> None:
        super().__init__()
        _check(loss_weight, reduction)
        if reduction != "mean":
            raise ValueError(f"PSNRLoss supports reduction='mean' only, got {reduction!r}")
        self.loss_weight = float(loss_weight)
        self.scale = 10.0 / math.log(10.0)
        self.toY = bool(toY)
        self.register_buffer("coef", torch.tensor([65.481, 128.553, 24.966]).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred, target: (B, C, H, W) in [0, 1]. Returns a scalar."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if self.toY:
            if pred.shape[1] != 3:
                raise ValueError(f"toY needs 3-channel inputs, got {pred.shape[1]} channels")
            coef = self.coef.to(pred.dtype)
            pred = ((pred * coef).sum(dim=1, keepdim=True) + 16.0) / 255.0  # (B, 1, H, W)
            target = ((target * coef).sum(dim=1, keepdim=True) + 16.0) / 255.0
        mse = (pred - target).square().mean(dim=(1, 2, 3))  # (B,)
        return self.loss_weight * self.scale * torch.log(mse + 1e-8).mean()


def pixel_loss(
    criterion: nn.Module, preds: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor
) -> torch.Tensor:
    """Sum ``criterion`` over one output or a list of outputs against one target.

    Args:
        criterion: a loss module from ``LOSS_REGISTRY``.
        preds: (B, C, H, W) prediction or a list of them (multi-output networks).
        target: (B, C, H, W) ground truth in [0, 1].

    Returns:
        Scalar loss tensor.
    """
    if isinstance(preds, torch.Tensor):
        return criterion(preds, target)
    return sum(criterion(pred, target) for pred in preds)


__all__ = ["L1Loss", "MSELoss", "CharbonnierLoss", "PSNRLoss", "pixel_loss"]

"""Losses on every output of a multi-stage network (SFNet's scales, DSRIR's stages).

A plain pixel loss (``losses.py``) sees the final image only. Some backbones are trained
on all their outputs: SFNet on its 1/4, 1/2 and full-resolution images, DSRIR on the
images and uncertainty maps of its three stages. Such a loss derives from
:class:`StageLoss`; the training step then calls ``model(lq[, ref], stages=True)`` (through
``forward``, so DDP's gradient hooks apply; the same outputs as ``model.forward_stages``)
instead of ``model(lq[, ref])`` and passes its result, the target and the degraded input
to the loss. The result is an object whose ``images`` list holds every output image,
**final first** (DSRIR's ``DSRIRStages`` also carries ``variances``).

Registered in ``LOSS_REGISTRY``; an option file names one in ``train.pixel_opt``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334, whose option files 005/006
train SFNet. The authors' code compared all three SFNet scales with the full-resolution
target, which cannot run (shapes differ); here each is compared with the target resized to
its scale, as the original SFNet does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.registry import LOSS_REGISTRY
from textualdeg.restoration.contrastive_loss import PositiveContrastLoss
from textualdeg.restoration.losses import PSNRLoss

__all__ = ["DSRIRLoss", "MultiScaleFFTLoss", "StageLoss", "stage_images"]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def stage_images(stages: Any, owner: str) -> list[torch.Tensor]:
    """The output images of ``forward_stages``, final first; ValueError if there are none."""
    images = getattr(stages, "images", None)
    if not images or not all(isinstance(t, torch.Tensor) and t.ndim == 4 for t in images):
        raise ValueError(f"{owner} needs forward_stages() outputs with an 'images' list of (B, C, H, W) tensors, "
                         f"got {type(stages).__name__}")
    return list(images)


class StageLoss(nn.Module):
    """Base of the losses on all outputs: ``forward(stages, target, lq) -> scalar``.

    The training step recognises a ``StageLoss`` and calls ``model(..., stages=True)``.
    """

    def forward(self, stages: Any, target: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _fft_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the 2-D spectra, real and imaginary parts as separate entries."""
    pred_f = torch.view_as_real(torch.fft.fft2(pred, dim=(-2, -1)))  # (B, C, H, W, 2)
    target_f = torch.view_as_real(torch.fft.fft2(target, dim=(-2, -1)))
    return F.l1_loss(pred_f, target_f)


@LOSS_REGISTRY.register()
class MultiScaleFFTLoss(StageLoss):
    """SFNet's training loss: L1 plus ``fft_weight`` x spectral L1, summed over the scales.

    Each output is compared with the target resized to its size (bilinear, no
    antialiasing, as SFNet's ``F.interpolate(label, scale_factor=0.5, mode='bilinear')``).

    Args:
        loss_weight (float): multiplier of the total. Default 1.0.
        fft_weight (float): weight of the spectral term (SFNet: 0.1). Default 0.1.
    """

    def __init__(self, loss_weight: float = 1.0, fft_weight: float = 0.1) -> None:
        super().__init__()
        self.loss_weight = _number("loss_weight", loss_weight)
        self.fft_weight = _number("fft_weight", fft_weight)

    def forward(self, stages: Any, target: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """Args: stages with ``images`` (final first); target (B, C, H, W). Returns a scalar."""
        content = spectral = target.new_zeros(())
        for image in stage_images(stages, type(self).__name__):
            scaled = target
            if image.shape[-2:] != target.shape[-2:]:
                scaled = F.interpolate(target, size=image.shape[-2:], mode="bilinear", align_corners=False)
            content = content + F.l1_loss(image, scaled)
            spectral = spectral + _fft_l1(image, scaled)
        return self.loss_weight * (content + self.fft_weight * spectral)


@LOSS_REGISTRY.register()
class DSRIRLoss(StageLoss):
    """DSRIR's training loss: uncertainty + multi-stage PSNR + 0.2 x positive contrast.

    With the stage images ``y3, y2, y1`` (final first) and variance maps ``v3, v2, v1``::

        uncertainty = mean_s [ L1(y_s * exp(-v_s), gt * exp(-v_s)) + 2 * mean(v_s) ]
        psnr        = PSNR(y3) + 0.5 * (PSNR(y2) + PSNR(y1)) / 2       (NAFNet's PSNRLoss)
        loss        = uncertainty_weight * uncertainty + psnr_weight * psnr
                      + contrastive_weight * PositiveContrastLoss(y3, gt, y2, y1, lq)

    as ``xfwang23/DSRIR@31f8e1f train.py`` and ``losses/loss.py`` compute it.

    Args:
        uncertainty_weight (float): Default 1.0.
        psnr_weight (float): Default 1.0.
        contrastive_weight (float): Default 0.2 (0 skips VGG entirely).
        vgg_weights (str | None): torchvision VGG19 ImageNet state-dict file for the
            contrastive term (no download); None: random VGG weights (tests only).
        loss_weight (float): multiplier of the total. Default 1.0.
    """

    def __init__(
        self,
        uncertainty_weight: float = 1.0,
        psnr_weight: float = 1.0,
        contrastive_weight: float = 0.2,
        vgg_weights: str | None = None,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.uncertainty_weight = _number("uncertainty_weight", uncertainty_weight)
        self.psnr_weight = _number("psnr_weight", psnr_weight)
        self.contrastive_weight = _number("contrastive_weight", contrastive_weight)
        self.loss_weight = _number("loss_weight", loss_weight)
        self.psnr = PSNRLoss()
        self.contrast = PositiveContrastLoss(vgg_weights=vgg_weights) if self.contrastive_weight > 0 else None

    def forward(self, stages: Any, target: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """Args: ``DSRIRStages`` (images and variances, final first), target and lq (B, 3, H, W)."""
        images = stage_images(stages, type(self).__name__)
        variances = getattr(stages, "variances", None)
        if variances is None or len(variances) != len(images):
            raise ValueError("DSRIRLoss needs one variance map per stage image (DSRIR.forward_stages)")
        uncertainty = sum(
            F.l1_loss(image * torch.exp(-var), target * torch.exp(-var)) + 2 * var.mean()
            for image, var in zip(images, variances)
        ) / len(images)
        psnr = self.psnr(images[0], target)
        if len(images) > 1:
            psnr = psnr + 0.5 * sum(self.psnr(image, target) for image in images[1:]) / (len(images) - 1)
        loss = self.uncertainty_weight * uncertainty + self.psnr_weight * psnr
        if self.contrast is not None:
            loss = loss + self.contrastive_weight * self.contrast(images, target, lq)
        return self.loss_weight * loss

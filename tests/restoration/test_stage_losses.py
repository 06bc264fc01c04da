"""Stage losses: SFNet's multi-scale L1 + FFT and DSRIR's uncertainty + PSNR + contrast,
computed by hand here, and the error for a single-output network.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from textualdeg.registry import LOSS_REGISTRY
from textualdeg.restoration.archs import NAFNet
from textualdeg.restoration.archs.dsrir import DSRIRStages
from textualdeg.restoration.contrastive_loss import PositiveContrastLoss
from textualdeg.restoration.stage_losses import DSRIRLoss, MultiScaleFFTLoss, StageLoss


class Scales(NamedTuple):
    images: list[torch.Tensor]


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_multiscale_fft_loss_by_hand() -> None:
    gt = _rand(2, 3, 16, 24, seed=0)
    images = [_rand(2, 3, 16, 24, seed=1), _rand(2, 3, 8, 12, seed=2), _rand(2, 3, 4, 6, seed=3)]
    expected = 0.0
    for image in images:
        # SFNet's train.py: F.interpolate(label, scale_factor=s, mode='bilinear'), L1 on [real, imag]
        scale = image.shape[-1] / gt.shape[-1]
        target = gt if scale == 1 else F.interpolate(gt, scale_factor=scale, mode="bilinear")
        spec = lambda t: torch.stack([torch.fft.fft2(t).real, torch.fft.fft2(t).imag], -1)  # noqa: E731
        expected += (image - target).abs().mean() + 0.1 * (spec(image) - spec(target)).abs().mean()
    loss = LOSS_REGISTRY.build({"type": "MultiScaleFFTLoss", "loss_weight": 2.0})
    assert isinstance(loss, StageLoss)
    torch.testing.assert_close(loss(Scales(images), gt, gt), 2.0 * expected, rtol=1e-6, atol=1e-6)


def test_dsrir_loss_by_hand() -> None:
    gt, lq = _rand(2, 3, 16, 16, seed=0), _rand(2, 3, 16, 16, seed=1)
    images = [_rand(2, 3, 16, 16, seed=s).requires_grad_() for s in (2, 3, 4)]
    variances = [(0.1 * _rand(2, 3, 16, 16, seed=s)).requires_grad_() for s in (5, 6, 7)]
    stages = DSRIRStages(images, variances)
    uncertainty = sum(((y - gt) * torch.exp(-v)).abs().mean() + 2 * v.mean() for y, v in zip(images, variances)) / 3

    def psnr(y):  # NAFNet's PSNRLoss: 10/ln10 * log(mse + 1e-8), mean over the batch
        return (10 / math.log(10) * torch.log((y - gt).square().mean(dim=(1, 2, 3)) + 1e-8)).mean()

    psnr_term = psnr(images[0]) + 0.5 * (psnr(images[1]) + psnr(images[2])) / 2
    no_vgg = DSRIRLoss(contrastive_weight=0)
    assert no_vgg.contrast is None
    torch.testing.assert_close(no_vgg(stages, gt, lq), uncertainty + psnr_term)
    torch.manual_seed(0)
    full = LOSS_REGISTRY.build({"type": "DSRIRLoss"})  # random VGG weights (tests only)
    contrast = PositiveContrastLoss()
    contrast.vgg.load_state_dict(full.contrast.vgg.state_dict())
    expected = uncertainty + psnr_term + 0.2 * contrast(images, gt, lq)
    value = full(stages, gt, lq)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in images + variances)


def test_bad_inputs_and_single_output_networks() -> None:
    with pytest.raises(ValueError, match="fft_weight must be a number >= 0"):
        MultiScaleFFTLoss(fft_weight=-1)
    with pytest.raises(ValueError, match="MultiScaleFFTLoss needs forward_stages\\(\\) outputs with an 'images' list"):
        MultiScaleFFTLoss()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    gt = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="one variance map per stage image"):
        DSRIRLoss(contrastive_weight=0)(Scales([gt]), gt, gt)
    net = NAFNet(width=4, middle_blk_num=1, enc_blk_nums=(1,), dec_blk_nums=(1,))
    with pytest.raises(ValueError, match="NAFNet has a single output: train it with a pixel loss"):
        net(gt, stages=True)

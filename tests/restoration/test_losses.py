"""Tests for textualdeg.restoration.losses (values against closed forms, registry names).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import math

import pytest
import torch

from textualdeg.registry import LOSS_REGISTRY
from textualdeg.restoration.losses import CharbonnierLoss, L1Loss, MSELoss, PSNRLoss, pixel_loss


@pytest.fixture
def pair(photo_rgb):
    target = torch.from_numpy(photo_rgb[:32, :32]).permute(2, 0, 1)[None]  # (1, 3, 32, 32)
    pred = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return pred, target


def test_registry_builds_the_authors_pixel_opt():
    loss = LOSS_REGISTRY.build({"type": "L1Loss", "loss_weight": 1, "reduction": "mean"})
    assert isinstance(loss, L1Loss)
    assert {"L1Loss", "MSELoss", "PSNRLoss", "CharbonnierLoss"} <= set(LOSS_REGISTRY.keys())


def test_values_match_closed_forms(pair):
    pred, target = pair
    diff = pred - target
    assert L1Loss()(pred, target).item() == pytest.approx(diff.abs().mean().item(), rel=1e-6)
    assert L1Loss(reduction="sum")(pred, target).item() == pytest.approx(diff.abs().sum().item(), rel=1e-5)
    assert MSELoss(loss_weight=2.0)(pred, target).item() == pytest.approx(2 * diff.square().mean().item(), rel=1e-6)
    charb = CharbonnierLoss()(pred, target).item()
    assert charb == pytest.approx(torch.sqrt(diff.square() + 1e-6).mean().item(), rel=1e-6)
    assert L1Loss()(pred, target).item() < charb
    mse = diff.square().mean().item()
    assert PSNRLoss()(pred, target).item() == pytest.approx(10 / math.log(10) * math.log(mse + 1e-8), rel=1e-5)
    assert L1Loss(reduction="none")(pred, target).shape == pred.shape


def test_weighted_mean_and_multi_output_sum(pair):
    pred, target = pair
    weight = torch.zeros_like(pred)
    weight[..., :8, :] = 1
    expected = (pred - target)[..., :8, :].abs().mean().item()
    assert L1Loss()(pred, target, weight).item() == pytest.approx(expected, rel=1e-5)
    single = pixel_loss(L1Loss(), pred, target)
    assert pixel_loss(L1Loss(), [pred, pred], target).item() == pytest.approx(2 * single.item())


def test_psnr_loss_y_channel_ignores_chroma_only_changes(pair):
    _, target = pair
    shifted = target.clone()
    shifted[:, 0] += 0.02 * 24.966 / 65.481  # R up, B down: Y unchanged
    shifted[:, 2] -= 0.02
    assert PSNRLoss(toY=True)(shifted, target).item() < PSNRLoss()(shifted, target).item()


def test_bad_arguments_raise_value_error(pair):
    pred, target = pair
    with pytest.raises(ValueError, match="reduction"):
        L1Loss(reduction="avg")
    with pytest.raises(ValueError, match="eps"):
        CharbonnierLoss(eps=0)
    with pytest.raises(ValueError, match="shape"):
        L1Loss()(pred, target[..., :16])

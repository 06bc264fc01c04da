"""Tests for textualdeg.restoration.ema.ModelEMA.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textualdeg.restoration.ema import ModelEMA


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_update_is_the_exponential_average_and_buffers_are_copied():
    model = _model(0)
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(3.0)
    ema.update(model)
    for name, p in ema.module.named_parameters():
        assert torch.allclose(p, 0.9 * start[name] + 0.1 * (start[name] + 1.0), atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert set(ema.module.state_dict()) == set(model.state_dict())


def test_state_dict_round_trip_resumes_exactly():
    model = _model(1)
    ema = ModelEMA(model, decay=0.5)
    ema.update(_model(2))
    other = ModelEMA(_model(3), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)
    ema.update(model)
    other.update(model)
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_decay_raises():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(_model(0), decay=1.0)

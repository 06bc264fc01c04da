"""ReferenceFusion and ZeroGatedResidual: identity at initialisation, the authors' key
layout, dependence on the warped feature once trained, gradients, shape errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textualdeg.restoration.archs.nafnet_blocks import NAFBlock
from textualdeg.restoration.archs.restormer_blocks import TransformerBlock
from textualdeg.restoration.reference.fusion import ReferenceFusion, ZeroGatedResidual


class _ConvBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class _GatedConv(ZeroGatedResidual, _ConvBlock):
    pass


class _GatedTransformer(ZeroGatedResidual, TransformerBlock):
    pass


def test_nafblock_fusion_is_identity_at_init_and_keeps_authors_keys() -> None:
    torch.manual_seed(0)
    fusion = ReferenceFusion(NAFBlock(8), NAFBlock(8))
    x, warped = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    torch.testing.assert_close(fusion(x, warped), x, atol=0, rtol=0)
    keys = list(fusion.state_dict())
    assert keys[0].startswith("0.") and "1.beta" in keys and "1.sca.1.weight" in keys


def test_fusion_uses_the_warped_feature_once_trained() -> None:
    torch.manual_seed(0)
    fusion = ReferenceFusion(NAFBlock(8))
    with torch.no_grad():
        fusion[0].beta.fill_(0.5)
        fusion[0].gamma.fill_(0.5)
    x = torch.randn(1, 4, 6, 5)
    a = fusion(x, torch.randn(1, 4, 6, 5))
    b = fusion(x, torch.randn(1, 4, 6, 5))
    assert a.shape == x.shape
    assert (a - x).abs().max() > 1e-4 and (a - b).abs().max() > 1e-4


def test_zero_gated_residual_identity_then_gradient() -> None:
    torch.manual_seed(0)
    block = _GatedConv(6)
    # own parameters come first in a state_dict, as in the authors' TransformerResFusionBlock
    assert list(block.state_dict()) == ["alpha", "conv.weight", "conv.bias"]
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    y = block(x)
    torch.testing.assert_close(y, x, atol=0, rtol=0)
    y.square().sum().backward()
    assert block.alpha.grad is not None and block.alpha.grad.abs().item() > 0
    with torch.no_grad():
        block.alpha.fill_(0.3)
    assert (block(x) - x).abs().max() > 1e-4


def test_transformer_fusion_block_keeps_block_names_and_adds_alpha() -> None:
    block = _GatedTransformer(8, 2, 2.0, False, "WithBias")
    keys = list(block.state_dict())
    assert keys == ["alpha"] + list(TransformerBlock(8, 2, 2.0, False, "WithBias").state_dict())
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(ReferenceFusion(block)(x[:, :4], x[:, 4:]), x[:, :4], atol=0, rtol=0)


def test_every_parameter_gets_a_gradient_when_gates_are_open() -> None:
    torch.manual_seed(0)
    fusion = ReferenceFusion(_GatedConv(4), NAFBlock(4))
    with torch.no_grad():
        fusion[0].alpha.fill_(0.5)
        fusion[1].beta.fill_(0.5)
        fusion[1].gamma.fill_(0.5)
    warped = torch.randn(1, 2, 6, 6, requires_grad=True)
    fusion(torch.randn(1, 2, 6, 6), warped).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())
    assert warped.grad.abs().sum() > 0


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 4, 6, 6\).*\(1, 3, 6, 6\)"):
        ReferenceFusion(NAFBlock(8))(torch.zeros(1, 4, 6, 6), torch.zeros(1, 3, 6, 6))

"""Channel layer norms against torch's layer_norm; Restormer's key layout and type check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textualdeg.restoration.archs.norms import BiasFreeLayerNorm2d, LayerNorm2d, RestormerLayerNorm


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_layernorm2d_matches_torch_layer_norm_over_channels() -> None:
    x = _rand(2, 6, 5, 7) * 3 + 1
    ln = LayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(_rand(6, seed=1))
        ln.bias.copy_(_rand(6, seed=2))
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expected, atol=1e-5, rtol=1e-5)


def test_biasfree_norm_scales_without_centring() -> None:
    x = _rand(1, 4, 3, 3) + 5.0  # a large mean: centring would change the result a lot
    out = BiasFreeLayerNorm2d(4)(x)
    expected = x / torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(out, expected)
    assert out.mean().item() > 2.0  # not centred


def test_restormer_layernorm_keys_and_type_check() -> None:
    assert list(RestormerLayerNorm(8, "WithBias").state_dict()) == ["body.weight", "body.bias"]
    assert list(RestormerLayerNorm(8, "BiasFree").state_dict()) == ["body.weight"]
    with pytest.raises(ValueError, match="LayerNorm_type.*'Bias'"):
        RestormerLayerNorm(8, "Bias")

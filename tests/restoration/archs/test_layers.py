"""Shared blocks: layer norms against torch's layer_norm, the TLC pool against a brute-force
box filter, pad_to_multiple."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textualdeg.restoration.archs.layers import (
    BiasFreeLayerNorm2d,
    LayerNorm2d,
    LocalAvgPool2d,
    MDTA,
    NAFBlock,
    RestormerLayerNorm,
    SimpleGate,
    pad_to_multiple,
    replace_global_pools,
)


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


def test_simple_gate_multiplies_halves() -> None:
    x = _rand(1, 4, 2, 2)
    torch.testing.assert_close(SimpleGate()(x), x[:, :2] * x[:, 2:])


def test_fresh_nafblock_is_identity() -> None:
    x = _rand(2, 8, 9, 11)
    torch.testing.assert_close(NAFBlock(8)(x), x, atol=0, rtol=0)


@pytest.mark.parametrize("kernel", [(3, 4), (5, 5), (7, 1), (20, 3)])
def test_local_avg_pool_equals_box_filter(kernel: tuple[int, int]) -> None:
    x = _rand(1, 2, 11, 13)
    out = LocalAvgPool2d(kernel)(x)
    kh, kw = min(kernel[0], 11), min(kernel[1], 13)
    box = F.avg_pool2d(x, (kh, kw), stride=1)  # (1, 2, 11-kh+1, 13-kw+1)
    oh, ow = box.shape[-2:]
    expected = F.pad(box, ((13 - ow) // 2, (13 - ow + 1) // 2, (11 - oh) // 2, (11 - oh + 1) // 2), mode="replicate")
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_local_avg_pool_is_global_when_kernel_covers_map() -> None:
    x = _rand(2, 3, 6, 8)
    torch.testing.assert_close(LocalAvgPool2d((6, 8))(x), x.mean(dim=(2, 3), keepdim=True))


def test_replace_global_pools_counts_and_swaps() -> None:
    blocks = torch.nn.Sequential(NAFBlock(4), NAFBlock(4))
    assert replace_global_pools(blocks, (5, 6)) == 2
    assert all(isinstance(b.sca[0], LocalAvgPool2d) and b.sca[0].kernel_size == (5, 6) for b in blocks)
    assert replace_global_pools(blocks, (5, 6)) == 0


def test_pad_to_multiple_modes() -> None:
    x = _rand(1, 1, 5, 6)
    zeros = pad_to_multiple(x, 4)
    assert zeros.shape == (1, 1, 8, 8) and zeros[..., 5:, :].abs().sum() == 0
    refl = pad_to_multiple(x, 4, mode="reflect")
    torch.testing.assert_close(refl[..., 5, :6], x[..., 3, :])  # row 5 mirrors row 3
    assert pad_to_multiple(x, 1) is x
    tiny = pad_to_multiple(_rand(1, 1, 2, 2), 8, mode="reflect")  # too small to reflect
    assert tiny.shape == (1, 1, 8, 8)


def test_mdta_rejects_heads_not_dividing_dim() -> None:
    with pytest.raises(ValueError, match="dim=6, num_heads=4"):
        MDTA(6, 4)

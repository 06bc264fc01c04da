"""Restormer: official key layout and parameter count, any input size (reflect padding),
dual-pixel mode, gradients, determinism, the fusion hook, argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from keylists import build_on_meta, model_keys, read_keys
from textualdeg.restoration.archs import Restormer
from tiny_configs import RESTORMER_TINY


def _photo(photo_rgb, h: int, w: int, batch: int = 1) -> torch.Tensor:
    x = torch.from_numpy(photo_rgb[60 : 60 + h, 200 : 200 + w]).permute(2, 0, 1)[None]  # (1, 3, h, w)
    return x.repeat(batch, 1, 1, 1).contiguous()


def test_official_key_layout_and_parameter_count() -> None:
    expected, total = read_keys("restormer_default")
    model = build_on_meta(Restormer)
    assert model_keys(model) == expected
    assert total == 26_126_644  # the count in the keys.tsv header
    assert sum(p.numel() for p in model.parameters()) == 26_126_644


def test_biasfree_and_dual_pixel_layouts() -> None:
    bf = build_on_meta(Restormer, LayerNorm_type="BiasFree")
    keys = dict(model_keys(bf))
    assert "encoder_level1.0.norm1.body.weight" in keys and "encoder_level1.0.norm1.body.bias" not in keys
    dp = build_on_meta(Restormer, inp_channels=6, dual_pixel_task=True)
    keys = dict(model_keys(dp))
    assert keys["skip_conv.weight"] == (96, 48, 1, 1) and keys["patch_embed.proj.weight"] == (48, 6, 3, 3)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (3, 5)])
def test_forward_any_size(photo_rgb, size) -> None:
    model = Restormer(**RESTORMER_TINY).eval()
    x = _photo(photo_rgb, *size, batch=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - x).abs().max() > 1e-3


def test_padding_is_reflect_right_bottom(photo_rgb) -> None:
    model = Restormer(**RESTORMER_TINY).eval()
    x = _photo(photo_rgb, 37, 53)
    assert model.pad_multiple == 8
    with torch.no_grad():
        y = model(x)
        ref = model._forward_padded(F.pad(x, (0, 3, 0, 3), mode="reflect"))[:, :, :37, :53]
    torch.testing.assert_close(y, ref, atol=0, rtol=0)


def test_dual_pixel_forward(photo_rgb) -> None:
    model = Restormer(**RESTORMER_TINY, inp_channels=6, dual_pixel_task=True).eval()
    x = _photo(photo_rgb, 21, 30)
    with torch.no_grad():
        y = model(torch.cat([x, x.flip(-1)], 1))
    assert y.shape == (1, 3, 21, 30) and torch.isfinite(y).all()


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    model = Restormer(**RESTORMER_TINY, bias=True)
    model(_photo(photo_rgb, 16, 24)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_deterministic(photo_rgb) -> None:
    torch.manual_seed(5)
    a = Restormer(**RESTORMER_TINY).eval()
    torch.manual_seed(5)
    b = Restormer(**RESTORMER_TINY).eval()
    x = _photo(photo_rgb, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_fuse_hook_levels(photo_rgb) -> None:
    model = Restormer(**RESTORMER_TINY).eval()
    x = model._pad(_photo(photo_rgb, 37, 53))  # (1, 3, 40, 56)
    seen = []

    def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
        seen.append((level, tuple(feat.shape)))
        return feat

    with torch.no_grad():
        torch.testing.assert_close(model._forward_padded(x, fuse), model._forward_padded(x), atol=0, rtol=0)
    assert seen == [(0, (1, 8, 40, 56)), (1, (1, 16, 20, 28)), (2, (1, 32, 10, 14)), (3, (1, 64, 5, 7))]


def test_wrong_channel_count_names_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 16, 16\)"):
        Restormer(**RESTORMER_TINY)(torch.zeros(2, 1, 16, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"heads": (1, 1, 3, 2)}, r"heads\[2\]=3 must divide the width 32"),
        ({"num_blocks": (1, 1, 1)}, r"num_blocks must have 4 entries, got \(1, 1, 1\)"),
        ({"LayerNorm_type": "withbias"}, "LayerNorm_type must be one of .* got 'withbias'"),
        ({"dim": 0}, "dim must be a positive int, got 0"),
        ({"inp_channels": 6}, "inp_channels=6, out_channels=3"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Restormer(**{**RESTORMER_TINY, **kwargs})

"""NAFNet and NAFNetLocal: official key layouts and parameter counts, any input size,
gradients, determinism, the fusion hook, and TLC behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from keylists import build_on_meta, model_keys, read_keys
from textualdeg.restoration.archs import NAFNet, NAFNetLocal
from textualdeg.restoration.archs.tlc import LocalAvgPool2d
from tiny_configs import NAFNET_TINY

GOPRO = dict(img_channel=3, width=64, middle_blk_num=1, enc_blk_nums=(1, 1, 1, 28), dec_blk_nums=(1, 1, 1, 1))
SIDD = dict(img_channel=3, width=32, middle_blk_num=12, enc_blk_nums=(2, 2, 4, 8), dec_blk_nums=(2, 2, 2, 2))


def _photo(photo_rgb, h: int, w: int, batch: int = 1) -> torch.Tensor:
    x = torch.from_numpy(photo_rgb[100 : 100 + h, 150 : 150 + w]).permute(2, 0, 1)[None]  # (1, 3, h, w)
    return x.repeat(batch, 1, 1, 1).contiguous()


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero beta/gamma so every block contributes (fresh blocks are identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize(
    "name, cls, cfg, n_params",
    [
        ("nafnet_gopro_width64", NAFNet, GOPRO, 67_888_835),
        ("nafnet_gopro_width64", NAFNetLocal, GOPRO, 67_888_835),
        ("nafnet_sidd_width32", NAFNet, SIDD, 29_159_715),
    ],
)
def test_official_key_layout_and_parameter_count(name, cls, cfg, n_params) -> None:
    expected, total = read_keys(name)
    model = build_on_meta(cls, **cfg)
    assert model_keys(model) == expected
    assert total == n_params  # the count in the keys.tsv header
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_official_yaml_lists_are_accepted() -> None:
    model = build_on_meta(NAFNet, **{**GOPRO, "enc_blk_nums": [1, 1, 1, 28], "dec_blk_nums": [1, 1, 1, 1]})
    assert model.pad_multiple == 16 and model.num_levels == 4


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (1, 7)])
def test_forward_any_size(photo_rgb, size) -> None:
    model = _randomize(NAFNet(**NAFNET_TINY)).eval()
    x = _photo(photo_rgb, *size, batch=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - x).abs().max() > 1e-3  # the network does something


def test_padding_is_zeros_right_bottom_like_check_image_size(photo_rgb) -> None:
    model = _randomize(NAFNet(**NAFNET_TINY)).eval()
    x = _photo(photo_rgb, 37, 53)
    assert model.pad_multiple == 4
    with torch.no_grad():
        y = model(x)
        ref = model._forward_padded(F.pad(x, (0, 3, 0, 3)))[:, :, :37, :53]
        reflect = model._forward_padded(F.pad(x, (0, 3, 0, 3), mode="reflect"))[:, :, :37, :53]
    torch.testing.assert_close(y, ref, atol=0, rtol=0)
    assert (y - reflect).abs().max() > 1e-6


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    model = _randomize(NAFNet(**NAFNET_TINY))
    model(_photo(photo_rgb, 20, 24)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_deterministic(photo_rgb) -> None:
    torch.manual_seed(3)
    a = _randomize(NAFNet(**NAFNET_TINY)).eval()
    torch.manual_seed(3)
    b = _randomize(NAFNet(**NAFNET_TINY)).eval()
    x = _photo(photo_rgb, 29, 31)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
        torch.testing.assert_close(a(x), a(x), atol=0, rtol=0)


def test_fuse_hook_sees_every_encoder_level_and_the_middle(photo_rgb) -> None:
    model = _randomize(NAFNet(**NAFNET_TINY)).eval()
    x = model._pad(_photo(photo_rgb, 37, 53))  # (1, 3, 40, 56)
    seen = []

    def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
        seen.append((level, tuple(feat.shape)))
        return feat

    with torch.no_grad():
        out = model._forward_padded(x, fuse=fuse)
        torch.testing.assert_close(out, model._forward_padded(x), atol=0, rtol=0)
        shifted = model._forward_padded(x, fuse=lambda level, f: f + 1.0 if level == 2 else f)
    assert seen == [(0, (1, 4, 40, 56)), (1, (1, 8, 20, 28)), (2, (1, 16, 10, 14))]
    assert (shifted - out).abs().max() > 1e-4


def test_wrong_channel_count_names_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(1, 4, 8, 8\)"):
        NAFNet(**NAFNET_TINY)(torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width must be a positive int, got 0"),
        ({"enc_blk_nums": (1, 1), "dec_blk_nums": (1,)}, r"dec_blk_nums.*\(1,\)"),
        ({"enc_blk_nums": (1, -1), "dec_blk_nums": (1, 1)}, r"enc_blk_nums entries must be >= 0, got \(1, -1\)"),
        ({"middle_blk_num": -2}, "middle_blk_num must be an int >= 0, got -2"),
        ({"enc_blk_nums": "11"}, "enc_blk_nums must be a sequence of ints, got '11'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        NAFNet(**{**NAFNET_TINY, **kwargs})


# ------------------------------------------------------------------------------------- TLC
def test_local_kernel_sizes_match_official_calibration() -> None:
    # Official: kernel = feature size at train size * base_size // train_size, base = 1.5x.
    model = build_on_meta(NAFNetLocal, **GOPRO, train_size=(1, 3, 256, 256))
    assert [model.local_kernel_size(level) for level in range(5)] == [(384, 384), (192, 192), (96, 96), (48, 48), (24, 24)]
    pools = [m for m in model.modules() if isinstance(m, LocalAvgPool2d)]
    assert len(pools) == 31 + 1 + 4  # one per NAFBlock
    assert model.middle_blks[0].sca[0].kernel_size == (24, 24)
    assert model.decoders[0][0].sca[0].kernel_size == (48, 48)
    assert model.encoders[0][0].sca[0].kernel_size == (384, 384)
    odd = build_on_meta(NAFNetLocal, **NAFNET_TINY, train_size=(1, 3, 30, 20), base_size=(40, 25))
    assert odd.local_kernel_size(0) == (32 * 40 // 30, 20 * 25 // 20)


def test_local_equals_plain_at_train_size_and_differs_when_larger(photo_rgb) -> None:
    plain = _randomize(NAFNet(**NAFNET_TINY)).eval()
    local = NAFNetLocal(**NAFNET_TINY, train_size=(1, 3, 16, 16)).eval()
    local.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        x = _photo(photo_rgb, 16, 16)
        torch.testing.assert_close(local(x), plain(x), atol=0, rtol=0)
        x = _photo(photo_rgb, 24, 20)  # within base size 24x24: still global pooling
        torch.testing.assert_close(local(x), plain(x), atol=0, rtol=0)
        x = _photo(photo_rgb, 64, 72)  # local statistics now
        y_local, y_plain = local(x), plain(x)
    assert y_local.shape == x.shape and torch.isfinite(y_local).all()
    diff = (y_local - y_plain).abs()
    assert diff.max() > 1e-4  # local pooling changes the result ...
    assert diff.mean() < 0.5 * (y_plain - x).abs().mean()  # ... but stays a small correction


def test_local_rejects_fast_imp_and_bad_train_size() -> None:
    with pytest.raises(ValueError, match="fast_imp=True"):
        NAFNetLocal(**NAFNET_TINY, fast_imp=True)
    with pytest.raises(ValueError, match=r"train_size must have 4 entries, got \(256, 256\)"):
        NAFNetLocal(**NAFNET_TINY, train_size=(256, 256))

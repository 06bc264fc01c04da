"""GuidedNAFNet (the authors' NAFNetRefFusion): option file 002 arguments and key layout,
plain NAFNet checkpoints load with exactly the masa_* keys missing, identity at
initialisation, any sizes, gradients, determinism and input errors."""

from __future__ import annotations

import pytest
import torch

from keylists import build_on_meta, model_keys, read_keys
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs import GuidedNAFNet, NAFNet
from tiny_configs import GUIDED_NAFNET_TINY, NAFNET_TINY

# network_g of the authors' options/train_restoration/002_nafnet_single_image_motion_deblurring.yml
OPTION_002 = dict(
    img_channel=3, width=64, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1],
    nf=64, ext_n_blocks=[4, 4, 4, 4], reffusion_n_blocks=[2, 2, 2, 2], reffusion_n_blocks_middle=1,
    scale=1, num_nbr=1, psize=3, lr_block_size=8, ref_down_block_size=1.5, dilations=[1, 2, 3],
)


def _photo(photo_rgb, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo_rgb[top : top + h, left : left + w]).permute(2, 0, 1)[None].contiguous()


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Open every zero-initialised gate (NAFBlock beta/gamma) so all blocks contribute."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("reffusion", [[2, 2, 2, 2], [2, 2, 2, 2, 1]])
def test_option_002_key_layout_and_parameter_count(reffusion) -> None:
    expected, total = read_keys("textualdeg_nafnet_reffusion_gopro")
    model = build_on_meta(ARCH_REGISTRY.get("NAFNetRefFusion"), **{**OPTION_002, "reffusion_n_blocks": reffusion})
    assert isinstance(model, GuidedNAFNet) and isinstance(model, NAFNet)
    assert dict(model_keys(model)) == dict(expected)
    assert len(model.state_dict()) == len(expected) == 916
    assert sum(p.numel() for p in model.parameters()) == total == 223_791_683
    # the backbone part is the official NAFNet GoPro layout, in order
    backbone, _ = read_keys("nafnet_gopro_width64")
    assert [kv for kv in model_keys(model) if not kv[0].startswith("masa_")] == backbone
    assert model.pad_multiple == 128


def test_registry_builds_the_authors_type_name() -> None:
    model = ARCH_REGISTRY.build({"type": "NAFNetRefFusion", **GUIDED_NAFNET_TINY})
    assert type(model) is GuidedNAFNet and ARCH_REGISTRY.get("GuidedNAFNet") is GuidedNAFNet


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(reffusion_n_blocks=(1, 1, 2), reffusion_n_blocks_middle=1), "reffusion_n_blocks_middle=1"),
        (dict(reffusion_n_blocks=(1,)), "reffusion_n_blocks"),
        (dict(nf=8), "nf"),
        (dict(scale=2), "scale"),
        (dict(num_nbr=2), "num_nbr"),
        (dict(psize=5), "psize"),
        (dict(lr_block_size=2), "lr_block_size"),
        (dict(dilations=(1, 2, 3)), "dilations"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        GuidedNAFNet(**{**GUIDED_NAFNET_TINY, **kwargs})


def test_plain_checkpoint_loads_and_fresh_fusion_is_identity(photo_rgb) -> None:
    torch.manual_seed(0)
    plain = _randomize(NAFNet(**NAFNET_TINY)).eval()
    guided = GuidedNAFNet(**GUIDED_NAFNET_TINY).eval()
    result = guided.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {k for k in guided.state_dict() if k.startswith("masa_")}
    assert all(k.startswith("masa_") for k in result.missing_keys) and result.missing_keys
    # Sizes that are multiples of pad_multiple (16): both models see the same input.
    x = torch.cat([_photo(photo_rgb, 100, 150, 32, 48), _photo(photo_rgb, 300, 200, 32, 48)])
    ref = _photo(photo_rgb, 0, 0, 64, 64).repeat(2, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, ref), plain(x), atol=0, rtol=0)


@pytest.mark.parametrize("x_size, ref_size", [((37, 53), (64, 64)), ((64, 96), (64, 64)), ((20, 20), (90, 40))])
def test_any_sizes_and_reference_matters(photo_rgb, x_size, ref_size) -> None:
    torch.manual_seed(0)
    model = _randomize(GuidedNAFNet(**GUIDED_NAFNET_TINY)).eval()
    x = _photo(photo_rgb, 100, 150, *x_size).repeat(2, 1, 1, 1)
    ref_a = _photo(photo_rgb, 10, 20, *ref_size).repeat(2, 1, 1, 1)
    ref_b = _photo(photo_rgb, 250, 300, *ref_size).repeat(2, 1, 1, 1)
    with torch.no_grad():
        y = model(x, ref_a)
        y_b = model(x, ref_b)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - y_b).abs().max() > 1e-5  # the guidance changes the result


def test_reference_smaller_than_the_search_window(photo_rgb) -> None:
    # deepest input feature 8x8 (2x2 blocks), deepest reference 4x4: the authors' window
    # (diameter 3 + 2) would not fit (their D55); here it is clamped to the reference.
    model = _randomize(GuidedNAFNet(**GUIDED_NAFNET_TINY)).eval()
    x, ref = _photo(photo_rgb, 100, 150, 32, 32), _photo(photo_rgb, 0, 0, 16, 16)
    with torch.no_grad():
        y = model(x, ref)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _randomize(GuidedNAFNet(**GUIDED_NAFNET_TINY))
    x, ref = _photo(photo_rgb, 100, 150, 21, 30), _photo(photo_rgb, 0, 0, 32, 32)
    model(x, ref).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_deterministic(photo_rgb) -> None:
    x, ref = _photo(photo_rgb, 100, 150, 24, 40), _photo(photo_rgb, 0, 0, 48, 48)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = _randomize(GuidedNAFNet(**GUIDED_NAFNET_TINY)).eval()
        with torch.no_grad():
            outs.append(model(x, ref))
            outs.append(model(x, ref))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=0, rtol=0)


def test_bad_channels_name_both_shapes() -> None:
    model = GuidedNAFNet(**GUIDED_NAFNET_TINY)
    with pytest.raises(ValueError, match=r"x \(1, 4, 16, 16\) and ref \(1, 3, 16, 16\)"):
        model(torch.zeros(1, 4, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"x \(1, 3, 16, 16\) and ref \(1, 1, 16, 16\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"x \(2, 3, 16, 16\) and ref \(1, 3, 16, 16\)"):
        model(torch.zeros(2, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_non_square_search_windows(photo_rgb) -> None:
    # 64x96 input with a 64x64 reference gives 9x5 windows at the deepest level; the
    # authors' batch index used the window height twice there and crashed (their D54).
    model = _randomize(GuidedNAFNet(**GUIDED_NAFNET_TINY)).eval()
    assert model.masa_matcher.window_size((16, 24), (16, 16)) == (9, 5)
    x, ref = _photo(photo_rgb, 100, 150, 64, 96), _photo(photo_rgb, 0, 0, 64, 64)
    with torch.no_grad():
        warped = model.reference_features(x, ref)
    assert [tuple(w.shape) for w in warped] == [(1, 4, 64, 96), (1, 8, 32, 48), (1, 16, 16, 24)]
    assert all(w.abs().sum() > 0 for w in warped)

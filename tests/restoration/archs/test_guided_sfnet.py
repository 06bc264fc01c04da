"""GuidedSFNet (the authors' SFNetRefFusion): the intended layout (official SFNet keys plus
masa_*), the authors' option files build unchanged, plain checkpoints load with exactly the
masa_* keys missing, identity at initialisation, both reference modes at any sizes,
gradients, determinism and argument/input errors."""

from __future__ import annotations

import pytest
import torch

from keylists import build_on_meta, model_keys, read_keys
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.guided_sfnet import GuidedSFNet
from textualdeg.restoration.archs.sfnet import SFNet

# network_g of the option files 005 (indoor) and 006 (outdoor: mode [train, Outdoor]), minus type
OPTION_005 = dict(
    mode=["train", "Indoor"], num_res=16, nf=32, ext_n_blocks=[4, 4, 4], reffusion_n_blocks=[2, 2, 2],
    reffusion_n_blocks_middle=1, scale=1, num_nbr=1, psize=3, lr_block_size=8, ref_down_block_size=1.5,
    dilations=[1, 2, 3], reference_mode="masa",
)
SFNET_TINY = dict(mode=("train", "Indoor"), num_res=1, base_channel=16)
GUIDED_SFNET_TINY = dict(SFNET_TINY, ext_n_blocks=(1,), reffusion_n_blocks=(1, 1, 1), lr_block_size=4, dilations=(1, 2))


def _photo(photo_rgb, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo_rgb[top : top + h, left : left + w]).permute(2, 0, 1)[None].contiguous()


def _open_gates(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def test_intended_key_layout_is_official_sfnet_plus_masa() -> None:
    expected, total = read_keys("textualdeg_sfnet_reffusion_intended")
    model = build_on_meta(GuidedSFNet, **OPTION_005)
    keys = model_keys(model)
    assert keys == expected
    assert sum(p.numel() for p in model.parameters()) == total == 18_193_036
    backbone, _ = read_keys("sfnet_dehazing")
    assert [kv for kv in keys if not kv[0].startswith("masa_")] == backbone
    masa = dict(kv for kv in keys if kv[0].startswith("masa_"))
    assert masa["masa_enc.conv_L3.weight"] == (128, 64, 3, 3) and "masa_enc.conv_L4.weight" not in masa
    for level, width in ((1, 64), (2, 128), (3, 256)):
        assert masa[f"masa_blk_enc_level{level}.alpha"] == (1,)
        assert masa[f"masa_blk_enc_level{level}.layers.1.conv1.main.0.weight"] == (width, width, 3, 3)
        assert f"masa_blk_enc_level{level}.layers.1.dyna.conv.weight" in masa  # last block: dynamic filter
    assert model.pad_multiple == 32


def test_option_files_build_through_the_registry() -> None:
    with torch.device("meta"):
        for mode in (["train", "Indoor"], ["train", "Outdoor"]):
            model = ARCH_REGISTRY.build({"type": "SFNetRefFusion", **OPTION_005, "mode": mode})
            assert isinstance(model, GuidedSFNet) and model.mode == tuple(mode)
    assert ARCH_REGISTRY.get("GuidedSFNet") is GuidedSFNet


@pytest.mark.parametrize("reference_mode", ["masa", "refined"])
def test_plain_checkpoint_loads_and_fresh_fusion_is_identity(photo_rgb, reference_mode) -> None:
    torch.manual_seed(0)
    plain = SFNet(**SFNET_TINY).eval()
    guided = GuidedSFNet(**GUIDED_SFNET_TINY, reference_mode=reference_mode).eval()
    result = guided.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    # (torch fills a missing BatchNorm num_batches_tracked itself and does not report it)
    masa = {k for k in guided.state_dict() if k.startswith("masa_") and not k.endswith(".num_batches_tracked")}
    assert set(result.missing_keys) == masa
    x = _photo(photo_rgb, 100, 150, 32, 64)  # a multiple of pad_multiple (16): no padding anywhere
    ref = _photo(photo_rgb, 0, 0, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, ref), plain(x), atol=0, rtol=0)


@pytest.mark.parametrize(
    "reference_mode, x_size, ref_size", [("masa", (37, 53), (64, 64)), ("refined", (40, 24), (48, 64))]
)
def test_any_sizes_and_reference_matters(photo_rgb, reference_mode, x_size, ref_size) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedSFNet(**GUIDED_SFNET_TINY, reference_mode=reference_mode)).eval()
    x = _photo(photo_rgb, 100, 150, *x_size)
    with torch.no_grad():
        y = model(x, _photo(photo_rgb, 10, 20, *ref_size))
        y_b = model(x, _photo(photo_rgb, 250, 300, *ref_size))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - y_b).abs().max() > 1e-5


def test_test_phase_model_runs(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedSFNet(**dict(GUIDED_SFNET_TINY, mode=["test", "Outdoor"]))).eval()
    with torch.no_grad():
        y = model(_photo(photo_rgb, 100, 150, 45, 40), _photo(photo_rgb, 0, 0, 32, 32))
    assert y.shape == (1, 3, 45, 40) and torch.isfinite(y).all()


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedSFNet(**GUIDED_SFNET_TINY))
    with torch.no_grad():  # the block scales start at zero; open them so every path carries gradient
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    # BatchNorm on per-image statistics needs a batch of 2 different images
    x = torch.cat([_photo(photo_rgb, 100, 150, 21, 30), _photo(photo_rgb, 200, 50, 21, 30)])
    ref = torch.cat([_photo(photo_rgb, 0, 0, 32, 32), _photo(photo_rgb, 300, 300, 32, 32)])
    model(x, ref).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # unused as in the official SFNet: dynamic_filter.lamb_*; ConvsOut give the 1/4 and 1/2 outputs only
    assert missing and all(n.endswith(("lamb_l", "lamb_h")) or n.startswith("ConvsOut.") for n in missing)


def test_deterministic(photo_rgb) -> None:
    x, ref = _photo(photo_rgb, 100, 150, 24, 40), _photo(photo_rgb, 0, 0, 48, 48)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = _open_gates(GuidedSFNet(**GUIDED_SFNET_TINY)).eval()
        with torch.no_grad():
            outs += [model(x, ref), model(x, ref)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=0, rtol=0)


def test_bad_inputs_and_arguments() -> None:
    model = GuidedSFNet(**GUIDED_SFNET_TINY)
    with pytest.raises(ValueError, match=r"GuidedSFNet expects .* x \(1, 3, 16, 16\) and ref \(1, 4, 16, 16\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="reffusion_n_blocks must give 3 block counts"):
        GuidedSFNet(**dict(GUIDED_SFNET_TINY, reffusion_n_blocks=(1, 1)))
    with pytest.raises(ValueError, match=r"reffusion_n_blocks entries must be >= 1"):
        GuidedSFNet(**dict(GUIDED_SFNET_TINY, reffusion_n_blocks=(1, 0, 1)))
    with pytest.raises(ValueError, match="nf must equal the backbone width 16"):
        GuidedSFNet(**dict(GUIDED_SFNET_TINY, nf=32))
    with pytest.raises(ValueError, match=r"mode must be a list \[phase, scene\].*'train'"):
        GuidedSFNet(**dict(GUIDED_SFNET_TINY, mode="train"))
    with pytest.raises(ValueError, match="reffusion_n_blocks_middle"):
        GuidedSFNet(**dict(GUIDED_SFNET_TINY, reffusion_n_blocks_middle=-1))


def test_stage_outputs_for_the_multiscale_loss(photo_rgb) -> None:
    """``model(x, ref, stages=True)``: full, 1/2 and 1/4 outputs (final first), cropped to
    ceil(size / scale); the final one is the plain forward's output."""
    torch.manual_seed(0)
    model = _open_gates(GuidedSFNet(**GUIDED_SFNET_TINY)).eval()
    x = torch.cat([_photo(photo_rgb, 0, 0, 37, 53), _photo(photo_rgb, 40, 40, 37, 53)])  # (2, 3, 37, 53)
    ref = torch.cat([_photo(photo_rgb, 100, 100, 48, 48)] * 2)
    with torch.no_grad():
        stages = model(x, ref, stages=True)
        final = model(x, ref)
    assert [tuple(t.shape[-2:]) for t in stages.images] == [(37, 53), (19, 27), (10, 14)]
    torch.testing.assert_close(stages.images[0], final, atol=0, rtol=0)

"""GuidedRestormer: the authors' masa_* layout on top of the official Restormer keys,
plain checkpoints load with exactly the masa_* keys missing, identity at initialisation,
any sizes, dual-pixel with a 3-channel reference (the authors' D38), gradients,
determinism and input errors."""

from __future__ import annotations

import pytest
import torch

from guided_layouts import authors_masa_layout
from keylists import build_on_meta, model_keys, read_keys
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs import GuidedRestormer, Restormer
from tiny_configs import GUIDED_RESTORMER_TINY, RESTORMER_TINY

# network_g of the authors' Restormer option files (e.g. 003), minus type
OPTION_003 = dict(
    inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4,
    heads=[1, 2, 4, 8], ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
    dual_pixel_task=False, nf=48, ext_n_blocks=[4, 4, 4, 4], reffusion_n_blocks=[2, 2, 2, 2],
    reffusion_n_blocks_middle=1, scale=1, num_nbr=1, psize=3, lr_block_size=8, ref_down_block_size=1.5,
    dilations=[1, 2, 3],
)


def _photo(photo_rgb, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo_rgb[top : top + h, left : left + w]).permute(2, 0, 1)[None].contiguous()


def _open_gates(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def test_key_layout_is_official_restormer_plus_authors_masa() -> None:
    model = build_on_meta(GuidedRestormer, **OPTION_003)
    keys = model_keys(model)
    backbone, _ = read_keys("restormer_default")
    assert [kv for kv in keys if not kv[0].startswith("masa_")] == backbone
    assert {k: s for k, s in keys if k.startswith("masa_")} == authors_masa_layout()
    assert model.pad_multiple == 64 and "masa_enc.conv_L5.weight" not in dict(keys)


def test_bias_free_and_registry() -> None:
    model = ARCH_REGISTRY.build({"type": "GuidedRestormer", **GUIDED_RESTORMER_TINY, "LayerNorm_type": "BiasFree"})
    assert "masa_blk_enc_level1.0.norm1.body.bias" not in model.state_dict()


def test_plain_checkpoint_loads_and_fresh_fusion_is_identity(photo_rgb) -> None:
    torch.manual_seed(0)
    plain = Restormer(**RESTORMER_TINY).eval()
    guided = GuidedRestormer(**GUIDED_RESTORMER_TINY).eval()
    result = guided.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {k for k in guided.state_dict() if k.startswith("masa_")}
    x = _photo(photo_rgb, 100, 150, 32, 64)  # a multiple of pad_multiple (32): no padding anywhere
    ref = _photo(photo_rgb, 0, 0, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, ref), plain(x), atol=0, rtol=0)


@pytest.mark.parametrize("x_size, ref_size", [((37, 53), (64, 64)), ((64, 96), (64, 64))])
def test_any_sizes_and_reference_matters(photo_rgb, x_size, ref_size) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedRestormer(**GUIDED_RESTORMER_TINY)).eval()
    x = _photo(photo_rgb, 100, 150, *x_size)
    with torch.no_grad():
        y = model(x, _photo(photo_rgb, 10, 20, *ref_size))
        y_b = model(x, _photo(photo_rgb, 250, 300, *ref_size))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - y_b).abs().max() > 1e-5


def test_dual_pixel_takes_a_three_channel_reference(photo_rgb) -> None:
    torch.manual_seed(0)
    cfg = dict(GUIDED_RESTORMER_TINY, inp_channels=6, out_channels=3, dual_pixel_task=True)
    model = _open_gates(GuidedRestormer(**cfg)).eval()
    assert model.masa_enc.conv_L1.weight.shape[1] == 3
    left, right = _photo(photo_rgb, 100, 150, 24, 40), _photo(photo_rgb, 100, 152, 24, 40)
    with torch.no_grad():
        y = model(torch.cat([left, right], 1), _photo(photo_rgb, 0, 0, 32, 32))
    assert y.shape == (1, 3, 24, 40) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="inp_channels == 2 \\* out_channels"):
        GuidedRestormer(**dict(cfg, inp_channels=5))


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedRestormer(**GUIDED_RESTORMER_TINY))
    model(_photo(photo_rgb, 100, 150, 21, 30), _photo(photo_rgb, 0, 0, 32, 32)).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_deterministic(photo_rgb) -> None:
    x, ref = _photo(photo_rgb, 100, 150, 24, 40), _photo(photo_rgb, 0, 0, 48, 48)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = _open_gates(GuidedRestormer(**GUIDED_RESTORMER_TINY)).eval()
        with torch.no_grad():
            outs += [model(x, ref), model(x, ref)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=0, rtol=0)


def test_bad_inputs_and_arguments() -> None:
    model = GuidedRestormer(**GUIDED_RESTORMER_TINY)
    with pytest.raises(ValueError, match=r"x \(1, 3, 16, 16\) and ref \(1, 4, 16, 16\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"x \(1, 1, 16, 16\) and ref \(1, 3, 16, 16\)"):
        model(torch.zeros(1, 1, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="reffusion_n_blocks"):
        GuidedRestormer(**dict(GUIDED_RESTORMER_TINY, reffusion_n_blocks=(1, 1, 1)))
    with pytest.raises(ValueError, match="nf"):
        GuidedRestormer(**dict(GUIDED_RESTORMER_TINY, nf=16))

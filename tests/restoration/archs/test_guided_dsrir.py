"""GuidedDSRIR: official DSRIR keys plus masa_* (3-level encoder, alignment, PAB fusion
stacks), plain checkpoints load with exactly the masa_* keys missing, identity at
initialisation, both reference modes, any sizes, every stage output, gradients,
determinism and input errors."""

from __future__ import annotations

import pytest
import torch

from keylists import build_on_meta, model_keys, read_keys
from test_dsrir import DSRIR_TINY, UNUSED_OFFICIAL
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.dsrir import DSRIR
from textualdeg.restoration.archs.guided_dsrir import GuidedDSRIR

GUIDED_DSRIR_TINY = dict(
    DSRIR_TINY, ext_n_blocks=(1,), lr_block_size=4, dilations=(1, 2), reffusion_n_blocks=(1, 1, 1)
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


def test_key_layout_is_official_dsrir_plus_masa() -> None:
    model = build_on_meta(GuidedDSRIR)
    keys = model_keys(model)
    backbone, _ = read_keys("dsrir_default")
    assert [kv for kv in keys if not kv[0].startswith("masa_")] == backbone
    masa = dict(kv for kv in keys if kv[0].startswith("masa_"))
    # SN1 is 32, 64, 96 channels wide; the encoder 32, 64, 128: only level 3 is aligned
    assert [k for k in masa if k.startswith("masa_align")] == ["masa_align.2.weight"]
    assert masa["masa_align.2.weight"] == (96, 128, 1, 1)
    assert masa["masa_enc.conv_L3.weight"] == (128, 64, 3, 3) and "masa_enc.conv_L4.weight" not in masa
    for level, width in enumerate((64, 128, 192), start=1):
        assert masa[f"masa_blk_enc_level{level}.1.conv1.weight"] == (width, width, 3, 3)
        assert masa[f"masa_blk_enc_level{level}.1.alpha"] == (1,)
        assert f"masa_blk_enc_level{level}.2.alpha" not in masa
    assert model.pad_multiple == 32


def test_plain_checkpoint_loads_and_fresh_fusion_is_identity(photo_rgb) -> None:
    torch.manual_seed(0)
    plain = DSRIR(**DSRIR_TINY).eval()
    guided = ARCH_REGISTRY.build({"type": "GuidedDSRIR", **GUIDED_DSRIR_TINY}).eval()
    result = guided.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {k for k in guided.state_dict() if k.startswith("masa_")}
    assert guided.pad_multiple == 16
    x = _photo(photo_rgb, 100, 150, 32, 48)  # a multiple of pad_multiple: no padding anywhere
    ref = _photo(photo_rgb, 0, 0, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, ref), plain(x), atol=0, rtol=0)
        got, want = guided.forward_stages(x, ref), plain.forward_stages(x)
    for a, b in zip(got.images + got.variances, want.images + want.variances):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["masa", "refined"])
@pytest.mark.parametrize("x_size, ref_size", [((37, 53), (64, 64)), ((32, 48), (40, 40))])
def test_any_sizes_and_reference_matters(photo_rgb, mode, x_size, ref_size) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedDSRIR(**GUIDED_DSRIR_TINY, reference_mode=mode)).eval()
    x = _photo(photo_rgb, 100, 150, *x_size)
    with torch.no_grad():
        y = model(x, _photo(photo_rgb, 10, 20, *ref_size))
        y_b = model(x, _photo(photo_rgb, 250, 300, *ref_size))
        stages = model.forward_stages(x, _photo(photo_rgb, 10, 20, *ref_size))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - y_b).abs().max() > 1e-5
    assert [t.shape for t in stages.images + stages.variances] == [x.shape] * 6
    torch.testing.assert_close(stages.images[0], y, atol=0, rtol=0)


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedDSRIR(**dict(GUIDED_DSRIR_TINY, reduction=1)))
    stages = model.forward_stages(_photo(photo_rgb, 100, 150, 21, 30), _photo(photo_rgb, 0, 0, 32, 32))
    sum(t.square().mean() for t in stages.images + stages.variances).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing and all(n.startswith(UNUSED_OFFICIAL) for n in missing)


def test_deterministic(photo_rgb) -> None:
    x, ref = _photo(photo_rgb, 100, 150, 24, 40), _photo(photo_rgb, 0, 0, 48, 48)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = _open_gates(GuidedDSRIR(**GUIDED_DSRIR_TINY)).eval()
        with torch.no_grad():
            outs += [model(x, ref), model(x, ref)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=0, rtol=0)


def test_bad_inputs_and_arguments() -> None:
    model = GuidedDSRIR(**GUIDED_DSRIR_TINY)
    with pytest.raises(ValueError, match=r"x \(1, 3, 16, 16\) and ref \(1, 4, 16, 16\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"x \(1, 1, 16, 16\) and ref \(1, 3, 16, 16\)"):
        model.forward_stages(torch.zeros(1, 1, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="reffusion_n_blocks"):
        GuidedDSRIR(**dict(GUIDED_DSRIR_TINY, reffusion_n_blocks=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="nf"):
        GuidedDSRIR(**dict(GUIDED_DSRIR_TINY, nf=8))
    with pytest.raises(ValueError, match="out_c must equal in_c"):
        GuidedDSRIR(**dict(GUIDED_DSRIR_TINY, out_c=1))

"""GuidedDRSformer (DRSformerRefFusion) and GuidedDRSformer200LSPA
(DRSformer200L_SPA_RefFusion): the authors' key set on top of the official DRSformer keys,
their option files build unchanged, plain checkpoints load with exactly the masa_* keys
missing, identity at initialisation, both reference modes, any sizes, gradients,
determinism and input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from keylists import build_on_meta, model_keys, read_keys
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.drsformer import MEFC, DRSformer, DRSformer200LSPA
from textualdeg.restoration.archs.guided_drsformer import GuidedDRSformer, GuidedDRSformer200LSPA

OPTION_DIR = Path(__file__).resolve().parents[3] / "options" / "train_restoration"
DRSFORMER_TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), ffn_expansion_factor=2.0)
GUIDED_TINY = dict(
    DRSFORMER_TINY, ext_n_blocks=(1,), lr_block_size=4, dilations=(1, 2), reffusion_n_blocks=(1, 1, 1, 1)
)
# (guided class, plain class, authors' layout file, plain layout file, an option file using it)
VARIANTS = [
    (GuidedDRSformer, DRSformer, "textualdeg_drsformer_reffusion_rain200h", "drsformer_default",
     "008_drsformer_image_deraining_rain200h.yml"),
    (GuidedDRSformer200LSPA, DRSformer200LSPA, "textualdeg_drsformer200l_spa_reffusion_rain200l",
     "drsformer200l_spa_default", "007_drsformer_image_deraining_rain200l.yml"),
]


def _photo(photo_rgb, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo_rgb[top : top + h, left : left + w]).permute(2, 0, 1)[None].contiguous()


def _open_gates(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def _network_g(option_file: str) -> dict:
    return yaml.safe_load((OPTION_DIR / option_file).read_text())["network_g"]


@pytest.mark.parametrize("guided, plain, authors, official, option_file", VARIANTS)
def test_option_file_builds_the_authors_layout(guided, plain, authors, official, option_file) -> None:
    """network_g of the authors' option file builds unchanged; the keys and shapes are
    their constructor's (order aside) and the backbone part is the official one, in order."""
    spec = _network_g(option_file)
    with torch.device("meta"):
        model = ARCH_REGISTRY.build(spec)
    assert type(model) is guided
    keys = model_keys(model)
    expected, total = read_keys(authors)
    assert dict(keys) == dict(expected) and len(keys) == len(expected)
    assert sum(p.numel() for p in model.parameters()) == total
    backbone, _ = read_keys(official)
    assert [kv for kv in keys if not kv[0].startswith("masa_")] == backbone
    assert model.pad_multiple == 64 and "masa_enc.conv_L5.weight" not in dict(keys)


@pytest.mark.parametrize("option_file, type_", [
    ("007_drsformer_image_deraining_rain200l.yml", GuidedDRSformer200LSPA),
    ("008_drsformer_image_deraining_rain200h.yml", GuidedDRSformer),
    ("009_drsformer_image_deraining_diddata.yml", GuidedDRSformer),
    ("010_drsformer_image_deraining_ddndata.yml", GuidedDRSformer),
])
def test_every_drsformer_option_file_builds(option_file, type_) -> None:
    with torch.device("meta"):
        model = ARCH_REGISTRY.build(_network_g(option_file))
    assert type(model) is type_ and model.reference_mode == "masa"


def test_registered_names_and_fusion_widths() -> None:
    assert ARCH_REGISTRY.get("DRSformerRefFusion") is GuidedDRSformer
    assert ARCH_REGISTRY.get("DRSformer200L_SPA_RefFusion") is GuidedDRSformer200LSPA
    model = build_on_meta(GuidedDRSformer)
    widths = [stack[0].norm1.body.weight.shape[0] for stack in model._fusion_stacks()]
    heads = [stack[0].attn.num_heads for stack in model._fusion_stacks()]
    assert widths == [96, 192, 384, 768] and heads == [1, 2, 4, 8]
    light = GuidedDRSformer200LSPA(**GUIDED_TINY)
    assert isinstance(light, DRSformer200LSPA) and not isinstance(light.encoder_level0, MEFC)


@pytest.mark.parametrize("guided, plain, authors, official, option_file", VARIANTS)
def test_plain_checkpoint_loads_and_fresh_fusion_is_identity(photo_rgb, guided, plain, authors, official,
                                                             option_file) -> None:
    torch.manual_seed(0)
    ref_model = plain(**DRSFORMER_TINY).eval()
    model = guided(**GUIDED_TINY).eval()
    result = model.load_state_dict(ref_model.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {k for k in model.state_dict() if k.startswith("masa_")}
    x = _photo(photo_rgb, 100, 150, 32, 64)  # a multiple of pad_multiple (32): no padding anywhere
    ref = _photo(photo_rgb, 0, 0, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x, ref), ref_model(x), atol=0, rtol=0)


@pytest.mark.parametrize("reference_mode", ["masa", "refined"])
@pytest.mark.parametrize("guided", [GuidedDRSformer, GuidedDRSformer200LSPA])
def test_any_sizes_both_modes_and_reference_matters(photo_rgb, guided, reference_mode) -> None:
    torch.manual_seed(0)
    model = _open_gates(guided(**GUIDED_TINY, reference_mode=reference_mode)).eval()
    x = _photo(photo_rgb, 100, 150, 37, 53)
    with torch.no_grad():
        y = model(x, _photo(photo_rgb, 10, 20, 64, 64))
        y_b = model(x, _photo(photo_rgb, 250, 300, 64, 64))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - y_b).abs().max() > 1e-5


@pytest.mark.parametrize("guided", [GuidedDRSformer, GuidedDRSformer200LSPA])
def test_every_parameter_gets_a_gradient(photo_rgb, guided) -> None:
    torch.manual_seed(0)
    model = _open_gates(guided(**GUIDED_TINY))
    model(_photo(photo_rgb, 100, 150, 21, 30), _photo(photo_rgb, 0, 0, 32, 32)).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_deterministic(photo_rgb) -> None:
    x, ref = _photo(photo_rgb, 100, 150, 24, 40), _photo(photo_rgb, 0, 0, 48, 48)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = _open_gates(GuidedDRSformer(**GUIDED_TINY)).eval()
        with torch.no_grad():
            outs += [model(x, ref), model(x, ref)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=0, rtol=0)


def test_bad_inputs_and_arguments() -> None:
    model = GuidedDRSformer(**GUIDED_TINY)
    with pytest.raises(ValueError, match=r"GuidedDRSformer expects .* x \(1, 3, 16, 16\) and ref \(1, 4, 16, 16\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"x \(1, 1, 16, 16\) and ref \(1, 3, 16, 16\)"):
        model(torch.zeros(1, 1, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="reffusion_n_blocks must give 4 block counts"):
        GuidedDRSformer(**dict(GUIDED_TINY, reffusion_n_blocks=(1, 1, 1)))
    with pytest.raises(ValueError, match="nf must equal the backbone width 8"):
        GuidedDRSformer(**dict(GUIDED_TINY, nf=16))
    with pytest.raises(ValueError, match="reference_mode must be one of"):
        GuidedDRSformer200LSPA(**dict(GUIDED_TINY, reference_mode="MASA"))
    with pytest.raises(ValueError, match=r"heads\[3\]=64 leaves 1 channel per head"):
        GuidedDRSformer(**dict(GUIDED_TINY, heads=(1, 2, 2, 64)))

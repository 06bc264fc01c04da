"""DRSformer and its Rain200L/SPA variant: official key layouts and parameter counts,
outputs equal to the official code's (a committed fixture), any input size (reflect
padding), gradients, determinism, the fusion hook, argument checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from keylists import REFERENCE_DIR, build_on_meta, model_keys, read_keys
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.drsformer import MEFC, DRSformer, DRSformer200LSPA

DRSFORMER_TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), ffn_expansion_factor=2.0)
VARIANTS = [DRSformer, DRSformer200LSPA]


def _photo(photo_rgb, h: int, w: int, batch: int = 1) -> torch.Tensor:
    x = torch.from_numpy(photo_rgb[60 : 60 + h, 200 : 200 + w]).permute(2, 0, 1)[None]  # (1, 3, h, w)
    return x.repeat(batch, 1, 1, 1).contiguous()


@pytest.mark.parametrize(
    "cls, name, total",
    [(DRSformer, "drsformer_default", 33_655_424), (DRSformer200LSPA, "drsformer200l_spa_default", 32_610_304)],
)
def test_official_key_layout_and_parameter_count(cls, name, total) -> None:
    expected, header_total = read_keys(name)
    model = build_on_meta(cls)
    assert model_keys(model) == expected
    assert header_total == total
    assert sum(p.numel() for p in model.parameters()) == total


@pytest.mark.parametrize(
    "cls, fixture", [(DRSformer, "drsformer_tiny"), (DRSformer200LSPA, "drsformer200l_spa_tiny")]
)
def test_outputs_equal_the_official_code(cls, fixture) -> None:
    """Official state_dict (perturbed weights) loads strictly and gives the official outputs."""
    with safe_open(REFERENCE_DIR / f"{fixture}_parity.safetensors", framework="pt") as f:
        kwargs = json.loads(f.metadata()["kwargs"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = cls(**kwargs).eval()
    prefix = "state_dict."
    model.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    shapes = set()
    with torch.no_grad():
        for i in range(2):
            x, expected = tensors[f"input.{i}"], tensors[f"output.{i}"]
            shapes.add(tuple(x.shape))
            assert (model(x) - expected).abs().max() < 1e-5
    assert len(shapes) == 2


def test_registered_names_and_mefc_placement() -> None:
    assert ARCH_REGISTRY.get("DRSformer") is DRSformer
    assert ARCH_REGISTRY.get("DRSformer200L_SPA") is DRSformer200LSPA
    full, light = DRSformer(**DRSFORMER_TINY), DRSformer200LSPA(**DRSFORMER_TINY)
    assert isinstance(full.encoder_level0, MEFC) and isinstance(full.refinement, MEFC)
    assert not any(k.startswith(("encoder_level0", "refinement")) for k in light.state_dict())


@pytest.mark.parametrize("cls", VARIANTS)
@pytest.mark.parametrize("size", [(37, 53), (8, 8), (3, 5)])
def test_forward_any_size(photo_rgb, cls, size) -> None:
    model = cls(**DRSFORMER_TINY).eval()
    x = _photo(photo_rgb, *size, batch=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - x).abs().max() > 1e-3


def test_padding_is_reflect_right_bottom(photo_rgb) -> None:
    model = DRSformer(**DRSFORMER_TINY).eval()
    x = _photo(photo_rgb, 37, 53)
    assert model.pad_multiple == 8
    with torch.no_grad():
        y = model(x)
        ref = model._forward_padded(F.pad(x, (0, 3, 0, 3), mode="reflect"))[:, :, :37, :53]
    torch.testing.assert_close(y, ref, atol=0, rtol=0)


@pytest.mark.parametrize("cls", VARIANTS)
def test_every_parameter_gets_a_gradient(photo_rgb, cls) -> None:
    torch.manual_seed(0)
    model = cls(**DRSFORMER_TINY, bias=True)
    model(_photo(photo_rgb, 16, 24)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_deterministic(photo_rgb) -> None:
    torch.manual_seed(5)
    a = DRSformer(**DRSFORMER_TINY).eval()
    torch.manual_seed(5)
    b = DRSformer(**DRSFORMER_TINY).eval()
    x = _photo(photo_rgb, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


@pytest.mark.parametrize("cls", VARIANTS)
def test_fuse_hook_levels(photo_rgb, cls) -> None:
    """Level 0 sees the feature entering encoder_level1: after MEFC in the full model."""
    model = cls(**DRSFORMER_TINY).eval()
    x = model._pad(_photo(photo_rgb, 37, 53))  # (1, 3, 40, 56)
    seen = []

    def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
        seen.append((level, feat))
        return feat

    with torch.no_grad():
        torch.testing.assert_close(model._forward_padded(x, fuse), model._forward_padded(x), atol=0, rtol=0)
        level0 = model.encoder_level0(model.patch_embed(x))
    assert [(lv, tuple(f.shape)) for lv, f in seen] == [
        (0, (1, 8, 40, 56)), (1, (1, 16, 20, 28)), (2, (1, 32, 10, 14)), (3, (1, 64, 5, 7))
    ]
    torch.testing.assert_close(seen[0][1], level0, atol=0, rtol=0)


def test_wrong_channel_count_names_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 16, 16\)"):
        DRSformer(**DRSFORMER_TINY)(torch.zeros(2, 1, 16, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"heads": (1, 1, 3, 2)}, r"heads\[2\]=3 must divide the width 32"),
        ({"heads": (8, 2, 2, 4)}, r"heads\[0\]=8 leaves 1 channel per head .* TKSA needs at least 2"),
        ({"num_blocks": (1, 1, 1)}, r"num_blocks must have 4 entries, got \(1, 1, 1\)"),
        ({"LayerNorm_type": "withbias"}, "LayerNorm_type must be one of .* got 'withbias'"),
        ({"dim": 0}, "dim must be a positive int, got 0"),
        ({"inp_channels": 6}, "inp_channels=6, out_channels=3"),
        ({"ffn_expansion_factor": 0.0}, "ffn_expansion_factor must be > 0"),
    ],
)
@pytest.mark.parametrize("cls", VARIANTS)
def test_bad_arguments_raise_value_error(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**{**DRSFORMER_TINY, **kwargs})

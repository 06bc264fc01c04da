"""DSRIR: official key layout and parameter count (the paper's 3.52 M), parity with the
official forward (fixture), any input size (reflect padding), every stage output,
gradients, determinism, the fusion hook on SN1, argument and input checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from keylists import REFERENCE_DIR, build_on_meta, model_keys, read_keys
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.dsrir import DSRIR

# small widths and one block per stack (the registry smoke test's entry)
DSRIR_TINY = dict(
    sn1_feats=4, sn2_feats=6, sn3_feats=6, feats_step1=2, feats_step2=2, reduction=2,
    sn1_pab=(1, 1, 1), sn2_pab=(1, 1), sn3_pab=1, sn3_pa=((8, 8),),
)
# the official code's last USAU computes a feature branch it then discards
UNUSED_OFFICIAL = ("usau_3.conv2.", "usau_3.att_map.")


def _photo(photo_rgb, h: int, w: int, batch: int = 1) -> torch.Tensor:
    x = torch.from_numpy(photo_rgb[60 : 60 + h, 200 : 200 + w]).permute(2, 0, 1)[None]  # (1, 3, h, w)
    return x.repeat(batch, 1, 1, 1).contiguous()


def test_official_key_layout_and_parameter_count() -> None:
    expected, total = read_keys("dsrir_default")
    model = build_on_meta(DSRIR)
    assert model_keys(model) == expected
    assert total == 3_516_837  # the paper's 3.52 M
    assert sum(p.numel() for p in model.parameters()) == 3_516_837
    assert model.pad_multiple == 8


def test_parity_with_official_forward() -> None:
    with safe_open(REFERENCE_DIR / "dsrir_tiny_parity.safetensors", "pt") as f:
        kwargs = json.loads(f.metadata()["kwargs"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = DSRIR(**kwargs).eval()
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    model.load_state_dict(state, strict=True)
    assert tensors["input.0"].shape[-2:] != tensors["input.1"].shape[-2:]  # two input shapes
    for i in range(2):
        x = tensors[f"input.{i}"]
        with torch.no_grad():
            out = model.forward_stages(x)
            final = model(x)
        for s in range(3):
            assert (out.images[s] - tensors[f"images.{i}.{s}"]).abs().max() < 1e-5
            assert (out.variances[s] - tensors[f"variances.{i}.{s}"]).abs().max() < 1e-5
        torch.testing.assert_close(final, out.images[0], atol=0, rtol=0)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (3, 5)])
def test_forward_any_size(photo_rgb, size) -> None:
    model = ARCH_REGISTRY.build({"type": "DSRIR", **DSRIR_TINY}).eval()
    x = _photo(photo_rgb, *size, batch=2)
    with torch.no_grad():
        y = model(x)
        stages = model.forward_stages(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - x).abs().max() > 1e-3
    assert [t.shape for t in stages.images + stages.variances] == [x.shape] * 6
    torch.testing.assert_close(stages.images[0], y, atol=0, rtol=0)


def test_padding_is_reflect_right_bottom(photo_rgb) -> None:
    model = DSRIR(**DSRIR_TINY).eval()
    x = _photo(photo_rgb, 37, 53)
    with torch.no_grad():
        y = model(x)
        ref = model._forward_padded(F.pad(x, (0, 3, 0, 3), mode="reflect"))[:, :, :37, :53]
    torch.testing.assert_close(y, ref, atol=0, rtol=0)


def test_pad_multiple_follows_the_patch_grids() -> None:
    assert DSRIR(**dict(DSRIR_TINY, sn1_pa=((8, 8), (4, 4), (4, 2)))).pad_multiple == 16
    assert DSRIR(**dict(DSRIR_TINY, sn1_pa=((1, 1),) * 3, sn2_pa=((1, 1),) * 2, sn3_pa=((1, 1),))).pad_multiple == 4


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    torch.manual_seed(0)
    model = DSRIR(**dict(DSRIR_TINY, reduction=1), bias=True)  # wider squeeze branches: no dead ReLU
    stages = model.forward_stages(_photo(photo_rgb, 16, 24))
    sum(t.square().mean() for t in stages.images + stages.variances).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing and all(n.startswith(UNUSED_OFFICIAL) for n in missing)


def test_deterministic(photo_rgb) -> None:
    torch.manual_seed(5)
    a = DSRIR(**DSRIR_TINY).eval()
    torch.manual_seed(5)
    b = DSRIR(**DSRIR_TINY).eval()
    x = _photo(photo_rgb, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_fuse_hook_sees_the_three_levels_of_sn1(photo_rgb) -> None:
    model = DSRIR(**DSRIR_TINY).eval()
    x = model._pad(_photo(photo_rgb, 37, 53))  # (1, 3, 40, 56)
    seen = []

    def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
        seen.append((level, tuple(feat.shape)))
        return feat

    with torch.no_grad():
        torch.testing.assert_close(model._forward_padded(x, fuse), model._forward_padded(x), atol=0, rtol=0)
    assert seen == [(0, (1, 4, 40, 56)), (1, (1, 6, 20, 28)), (2, (1, 8, 10, 14))]
    assert model.sn1_widths == (4, 6, 8)


def test_bad_inputs_raise_value_error() -> None:
    model = DSRIR(**DSRIR_TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 16, 16\)"):
        model(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="pad_multiple=8, got 12x16"):
        model._forward_padded(torch.zeros(1, 3, 12, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"out_c": 1}, "out_c must equal in_c; got in_c=3, out_c=1"),
        ({"sn2_feats": 0}, "sn2_feats must be an int >= 1, got 0"),
        ({"reduction": 5}, "reduction=5 must not exceed the narrowest width 4"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"sn1_pab": (1, 1)}, r"sn1_pab must have 3 entries, got \(1, 1\)"),
        ({"sn3_pab": 2}, "sn3_pa must give 2 .* pairs"),
        ({"sn2_pa": ((4, 4), (2, 0))}, "sn2_pa entries must be >= 1"),
        ({"feats_step1": -1}, "feats_step1 must be an int >= 0, got -1"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        DSRIR(**{**DSRIR_TINY, **kwargs})

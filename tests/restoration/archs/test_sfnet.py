"""SFNet (dehazing): official key layout and parameter count, parity with the official code
(tiny fixture, both phases of ``mode``, three output scales), any input size (reflect
padding), the test-time local pool, gradients, determinism, the fusion hook, argument checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from keylists import REFERENCE_DIR, build_on_meta, model_keys, read_keys
from textualdeg.restoration.archs.sfnet import RelativeLocalAvgPool2d, SFNet
from textualdeg.restoration.archs.tlc import LocalAvgPool2d

SFNET_TINY = dict(mode=("train", "Indoor"), num_res=1, base_channel=16)
PARITY_FIXTURE = REFERENCE_DIR / "sfnet_tiny_parity.safetensors"


def _photo(photo_rgb, h: int, w: int, batch: int = 1) -> torch.Tensor:
    x = torch.from_numpy(photo_rgb[60 : 60 + h, 200 : 200 + w]).permute(2, 0, 1)[None]  # (1, 3, h, w)
    return x.repeat(batch, 1, 1, 1).contiguous()


def _load_parity_fixture() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """(official state_dict, fixture tensors, metadata); see the ``weights`` metadata entry."""
    tensors = load_file(PARITY_FIXTURE)
    with safe_open(PARITY_FIXTURE, framework="pt") as f:
        meta = f.metadata()
    packed = tensors["codes"]
    codes = torch.stack([packed & 15, packed >> 4], dim=1).flatten().float() - 8  # low nibble first
    state, offset, n_float, n_int = {}, 0, 0, 0
    for key, shape, kind in json.loads(meta["layout"]):
        if kind == "int":
            state[key] = tensors["int_buffers"][n_int].reshape(shape)
            n_int += 1
        else:
            n = math.prod(shape)
            state[key] = (codes[offset : offset + n] * tensors["scales"][n_float]).reshape(shape)
            offset += n
            n_float += 1
    return state, tensors, meta


def test_official_key_layout_and_parameter_count() -> None:
    expected, total = read_keys("sfnet_dehazing")
    assert total == 13_271_209  # the SFNet paper's dehazing model: 13.27M
    for mode in (["train", "Indoor"], ["test", "Outdoor"]):
        model = build_on_meta(SFNet, mode=mode, num_res=16)
        assert model_keys(model) == expected
        assert sum(p.numel() for p in model.parameters()) == total


def test_parity_with_official_tiny_fixture() -> None:
    state, tensors, meta = _load_parity_fixture()
    kwargs = json.loads(meta["kwargs"])
    inputs = [tensors["input/0"], tensors["input/1"]]
    assert inputs[0].shape[-2:] != inputs[1].shape[-2:]
    for phase, scene in json.loads(meta["modes"]):
        model = SFNet(mode=[phase, scene], **kwargs).eval()
        model.load_state_dict(state, strict=True)
        for i, x in enumerate(inputs):
            with torch.no_grad():
                outs = model.forward_all_scales(x)
                full = model(x)
            for s, out in zip((4, 2, 1), outs):
                expected = tensors[f"output/{phase}_{scene}/{i}/x{s}"]
                assert out.shape == expected.shape
                assert (out - expected).abs().max() < 1e-5, (phase, scene, i, s)
            torch.testing.assert_close(full, outs[-1], atol=0, rtol=0)
    # the fixture tells the phases apart: local pooling changes the official output
    diff = tensors["output/test_Indoor/0/x1"] - tensors["output/train_Indoor/0/x1"]
    assert diff.abs().max() > 1e-4


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (3, 5)])
def test_forward_any_size(photo_rgb, size) -> None:
    model = SFNet(**SFNET_TINY).eval()
    x = _photo(photo_rgb, *size, batch=2)
    with torch.no_grad():
        y = model(x)
        scales = model.forward_all_scales(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    h, w = size
    assert [tuple(o.shape[-2:]) for o in scales] == [(-(-h // 4), -(-w // 4)), (-(-h // 2), -(-w // 2)), (h, w)]


def test_padding_is_reflect_right_bottom(photo_rgb) -> None:
    model = SFNet(**SFNET_TINY).eval()
    x = _photo(photo_rgb, 37, 53)
    assert model.pad_multiple == 8
    with torch.no_grad():
        y = model(x)
        ref = model._forward_padded(F.pad(x, (0, 3, 0, 3), mode="reflect"))[:, :, :37, :53]
    torch.testing.assert_close(y, ref, atol=0, rtol=0)


def test_test_phase_pools_locally() -> None:
    pool = RelativeLocalAvgPool2d(246)
    x = torch.rand(1, 2, 20, 33)
    torch.testing.assert_close(pool(x), LocalAvgPool2d((19, 31))(x), atol=0, rtol=0)  # 20 * 246 // 256 = 19
    model = SFNet(mode=["test", "Outdoor"], num_res=1, base_channel=16)
    pools = [m for m in model.modules() if isinstance(m, RelativeLocalAvgPool2d)]
    assert pools and {m.base_size for m in pools} == {210}
    assert not any(isinstance(m, RelativeLocalAvgPool2d) for m in SFNet(**SFNET_TINY).modules())


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    torch.manual_seed(0)
    model = SFNet(**SFNET_TINY)
    with torch.no_grad():  # the block scales start at zero; open them so every path carries gradient
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    # BatchNorm on per-image statistics needs a batch of 2 different images
    x = torch.cat([_photo(photo_rgb, 16, 24), _photo(photo_rgb, 16, 24).flip(-1) * 0.5])
    sum(out.square().mean() for out in model.forward_all_scales(x)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # dynamic_filter.lamb_l/lamb_h are in the official checkpoints but unused by its forward
    assert missing and all(n.endswith((".lamb_l", ".lamb_h")) and ".dyna" in n for n in missing)


def test_deterministic(photo_rgb) -> None:
    torch.manual_seed(5)
    a = SFNet(**SFNET_TINY).eval()
    torch.manual_seed(5)
    b = SFNet(**SFNET_TINY).eval()
    x = _photo(photo_rgb, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_fuse_hook_levels(photo_rgb) -> None:
    model = SFNet(**SFNET_TINY).eval()
    x = model._pad(_photo(photo_rgb, 37, 53))  # (1, 3, 40, 56)
    seen = []

    def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
        seen.append((level, tuple(feat.shape)))
        return feat

    with torch.no_grad():
        torch.testing.assert_close(model._forward_padded(x, fuse), model._forward_padded(x), atol=0, rtol=0)
    assert seen == [(0, (1, 16, 40, 56)), (1, (1, 32, 20, 28)), (2, (1, 64, 10, 14))]


def test_training_needs_a_batch_of_two(photo_rgb) -> None:
    with pytest.raises(ValueError, match="batch of at least 2"):
        SFNet(**SFNET_TINY).train()(_photo(photo_rgb, 16, 16))


def test_wrong_channel_count_names_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 16, 16\)"):
        SFNet(**SFNET_TINY)(torch.zeros(2, 1, 16, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "train"}, r"mode must be a list \[phase, scene\].*got the string 'train'; pass a list"),
        ({"mode": ["train"]}, r"mode must be a list \[phase, scene\]"),
        ({"mode": ["eval", "Indoor"]}, r"mode\[0\] \(phase\) must be one of .* got 'eval'"),
        ({"mode": ["test", "GOPRO"]}, r"mode\[1\] \(scene\) must be one of .* got 'GOPRO'"),
        ({"num_res": 0}, "num_res must be an int >= 1, got 0"),
        ({"base_channel": 24}, "base_channel must be a positive multiple of 16 .* got 24"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SFNet(**{**SFNET_TINY, **kwargs})

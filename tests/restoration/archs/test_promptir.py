"""PromptIR: official key layout (with its six dead tensors) and parameter count, the
prompt block against the official formula, any input size, gradients, argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from keylists import build_on_meta, model_keys, read_keys
from textualdeg.restoration.archs import PromptIR
from textualdeg.restoration.archs.promptir import PromptGenBlock
from tiny_configs import PROMPTIR_TINY

DEAD = {
    "chnl_reduce1.weight",
    "chnl_reduce2.weight",
    "chnl_reduce3.weight",
    "reduce_noise_channel_1.weight",
    "reduce_noise_channel_2.weight",
    "reduce_noise_channel_3.weight",
}


def _photo(photo_rgb, h: int, w: int, batch: int = 1) -> torch.Tensor:
    x = torch.from_numpy(photo_rgb[250 : 250 + h, 100 : 100 + w]).permute(2, 0, 1)[None]  # (1, 3, h, w)
    return x.repeat(batch, 1, 1, 1).contiguous()


def test_official_key_layout_and_parameter_count() -> None:
    expected, total = read_keys("promptir_default")
    model = build_on_meta(PromptIR)  # decoder=True by default
    assert model_keys(model) == expected
    assert total == 35_592_263  # the count in the keys.tsv header
    assert sum(p.numel() for p in model.parameters()) == 35_592_263
    assert DEAD <= set(model.state_dict())


def test_prompt_block_matches_official_formula() -> None:
    torch.manual_seed(0)
    block = PromptGenBlock(prompt_dim=6, prompt_len=4, prompt_size=5, lin_dim=10)
    x = torch.randn(3, 10, 7, 9)
    # Official: weights (B, L, 1, 1, 1) * prompt_param repeated over B, summed over L.
    weights = F.softmax(block.linear_layer(x.mean(dim=(-2, -1))), dim=1)
    prompt = (weights[:, :, None, None, None] * block.prompt_param.repeat(3, 1, 1, 1, 1)).sum(1)
    expected = block.conv3x3(F.interpolate(prompt, (7, 9), mode="bilinear"))
    torch.testing.assert_close(block(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("size", [(37, 53), (16, 8)])
def test_forward_any_size(photo_rgb, size) -> None:
    model = PromptIR(**PROMPTIR_TINY).eval()
    x = _photo(photo_rgb, *size, batch=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - x).abs().max() > 1e-3
    assert model.pad_multiple == 8


def test_only_the_dead_tensors_get_no_gradient(photo_rgb) -> None:
    model = PromptIR(**PROMPTIR_TINY)
    model(_photo(photo_rgb, 16, 24)).square().mean().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad == DEAD
    zero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert zero == []


def test_deterministic(photo_rgb) -> None:
    torch.manual_seed(7)
    a = PromptIR(**PROMPTIR_TINY).eval()
    torch.manual_seed(7)
    b = PromptIR(**PROMPTIR_TINY).eval()
    x = _photo(photo_rgb, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_decoder_false_builds_a_working_prompt_free_model(photo_rgb) -> None:
    model = PromptIR(**PROMPTIR_TINY, decoder=False).eval()
    assert not any(k.startswith(("prompt", "noise_level", "reduce_noise_level")) for k in model.state_dict())
    x = _photo(photo_rgb, 20, 20)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_fuse_hook_levels(photo_rgb) -> None:
    model = PromptIR(**PROMPTIR_TINY).eval()
    x = model._pad(_photo(photo_rgb, 16, 24))
    seen = []

    def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
        seen.append((level, tuple(feat.shape)))
        return feat

    with torch.no_grad():
        model._forward_padded(x, fuse)
    assert seen == [(0, (1, 8, 16, 24)), (1, (1, 16, 8, 12)), (2, (1, 32, 4, 6)), (3, (1, 64, 2, 3))]


def test_wrong_channel_count_names_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(1, 6, 16, 16\)"):
        PromptIR(**PROMPTIR_TINY)(torch.zeros(1, 6, 16, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt_dims": (8, 8, 15)}, "heads\\[2\\]=2 must divide every prompt-fusion width"),
        ({"prompt_sizes": (8, 4)}, r"prompt_sizes must have 3 entries, got \(8, 4\)"),
        ({"prompt_len": 0}, "prompt_len must be a positive int, got 0"),
        ({"heads": (1, 3, 2, 2)}, r"heads\[1\]=3 must divide"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PromptIR(**{**PROMPTIR_TINY, **kwargs})

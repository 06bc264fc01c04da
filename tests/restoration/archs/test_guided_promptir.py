"""GuidedPromptIR: official PromptIR keys plus the authors' masa_* layout, plain
checkpoints load with exactly the masa_* keys missing, identity at initialisation, any
sizes, gradients, determinism and input errors."""

from __future__ import annotations

import pytest
import torch

from guided_layouts import authors_masa_layout
from keylists import build_on_meta, model_keys, read_keys
from textualdeg.restoration.archs import GuidedPromptIR, PromptIR
from tiny_configs import GUIDED_PROMPTIR_TINY, PROMPTIR_TINY

# tensors the official PromptIR forward never uses (see the promptir.py module docstring)
DEAD = ("chnl_reduce1", "chnl_reduce2", "chnl_reduce3", "reduce_noise_channel_1", "reduce_noise_channel_2",
        "reduce_noise_channel_3")


def _photo(photo_rgb, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo_rgb[top : top + h, left : left + w]).permute(2, 0, 1)[None].contiguous()


def _open_gates(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.7)
    return model


def test_key_layout_is_official_promptir_plus_authors_masa() -> None:
    model = build_on_meta(GuidedPromptIR, nf=48, reffusion_n_blocks=[2, 2, 2, 2], reffusion_n_blocks_middle=1)
    keys = model_keys(model)
    backbone, _ = read_keys("promptir_default")
    assert [kv for kv in keys if not kv[0].startswith("masa_")] == backbone
    assert {k: s for k, s in keys if k.startswith("masa_")} == authors_masa_layout()
    assert model.decoder and model.pad_multiple == 64


def test_plain_checkpoint_loads_and_fresh_fusion_is_identity(photo_rgb) -> None:
    torch.manual_seed(0)
    plain = PromptIR(**PROMPTIR_TINY).eval()
    guided = GuidedPromptIR(**GUIDED_PROMPTIR_TINY).eval()
    result = guided.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {k for k in guided.state_dict() if k.startswith("masa_")}
    x, ref = _photo(photo_rgb, 100, 150, 32, 64), _photo(photo_rgb, 0, 0, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, ref), plain(x), atol=0, rtol=0)


def test_non_square_input_square_reference_and_gradients(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedPromptIR(**GUIDED_PROMPTIR_TINY))
    x = _photo(photo_rgb, 100, 150, 37, 53)
    y = model(x, _photo(photo_rgb, 10, 20, 64, 64))
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad and all(n.startswith(DEAD) for n in no_grad)


def test_reference_matters_and_deterministic(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedPromptIR(**GUIDED_PROMPTIR_TINY)).eval()
    x = _photo(photo_rgb, 100, 150, 24, 40)
    with torch.no_grad():
        a = model(x, _photo(photo_rgb, 10, 20, 32, 32))
        b = model(x, _photo(photo_rgb, 250, 300, 32, 32))
        torch.testing.assert_close(model(x, _photo(photo_rgb, 10, 20, 32, 32)), a, atol=0, rtol=0)
    assert (a - b).abs().max() > 1e-5


def test_bad_channels_name_both_shapes() -> None:
    model = GuidedPromptIR(**GUIDED_PROMPTIR_TINY)
    with pytest.raises(ValueError, match=r"x \(1, 3, 16, 16\) and ref \(1, 1, 16, 16\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))

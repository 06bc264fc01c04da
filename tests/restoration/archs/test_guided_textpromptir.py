"""GuidedTextPromptIR: TextPromptIR's keys plus masa_*, a plain TextPromptIR checkpoint loads
with exactly the masa_* keys missing, identity at initialisation, both reference modes, both
inputs matter, and the inference wrapper and tiled path pass guidance and instruction."""

from __future__ import annotations

import pytest
import torch

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs import GuidedTextPromptIR, TextPromptIR
from textualdeg.restoration.inference import restore_tensor
from textualdeg.restoration.network import InstructedNetwork, is_guided, takes_instruction
from tiny_configs import GUIDED_TEXTPROMPTIR_TINY, TEXTPROMPTIR_TINY


def _photo(photo_rgb, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo_rgb[top : top + h, left : left + w]).permute(2, 0, 1)[None].contiguous()


def _open_gates(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.7)
    return model


def test_registered_guided_and_instructed() -> None:
    model = ARCH_REGISTRY.build({"type": "GuidedTextPromptIR", **GUIDED_TEXTPROMPTIR_TINY})
    assert isinstance(model, GuidedTextPromptIR) and is_guided(model) and takes_instruction(model)
    assert model.pad_multiple == 32 and model.text_dim == 16


@pytest.mark.parametrize("keep_dead_weights", [False, True])
def test_plain_checkpoint_loads_and_fresh_fusion_is_identity(photo_rgb, keep_dead_weights: bool) -> None:
    torch.manual_seed(0)
    plain = TextPromptIR(**dict(TEXTPROMPTIR_TINY, keep_dead_weights=keep_dead_weights)).eval()
    guided = GuidedTextPromptIR(**dict(GUIDED_TEXTPROMPTIR_TINY, keep_dead_weights=keep_dead_weights)).eval()
    assert [k for k in guided.state_dict() if not k.startswith("masa_")] == list(plain.state_dict())
    result = guided.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {k for k in guided.state_dict() if k.startswith("masa_")}
    with pytest.raises(RuntimeError, match="masa_"):
        guided.load_state_dict(plain.state_dict(), strict=True)
    x, ref = _photo(photo_rgb, 100, 150, 32, 64), _photo(photo_rgb, 0, 0, 48, 48)
    text = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(guided(x, ref, text), plain(x, text), atol=0, rtol=0)
        torch.testing.assert_close(guided(x, ref, text_embedding=text), plain(x, text), atol=0, rtol=0)
    # and its own checkpoint loads strictly
    again = GuidedTextPromptIR(**dict(GUIDED_TEXTPROMPTIR_TINY, keep_dead_weights=keep_dead_weights))
    again.load_state_dict(guided.state_dict(), strict=True)


@pytest.mark.parametrize("mode", ["masa", "refined"])
def test_both_reference_modes_any_sizes_and_gradients(photo_rgb, mode: str) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedTextPromptIR(**GUIDED_TEXTPROMPTIR_TINY, reference_mode=mode))
    x = torch.cat([_photo(photo_rgb, 100, 150, 37, 53)] * 2)
    ref = torch.cat([_photo(photo_rgb, 10, 20, 64, 64)] * 2)
    y = model(x, ref, torch.randn(2, 16))
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    if mode == "refined":
        out, loss = model(x, ref, torch.randn(2, 16), clean=x, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and loss.ndim == 0 and torch.isfinite(loss)


def test_guidance_and_instruction_both_matter(photo_rgb) -> None:
    torch.manual_seed(0)
    model = _open_gates(GuidedTextPromptIR(**GUIDED_TEXTPROMPTIR_TINY)).eval()
    x = _photo(photo_rgb, 100, 150, 24, 40)
    ref_a, ref_b = _photo(photo_rgb, 10, 20, 32, 32), _photo(photo_rgb, 250, 300, 32, 32)
    t_a, t_b = torch.randn(1, 16), torch.randn(1, 16)
    with torch.no_grad():
        a = model(x, ref_a, t_a)
        torch.testing.assert_close(model(x, ref_a, t_a), a, atol=0, rtol=0)
        assert (model(x, ref_b, t_a) - a).abs().max() > 1e-5
        assert (model(x, ref_a, t_b) - a).abs().max() > 1e-5
        # one embedding shared by the batch
        assert model(torch.cat([x, x]), torch.cat([ref_a, ref_a]), t_a[0]).shape == (2, 3, 24, 40)


def test_instructed_wrapper_passes_guidance_and_instruction(photo_rgb) -> None:
    """What validation, evaluation and ``textualdeg restore`` run: ``InstructedNetwork(model, e)(x, ref)``
    through ``restore_tensor``, tiled and self-ensembled too."""
    torch.manual_seed(0)
    model = _open_gates(GuidedTextPromptIR(**GUIDED_TEXTPROMPTIR_TINY)).eval()
    embedding = torch.randn(16)
    net = InstructedNetwork(model, embedding)
    assert is_guided(net) and net.pad_multiple == model.pad_multiple
    x, ref = _photo(photo_rgb, 100, 150, 32, 96), _photo(photo_rgb, 10, 20, 48, 48)  # x: a multiple of 32
    with torch.no_grad():
        expected = model(x, ref, text_embedding=embedding[None])
        torch.testing.assert_close(restore_tensor(net, x, ref=ref), expected, atol=0, rtol=0)
        tiled = restore_tensor(net, x, ref=ref, tile=64, tile_overlap=8)
        ensembled = restore_tensor(net, x, ref=ref, self_ensemble=True)
    assert tiled.shape == ensembled.shape == x.shape
    assert torch.isfinite(tiled).all() and torch.isfinite(ensembled).all()


def test_bad_inputs_are_named() -> None:
    model = GuidedTextPromptIR(**GUIDED_TEXTPROMPTIR_TINY)
    with pytest.raises(ValueError, match=r"x \(1, 3, 16, 16\) and ref \(1, 1, 16, 16\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16), torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"text_embedding must have shape \(1, 16\); got \(1, 15\)"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), torch.zeros(1, 15))
    with pytest.raises(ValueError, match="single output"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), torch.zeros(1, 16), stages=True)
    with pytest.raises(ValueError, match="nf must equal"):
        GuidedTextPromptIR(**dict(GUIDED_TEXTPROMPTIR_TINY, nf=4))

"""DA-CLIP conditioning (restoration/archs/daclip_conditioning.py, daclip_archs.py): the eight
conditioned archs start as their backbone, react to the embeddings once trained, train, load
backbone checkpoints with ``strict=False`` and reject missing or misshapen embeddings."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.daclip_conditioning import DAClipBlock, DAClipConditionMixin
from tiny_configs import TINY_CONFIGS

# conditioned arch -> the backbone it conditions
BACKBONES = {
    "DAClipNAFNet": "NAFNet",
    "DAClipRestormer": "Restormer",
    "DAClipPromptIR": "PromptIR",
    "DAClipTextPromptIR": "TextPromptIR",
    "DAClipGuidedNAFNet": "GuidedNAFNet",
    "DAClipGuidedRestormer": "GuidedRestormer",
    "DAClipGuidedPromptIR": "GuidedPromptIR",
    "DAClipGuidedTextPromptIR": "GuidedTextPromptIR",
}
NAMES = list(BACKBONES)
DACLIP_KEYS = ("daclip_dim", "daclip_tokens", "daclip_heads")


def _perturb(params, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(conditioned model, its backbone with perturbed weights loaded into the conditioned one)."""
    config = TINY_CONFIGS[name]
    torch.manual_seed(0)
    base = ARCH_REGISTRY.build({"type": BACKBONES[name], **{k: v for k, v in config.items() if k not in DACLIP_KEYS}})
    _perturb(base.parameters(), 0.05, seed=1)  # NAFNet's and the fusions' zero gates act
    torch.manual_seed(1)  # other backbone weights than base's until loaded
    model = ARCH_REGISTRY.build({"type": name, **config})
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("daclip_") for k in result.missing_keys), result.missing_keys
    assert {k for k in model.state_dict() if k.startswith("daclip_")} == set(result.missing_keys)
    return model.eval(), base.eval()


def _inputs(model: nn.Module, batch: int = 2, seed: int = 2) -> tuple[torch.Tensor, ...]:
    """(x, [ref], [text_embedding]) as the arch's forward names them; odd-sized x."""
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.rand(batch, 3, 21, 27, generator=g)]
    parameters = inspect.signature(model.forward).parameters
    if "ref" in parameters:
        inputs.append(torch.rand(batch, 3, 64, 64, generator=g))
    if "text_embedding" in parameters:
        inputs.append(torch.randn(batch, model.text_dim, generator=g))
    return tuple(inputs)


def _embedding(model: nn.Module, batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 2, model.daclip_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_daclip_attributes(name: str) -> None:
    model = ARCH_REGISTRY.build({"type": name, **TINY_CONFIGS[name]})
    assert isinstance(model, DAClipConditionMixin) and isinstance(model, ARCH_REGISTRY.get(BACKBONES[name]))
    assert type(model).takes_daclip is True and model.daclip_dim == 16
    base = ARCH_REGISTRY.get(BACKBONES[name])
    for attr in ("pad_multiple", "input_channels", "image_channels", "ref_channels", "text_dim"):
        assert hasattr(model, attr) == hasattr(base(**{k: v for k, v in TINY_CONFIGS[name].items()
                                                      if k not in DACLIP_KEYS}), attr), attr
    # one block per fused level: every encoder level's input and the bottleneck
    levels = model.num_levels + 1 if hasattr(model, "num_levels") else 4
    assert len(model.daclip_blocks) == levels
    assert all(n.startswith("daclip_") for n, _ in model.named_parameters() if "daclip" in n)


@pytest.mark.parametrize("name", NAMES)
def test_fresh_model_equals_its_backbone(name: str) -> None:
    model, base = _pair(name)
    inputs = _inputs(model)
    with torch.no_grad():
        out = model(*inputs, daclip=_embedding(model))
        expected = base(*inputs)
    assert out.shape == inputs[0].shape
    assert (out - expected).abs().max().item() == 0.0  # the blocks start as exact identities


@pytest.mark.parametrize("name", NAMES)
def test_trained_blocks_read_the_embedding_and_get_gradients(name: str) -> None:
    model, base = _pair(name)
    daclip_params = [p for n, p in model.named_parameters() if n.startswith("daclip_")]
    _perturb(daclip_params, 0.2, seed=4)
    inputs = _inputs(model)
    e1, e2 = _embedding(model, seed=3), _embedding(model, seed=5)
    with torch.no_grad():
        expected = base(*inputs)
        out1 = model(*inputs, daclip=e1)
        out2 = model(*inputs, daclip=e2)
        content_only = model(*inputs, daclip=torch.stack([e2[:, 0], e1[:, 1]], 1))
        degradation_only = model(*inputs, daclip=torch.stack([e1[:, 0], e2[:, 1]], 1))
    assert (out1 - expected).abs().max() > 1e-4
    assert (out1 - out2).abs().max() > 1e-4
    assert (out1 - content_only).abs().max() > 1e-5  # the content embedding is read
    assert (out1 - degradation_only).abs().max() > 1e-5  # and the degradation embedding
    model.train()
    model(*inputs, daclip=e1).square().mean().backward()
    names = [n for n, _ in model.named_parameters() if n.startswith("daclip_")]
    no_grad = [n for n, p in zip(names, daclip_params) if p.grad is None or not p.grad.abs().max() > 0]
    assert not no_grad, no_grad


def test_one_context_token_makes_attention_a_per_image_constant() -> None:
    """Why several tokens: with one, softmax over one key is 1 and every pixel gets the same value."""
    torch.manual_seed(0)
    block = DAClipBlock(8, 16, tokens=1, heads=2)
    _perturb(block.parameters(), 0.3, seed=1)
    nn.init.zeros_(block.modulation.weight), nn.init.zeros_(block.modulation.bias)
    x, content, degradation = torch.randn(2, 8, 5, 6), torch.randn(2, 16), torch.randn(2, 16)
    added = block(x, content, degradation) - x
    torch.testing.assert_close(added, added[:, :, :1, :1].expand_as(added), rtol=0, atol=1e-6)
    several = DAClipBlock(8, 16, tokens=4, heads=2)
    _perturb(several.parameters(), 0.3, seed=1)
    added = several(x, content, degradation) - x
    assert (added - added[:, :, :1, :1]).abs().max() > 1e-3


def test_block_starts_as_identity_and_checks_heads() -> None:
    block = DAClipBlock(8, 16, tokens=4, heads=2)
    x = torch.randn(2, 8, 5, 6)
    assert torch.equal(block(x, torch.randn(2, 16), torch.randn(2, 16)), x)
    with pytest.raises(ValueError, match="daclip_heads=3 must divide the conditioned width 8"):
        DAClipBlock(8, 16, tokens=4, heads=3)
    with pytest.raises(ValueError, match=r"daclip_heads=3 must divide every conditioned width"):
        ARCH_REGISTRY.build({"type": "DAClipNAFNet", **dict(TINY_CONFIGS["DAClipNAFNet"], daclip_heads=3)})
    with pytest.raises(ValueError, match="daclip_tokens must be a positive int, got 0"):
        ARCH_REGISTRY.build({"type": "DAClipRestormer", **dict(TINY_CONFIGS["DAClipRestormer"], daclip_tokens=0)})


@pytest.mark.parametrize("name", NAMES)
def test_missing_or_misshapen_embedding_raises(name: str) -> None:
    model = ARCH_REGISTRY.build({"type": name, **TINY_CONFIGS[name]})
    inputs = _inputs(model)
    with pytest.raises(ValueError, match=rf"{name} needs the DA-CLIP embedding \(path\.daclip\).*\(2, 2, 16\)"):
        model(*inputs)
    for bad in (torch.zeros(2, 2, 15), torch.zeros(3, 2, 16), torch.zeros(2, 16), torch.zeros(2, 3, 16)):
        expected = re.escape("daclip must have shape (2, 2, 16)") + ".*" + re.escape(f"got {tuple(bad.shape)}")
        with pytest.raises(ValueError, match=expected):
            model(*inputs, daclip=bad)
    with pytest.raises(ValueError, match="daclip must be a tensor"):
        model(*inputs, daclip=[[0.0] * 16] * 2)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoints_load(name: str) -> None:
    """Backbone keys unchanged and first; a conditioned checkpoint loads strictly into itself."""
    model, base = _pair(name)
    keys = list(model.state_dict())
    assert keys[: len(base.state_dict())] == list(base.state_dict())
    assert all(k.startswith("daclip_blocks.") for k in keys[len(base.state_dict()):])
    torch.manual_seed(7)
    other = ARCH_REGISTRY.build({"type": name, **TINY_CONFIGS[name]}).eval()
    other.load_state_dict(model.state_dict(), strict=True)
    inputs, e = _inputs(model), _embedding(model)
    with torch.no_grad():
        assert torch.equal(other(*inputs, daclip=e), model(*inputs, daclip=e))


@pytest.mark.parametrize("name", NAMES)
def test_stages_as_the_backbone(name: str) -> None:
    """None of the four backbones has several outputs: ``stages=True`` raises as theirs does."""
    model, base = _pair(name)
    inputs = _inputs(model)
    with pytest.raises(ValueError, match="has a single output") as theirs:
        base(*inputs, stages=True)
    with pytest.raises(ValueError, match="has a single output") as ours:
        model(*inputs, stages=True, daclip=_embedding(model))
    assert str(ours.value).replace("DAClip", "") == str(theirs.value)


def test_calling_conventions() -> None:
    """Plain, instruction, guided (with clean/generator), guided + instruction by keyword."""
    model, _ = _pair("DAClipGuidedTextPromptIR")
    x, ref, text = _inputs(model)
    e = _embedding(model)
    with torch.no_grad():
        by_position = model(x, ref, text, daclip=e)
        by_keyword = model(x, ref, text_embedding=text, daclip=e)
    assert torch.equal(by_position, by_keyword)
    text_model, _ = _pair("DAClipTextPromptIR")
    with torch.no_grad():
        assert text_model(x, text, daclip=e).shape == x.shape
        assert text_model(x, text[0], daclip=e).shape == x.shape  # one instruction for the batch
    with pytest.raises(ValueError, match=r"text_embedding must have shape \(2, 16\)"):
        text_model(x, text[:1], daclip=e)


@pytest.mark.parametrize("name", ["DAClipGuidedNAFNet", "DAClipGuidedTextPromptIR"])
def test_refined_guidance_with_correspondence_loss(name: str) -> None:
    """``clean=`` / ``generator=`` of the guided forward: output and loss as the guided backbone's."""
    config = dict(TINY_CONFIGS[name], reference_mode="refined", ref_scales=(0.667, 1.0))
    base_config = {k: v for k, v in config.items() if k not in DACLIP_KEYS}
    torch.manual_seed(0)
    base = ARCH_REGISTRY.build({"type": BACKBONES[name], **base_config})
    model = ARCH_REGISTRY.build({"type": name, **config})
    model.load_state_dict(base.state_dict(), strict=False)
    inputs = _inputs(model)
    clean = torch.rand(2, 3, 21, 27, generator=torch.Generator().manual_seed(8))
    out, loss = model(*inputs, clean=clean, generator=torch.Generator().manual_seed(9), daclip=_embedding(model))
    want_out, want_loss = base(*inputs, clean=clean, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out, want_out) and torch.equal(loss, want_loss)


def test_guidance_fusion_runs_before_daclip() -> None:
    model, _ = _pair("DAClipGuidedNAFNet")
    order: list[str] = []
    stacks = model._fusion_stacks()
    handles = [stack.register_forward_hook(lambda *_, level=i: order.append(f"masa{level}"))
               for i, stack in enumerate(stacks)]
    handles += [block.register_forward_hook(lambda *_, level=i: order.append(f"daclip{level}"))
                for i, block in enumerate(model.daclip_blocks)]
    with torch.no_grad():
        model(*_inputs(model), daclip=_embedding(model))
    for h in handles:
        h.remove()
    assert order == [f"{kind}{level}" for level in range(len(stacks)) for kind in ("masa", "daclip")]


def test_embedding_dtype_follows_the_input() -> None:
    model, _ = _pair("DAClipNAFNet")
    model = model.double()
    x = _inputs(model)[0].double()
    with torch.no_grad():
        assert model(x, daclip=_embedding(model)).dtype == torch.float64  # a float32 embedding is cast

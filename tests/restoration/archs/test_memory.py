"""Activation memory (restoration/archs/memory.py, norms.py): checkpointing changes no output
or gradient of any registered arch, only what is kept for backward; the layer norms keep
only their input and equal the plain formula."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.memory import (
    CHECKPOINT_MODES,
    CheckpointedSequential,
    SavedTensorMeter,
    active_checkpointing,
    apply_activation_checkpointing,
    memory_advice,
)
from textualdeg.restoration.archs.nafnet_blocks import NAFBlock
from textualdeg.restoration.archs.norms import BiasFreeLayerNorm2d, LayerNorm2d
from tiny_configs import NAFNET_TINY, RESTORMER_TINY, TINY_CONFIGS

# one registered name per class (aliases such as NAFNetRefFusion build the same class)
_ONE_NAME_PER_CLASS = sorted({ARCH_REGISTRY.get(n): n for n in reversed(ARCH_REGISTRY.keys())}.values())


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _build(name: str, **overrides) -> nn.Module:
    """A tiny model with every float parameter perturbed, so zero-initialised gates act."""
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build({"type": name, **TINY_CONFIGS[name], **overrides}).train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A batch of 2 (SFNet's BatchNorm), odd-sized; for guided archs a 64x64 reference, for
    instruction-prompted ones (``forward(x, text_embedding)``) two sentence embeddings, archs
    taking both (``forward(x, ref, text_embedding)``) both."""
    g = torch.Generator().manual_seed(2)
    inputs = [torch.rand(2, 3, 37, 53, generator=g)]
    parameters = inspect.signature(model.forward).parameters
    if "ref" in parameters:
        inputs.append(torch.rand(2, 3, 64, 64, generator=g))
    if "text_embedding" in parameters:
        inputs.append(torch.randn(2, model.text_dim, generator=g))
    return tuple(inputs)


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor of a (nested) output: stage tuples, (output, correspondence loss)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _tensors(item)]


def _step(model: nn.Module, inputs: tuple, **kwargs) -> tuple[list[torch.Tensor], int]:
    """Forward (every stage output where the arch has several) and backward.

    Returns:
        (outputs, bytes kept for backward after the forward).
    """
    if getattr(model, "takes_daclip", False):  # DA-CLIP-conditioned archs: the (B, 2, D) embeddings
        kwargs = {"daclip": torch.randn(2, 2, model.daclip_dim, generator=torch.Generator().manual_seed(6)), **kwargs}
    with SavedTensorMeter(model) as meter:
        try:
            outputs = _tensors(model(*inputs, stages=True, **kwargs))
        except ValueError:  # single-output arch
            outputs = _tensors(model(*inputs, **kwargs))
    kept = meter.kept_bytes()
    sum(o.square().mean() for o in outputs).backward()
    return outputs, kept


def _assert_same_step(plain: nn.Module, checkpointed: nn.Module, out_plain, out_ckpt) -> None:
    for a, b in zip(out_plain, out_ckpt, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-6, msg=name)
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):  # BatchNorm statistics
        torch.testing.assert_close(c, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("mode", ["level", "block"])
@pytest.mark.parametrize("name", _ONE_NAME_PER_CLASS)
def test_checkpointing_keeps_outputs_and_gradients(name: str, mode: str) -> None:
    model = _build(name)
    checkpointed = copy.deepcopy(model)
    apply_activation_checkpointing(checkpointed, mode)
    assert list(checkpointed.state_dict()) == list(model.state_dict())
    inputs = _inputs(model)
    out_plain, kept_plain = _step(model, inputs)
    out_ckpt, kept_ckpt = _step(checkpointed, inputs)
    _assert_same_step(model, checkpointed, out_plain, out_ckpt)
    assert kept_ckpt < 0.8 * kept_plain, (kept_ckpt, kept_plain)


@pytest.mark.parametrize("mode", ["level", "block"])
@pytest.mark.parametrize("name", ["GuidedNAFNet", "GuidedSFNet", "GuidedTextPromptIR"])
def test_refined_reference_path_with_correspondence_loss(name: str, mode: str) -> None:
    """reference_mode refined, three reference scales, ``clean=`` and ``generator=`` (the loss's
    random move); GuidedSFNet also through ``stages=True``."""
    model = _build(name, reference_mode="refined", ref_scales=(0.667, 1.0, 1.5))
    checkpointed = copy.deepcopy(model)
    apply_activation_checkpointing(checkpointed, mode)
    inputs = _inputs(model)
    clean = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    out_plain, _ = _step(model, inputs, clean=clean, generator=torch.Generator().manual_seed(4))
    out_ckpt, _ = _step(checkpointed, inputs, clean=clean, generator=torch.Generator().manual_seed(4))
    assert len(out_plain) == (4 if name == "GuidedSFNet" else 2)  # outputs and the correspondence loss
    _assert_same_step(model, checkpointed, out_plain, out_ckpt)


def test_batchnorm_statistics_are_updated_once_per_step() -> None:
    """SFNet's BatchNorm runs again when its block is recomputed; its statistics must not move twice."""
    model = _build("SFNet")
    apply_activation_checkpointing(model, "block")
    _step(model, _inputs(model))
    counts = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert counts == {1}


def test_dropout_draws_are_replayed_in_the_recomputation() -> None:
    torch.manual_seed(0)
    stage = CheckpointedSequential(NAFBlock(8, drop_out_rate=0.5), NAFBlock(8, drop_out_rate=0.5))
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(0.1 * torch.randn_like(p))
    checkpointed = copy.deepcopy(stage)
    checkpointed.checkpointing = "block"
    x = _rand(2, 8, 9, 11)
    outputs = []
    for module in (stage, checkpointed):
        torch.manual_seed(5)
        out = module(x)
        out.square().mean().backward()
        outputs.append(out)
    _assert_same_step(stage, checkpointed, outputs[:1], outputs[1:])


def test_eval_and_no_grad_forwards_are_unchanged() -> None:
    plain = _build("GuidedNAFNet")
    model = copy.deepcopy(plain)
    apply_activation_checkpointing(model, "block")
    inputs = _inputs(model)
    plain.eval()
    model.eval()
    with SavedTensorMeter(plain) as m_plain:
        out_plain = plain(*inputs)
    with SavedTensorMeter(model) as m_model:
        out_model = model(*inputs)
    assert out_plain.grad_fn is not None and out_model.grad_fn is not None  # graphs alive while counted
    assert m_model.kept_bytes() == m_plain.kept_bytes() > 0  # eval: nothing recomputed
    model.train()
    with torch.no_grad():
        assert active_checkpointing(model) == "none"
        torch.testing.assert_close(model(*inputs), plain.train()(*inputs), rtol=0, atol=0)


def test_unsupported_mode_or_foreign_model_raises() -> None:
    model = _build("GuidedNAFNet")
    with pytest.raises(ValueError, match=r"'full'.*GuidedNAFNet supports \('none', 'level', 'block'\)"):
        apply_activation_checkpointing(model, "full")
    with pytest.raises(ValueError, match="Conv2d is not a textualdeg backbone"):
        apply_activation_checkpointing(nn.Conv2d(3, 3, 1), "block")

    class BlockOnly(ARCH_REGISTRY.get("NAFNet")):
        checkpoint_modes = ("none", "block")

    with pytest.raises(ValueError, match=r"'level'.*BlockOnly supports \('none', 'block'\)"):
        apply_activation_checkpointing(BlockOnly(**NAFNET_TINY), "level")
    assert CHECKPOINT_MODES == ("none", "level", "block")


@pytest.mark.parametrize("name, config", [("NAFNet", NAFNET_TINY), ("Restormer", RESTORMER_TINY)])
def test_block_checkpointing_cuts_kept_bytes(name: str, config: dict) -> None:
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build({"type": name, **config, **({"enc_blk_nums": (2, 2)} if name == "NAFNet" else {})})
    x = torch.rand(1, 3, 32, 32)
    kept = {}
    for mode in ("none", "block"):
        apply_activation_checkpointing(model, mode)
        with SavedTensorMeter(model) as meter:
            out = model(x)  # the graph lives as long as its output
        kept[mode] = meter.kept_bytes()
        del out
    assert kept["block"] * 4 < kept["none"], kept


def test_memory_advice_names_the_options() -> None:
    advice = memory_advice("NAFNetRefFusion")  # the authors' name of GuidedNAFNet
    assert "train.activation_checkpointing: block" in advice and "docs/memory.md" in advice
    assert "x fewer" in advice and "train.mixed_precision: bf16" in advice
    assert "train.activation_checkpointing" in memory_advice("NAFNet")  # not measured: the general advice


# ---------------------------------------------------------------------------------------
# layer norms
# ---------------------------------------------------------------------------------------
def _plain_layer_norm(x, weight, bias, eps):
    """The formula the modules used before (autograd through plain tensor ops)."""
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    return weight.view(1, -1, 1, 1) * ((x - mu) / (var + eps).sqrt()) + bias.view(1, -1, 1, 1)


def _plain_bias_free(x, weight, eps):
    return x / (x.var(1, keepdim=True, unbiased=False) + eps).sqrt() * weight.view(1, -1, 1, 1)


def _norm_pair(kind: str, channels: int, dtype: torch.dtype = torch.float32):
    """(module, the plain formula with the module's parameters), parameters randomised."""
    norm = (LayerNorm2d(channels, eps=1e-6) if kind == "WithBias" else BiasFreeLayerNorm2d(channels)).to(dtype)
    with torch.no_grad():
        for i, p in enumerate(norm.parameters()):
            p.copy_(_rand(channels, seed=10 + i))
    if kind == "WithBias":
        return norm, lambda x: _plain_layer_norm(x, norm.weight, norm.bias, 1e-6)
    return norm, lambda x: _plain_bias_free(x, norm.weight, 1e-5)


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_layer_norm_equals_the_plain_formula(kind: str) -> None:
    norm, plain = _norm_pair(kind, 6)
    x = (_rand(2, 6, 5, 7) * 3 + 1).requires_grad_()
    grad = _rand(2, 6, 5, 7, seed=3)
    out, expected = norm(x), plain(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    wrt = [x, *norm.parameters()]
    for got, want in zip(torch.autograd.grad(out, wrt, grad), torch.autograd.grad(expected, wrt, grad)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_layer_norm_gradcheck(kind: str) -> None:
    norm, _ = _norm_pair(kind, 5, torch.float64)
    x = _rand(2, 5, 3, 4).double().requires_grad_()
    # the parameters are passed as inputs so gradcheck perturbs them too (they are the module's own)
    assert torch.autograd.gradcheck(lambda x, *params: norm(x), (x, *norm.parameters()))


@pytest.mark.parametrize("kind, plain_ratio", [("WithBias", 3.0), ("BiasFree", 2.0)])
def test_layer_norm_keeps_only_its_input(kind: str, plain_ratio: float) -> None:
    norm, plain = _norm_pair(kind, 16)
    x = _rand(2, 16, 8, 8).requires_grad_()
    with SavedTensorMeter(norm) as meter:
        out = norm(x)
    with SavedTensorMeter(norm) as plain_meter:
        plain_out = plain(x)
    assert out.grad_fn is not None and plain_out.grad_fn is not None  # graphs alive while counted
    assert meter.kept_bytes() <= x.nbytes
    assert plain_meter.kept_bytes() >= plain_ratio * x.nbytes


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_layer_norm_under_bf16_autocast(kind: str) -> None:
    norm, _ = _norm_pair(kind, 8)
    x = _rand(2, 8, 4, 4).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.float32  # float32 statistics, as the plain formula promotes
    torch.testing.assert_close(out, norm(x.detach().float()), rtol=0, atol=1e-6)
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32
    assert torch.isfinite(x.grad.float()).all()

"""Tests for textualdeg.guidance.processors: global K/V cross-attention (arXiv:2312.17334)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from textualdeg.checkpoint import load_weights, save_weights
from textualdeg.guidance.processors import (
    GlobalKVAttnProcessor,
    convert_authors_global_kv,
    global_kv_processors,
    global_kv_state_dict,
    install_global_kv,
    load_global_kv,
)

SD21_UNET = {
    "sample_size": 64,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}


def _unet_inputs(unet: UNet2DConditionModel, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    return latents, torch.tensor(500), context


def test_full_sd21_unet_gets_16_processors_on_attn2_only():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
    installed = install_global_kv(unet)
    assert len(installed) == 16 and len(unet.attn_processors) == 32
    assert all(name.endswith("attn2") for name in installed)
    widths = sorted({p.to_k_global.weight.shape for p in installed.values()})
    assert widths == [(320, 1024), (640, 1024), (1280, 1024)]
    for key, processor in unet.attn_processors.items():
        assert isinstance(processor, GlobalKVAttnProcessor) == key.endswith("attn2.processor")
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_global.weight" in unet.state_dict()
    kv = global_kv_state_dict(unet)
    assert len(kv) == 32 and sum(t.numel() for t in kv.values()) == 25_559_040  # the authors' ~25.6M


def test_equivalence_with_own_weights(sd):
    unet = sd.unet
    latents, t, context = _unet_inputs(unet)
    with torch.no_grad():
        before = unet(latents, t, encoder_hidden_states=context).sample
        installed = install_global_kv(unet)
        after = unet(latents, t, encoder_hidden_states=context).sample
    assert len(installed) == 4  # tiny UNet: 1 down, 1 mid, 2 up
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    for name in installed:  # self-attention keeps the default processor
        assert isinstance(unet.get_submodule(name.replace("attn2", "attn1")).processor, AttnProcessor2_0)


def test_cross_attention_uses_the_global_projections_only(sd):
    unet = sd.unet
    installed = install_global_kv(unet)
    latents, t, context = _unet_inputs(unet)
    with torch.no_grad():
        reference = unet(latents, t, encoder_hidden_states=context).sample
        for name in installed:
            unet.get_submodule(name).to_k.weight.mul_(3.0)  # the layer's own K is bypassed
        unchanged = unet(latents, t, encoder_hidden_states=context).sample
        next(iter(installed.values())).to_v_global.weight.mul_(3.0)
        changed = unet(latents, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(unchanged, reference, atol=0, rtol=0)
    assert (changed - reference).abs().max() > 1e-4


def test_gradients_reach_global_kv_only(sd):
    unet = sd.unet
    unet.requires_grad_(False)
    installed = install_global_kv(unet)
    for processor in installed.values():
        processor.requires_grad_(True)
    latents, t, context = _unet_inputs(unet)
    unet(latents, t, encoder_hidden_states=context).sample.square().mean().backward()
    for name, processor in installed.items():
        assert processor.to_k_global.weight.grad is not None and processor.to_k_global.weight.grad.abs().sum() > 0
        assert unet.get_submodule(name).to_k.weight.grad is None


def test_state_dict_round_trip_through_safetensors(sd, tiny_paths, tmp_path):
    from textualdeg.guidance.models import load_stable_diffusion

    install_global_kv(sd.unet)
    with torch.no_grad():
        for processor in global_kv_processors(sd.unet).values():
            processor.to_k_global.weight.add_(0.05 * torch.randn_like(processor.to_k_global.weight))
    kv = global_kv_state_dict(sd.unet)
    assert all(key.endswith(("to_k_global.weight", "to_v_global.weight")) for key in kv)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_global.weight" in kv
    save_weights(kv, tmp_path / "kv.safetensors")

    other = load_stable_diffusion(tiny_paths["stable_diffusion"]).unet
    install_global_kv(other)
    load_global_kv(other, load_weights(tmp_path / "kv.safetensors"), source="kv.safetensors")
    latents, t, context = _unet_inputs(other)
    with torch.no_grad():
        torch.testing.assert_close(
            other(latents, t, encoder_hidden_states=context).sample,
            sd.unet(latents, t, encoder_hidden_states=context).sample,
            atol=0, rtol=0,
        )


def test_load_errors_name_the_source(sd):
    installed = install_global_kv(sd.unet)
    kv = global_kv_state_dict(sd.unet)
    first = next(iter(kv))
    with pytest.raises(ValueError, match="kv.safetensors.*missing"):
        load_global_kv(sd.unet, {k: v for k, v in kv.items() if k != first}, source="kv.safetensors")
    with pytest.raises(ValueError, match=r"kv.safetensors.*has shape \(3, 3\)"):
        load_global_kv(sd.unet, {**kv, first: torch.zeros(3, 3)}, source="kv.safetensors")
    with pytest.raises(ValueError, match="already"):
        install_global_kv(sd.unet)
    assert len(installed) == 4


def test_global_kv_requires_installation(sd):
    with pytest.raises(ValueError, match="install_global_kv"):
        global_kv_state_dict(sd.unet)


def test_convert_authors_keys():
    tensors = {
        "down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.weight": torch.zeros(1),
        "mid_block_attentions_0_transformer_blocks_0_attn2_to_v.weight": torch.ones(1),
        "up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k.weight": torch.zeros(1),
    }
    assert set(convert_authors_global_kv(tensors)) == {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k_global.weight",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v_global.weight",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k_global.weight",
    }
    with pytest.raises(ValueError, match="mapping_0.0.weight"):
        convert_authors_global_kv({"mapping_0.0.weight": torch.zeros(1)})

"""Memory options of stages 1-3: the attention kernel and the out-of-memory message.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textualdeg.guidance.memory import attention_backend, out_of_memory_hint
from textualdeg.guidance.processors import install_global_kv
from textualdeg.guidance.schema import GENERATE_SCHEMA, I2T_SCHEMA, TR_SCHEMA
from textualdeg.options import OptionsError, load_options

OPTIONS = Path(__file__).resolve().parents[2] / "options"


def test_math_and_sdpa_kernels_give_the_same_unet_output_and_gradients(sd):
    install_global_kv(sd.unet)
    sd.unet.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, 32, generator=g, requires_grad=True)
    outputs = {}
    for name in ("sdpa", "math"):
        with attention_backend(name):
            out = sd.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=context).sample
            out.square().mean().backward()
        outputs[name] = (out.detach(), context.grad.clone())
        context.grad = None
    torch.testing.assert_close(outputs["sdpa"][0], outputs["math"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs["sdpa"][1], outputs["math"][1], atol=1e-6, rtol=1e-4)


def test_unknown_attention_backend_is_an_error():
    with pytest.raises(ValueError, match="attention='flash'"):
        with attention_backend("flash"):
            pass


@pytest.mark.parametrize("schema, option_file, key", [
    (I2T_SCHEMA, "train_i2t/sd21base_vith14.yml", "train.attention"),
    (TR_SCHEMA, "train_tr/sd21base_vith14.yml", "train.attention"),
    (GENERATE_SCHEMA, "generate/sd21base_vith14.yml", "generate.attention"),
])
def test_attention_option_is_validated(schema, option_file, key):
    section, name = key.split(".")
    assert load_options(OPTIONS / option_file, schema)[section][name] == "sdpa"
    assert load_options(OPTIONS / option_file, schema, [f"{key}=math"])[section][name] == "math"
    with pytest.raises(OptionsError, match=name):
        load_options(OPTIONS / option_file, schema, [f"{key}=xformers"])


def test_host_out_of_memory_names_stage_sizes_and_options():
    with pytest.raises(torch.OutOfMemoryError) as info:
        with out_of_memory_hint("stage 1 (I2T mapper) training step", ["datasets.train.batch_size_per_gpu=4"],
                                ["train.gradient_checkpointing: true"]):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    message = str(info.value)
    assert "stage 1 (I2T mapper) training step ran out of host memory" in message
    assert "datasets.train.batch_size_per_gpu=4" in message and "train.gradient_checkpointing: true" in message


def test_other_errors_pass_through_unchanged():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with out_of_memory_hint("stage 3", [], []):
            raise RuntimeError("shape mismatch")


def test_training_memory_advice_lists_what_is_off():
    from textualdeg.guidance.train import memory_advice

    opt = load_options(OPTIONS / "train_i2t/sd21base_vith14.yml", I2T_SCHEMA)
    stage, sizes, helps = memory_advice(opt)
    assert stage == "stage 1 (I2T mapper) training step"
    assert any("batch_size_per_gpu=4" in s for s in sizes) and any("resolution=512" in s for s in sizes)
    assert any(h.startswith("train.gradient_checkpointing: true") for h in helps)
    assert any(h.startswith("train.mixed_precision: bf16") for h in helps)
    opt = load_options(OPTIONS / "train_tr/sd21base_vith14.yml", TR_SCHEMA,
                       ["train.gradient_checkpointing=true", "train.mixed_precision=bf16"])
    stage, _, helps = memory_advice(opt)
    assert stage.startswith("stage 2") and helps == []


def test_generation_memory_advice_lists_what_is_off():
    from textualdeg.guidance.generate import memory_advice

    opt = load_options(OPTIONS / "generate/sd21base_vith14.yml", GENERATE_SCHEMA, ["generate.attention=math"])
    stage, sizes, helps = memory_advice(opt, torch.float32)
    assert stage.startswith("stage 3")
    assert sizes == ["generate.batch_size=8", "generate.resolution=512"]
    assert [h.split(":")[0] for h in helps] == ["generate.dtype", "generate.attention", "generate.batched_cfg"]

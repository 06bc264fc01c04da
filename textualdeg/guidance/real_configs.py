"""The real-size model configurations, as data, and random-weight builders for them.

The guidance stages load Stable Diffusion 2.1-base, the CLIP ViT-H/14 image encoder and
(stage 4) DINOv2 ViT-B/14 from local folders. Their configurations are kept here so that
the real sizes can be built without the weights: on the meta device (shapes only, for
``tests/test_real_size.py``) or with random weights on any device (for
``bench/real_size.py``; construction on the meta device, then every parameter allocated
once on the target device and initialised there). docs/real_size.md has the measurements.

* ``SD21_BASE_UNET_CONFIG``, ``SD21_BASE_VAE_CONFIG``, ``SD21_BASE_TEXT_ENCODER_CONFIG``:
  the model-defining keys of ``unet/``, ``vae/`` and ``text_encoder/config.json`` of
  stabilityai/stable-diffusion-2-1-base (the scheduler config is
  ``textualdeg.guidance.tiny.SD21_SCHEDULER_CONFIG``, verbatim).
* The CLIP image encoder comes from open_clip's own ``ViT-H-14`` config
  (``open_clip.get_model_config``, shipped inside open_clip_torch), converted by
  ``textualdeg.guidance.models.open_clip_vision_config`` exactly as a checkpoint is.
* ``DINOV2_VITB14_CONFIG``: facebook/dinov2-base's ``config.json`` (the layout
  ``textualdeg.pretrained.dinov2.load_dinov2`` infers from ``dinov2_vitb14_pretrain.pth``).
* ``PUBLISHED_PARAMETERS``: the parameter count of each, with where the number comes from.

Nothing here reads a file or reaches a hub. Paper: "Improving Image Restoration through
Removing Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

SD21_BASE_UNET_CONFIG: dict = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "num_class_embeds": None,
}
SD21_BASE_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# The OpenCLIP ViT-H/14 text tower in SD 2's 23-layer cut (the penultimate layer's output),
# with the legacy ids bos 0 / eos 2 of SD 2's text_encoder/config.json.
SD21_BASE_TEXT_ENCODER_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 512,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
#: open_clip config name of the CLIP image encoder (laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
CLIP_VISION_OPEN_CLIP_MODEL = "ViT-H-14"
DINOV2_VITB14_CONFIG: dict = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "image_size": 518,
    "patch_size": 14,
    "num_channels": 3,
    "qkv_bias": True,
    "layerscale_value": 1.0,
    "use_swiglu_ffn": False,
}

#: (parameters, source) of every real model. The counts are those of the modules the stages
#: build; each was checked against its published figure, which the source names.
PUBLISHED_PARAMETERS: dict[str, tuple[int, str]] = {
    "unet": (865_910_724, "SD 2.1-base UNet2DConditionModel: 865,910,724 (diffusers' count of the released weights)"),
    "vae": (83_653_863, "SD 2.x AutoencoderKL: 83,653,863 (diffusers' count of the released weights)"),
    "text_encoder": (
        340_387_840,
        "SD 2.1 CLIPTextModel, the OpenCLIP ViT-H/14 text tower cut to 23 of its 24 layers: "
        "open_clip's ViT-H-14 text tower is 354.03 M (open_clip model_profile.csv) with 24 layers "
        "of 12,596,224 and its 1024x1024 projection",
    ),
    "clip_vision": (
        630_766_080,
        "CLIP ViT-H/14 image tower without its 1280x1024 projection (1,310,720): open_clip's "
        "model_profile.csv lists the ViT-H-14 image tower at 632.08 M",
    ),
    "dinov2": (86_580_480, "DINOv2 ViT-B/14 (dinov2_vitb14, facebook/dinov2-base): 86.6 M (DINOv2 model card)"),
}


def clip_vision_config(open_clip_model: str = CLIP_VISION_OPEN_CLIP_MODEL):
    """The ``CLIPVisionConfig`` of an open_clip config name, as a checkpoint of it converts to.

    Args:
        open_clip_model: an open_clip config name (``ViT-H-14``).

    Returns:
        ``transformers.CLIPVisionConfig`` (ViT-H/14: width 1280, 32 layers, 16 heads, 224 px).
    """
    import open_clip

    from textualdeg.guidance.models import open_clip_vision_config

    config = open_clip.get_model_config(open_clip_model)
    if config is None:
        raise ValueError(f"open_clip_model={open_clip_model!r} is not an open_clip config")
    return open_clip_vision_config(
        config["vision_cfg"], quick_gelu=bool(config.get("quick_gelu", False)), source=f"open_clip {open_clip_model!r}"
    )


@contextlib.contextmanager
def meta_init(device: torch.device | str) -> Iterator[None]:
    """Build on the meta device: everything for ``device="meta"``, parameters only otherwise.

    For a real device the buffers (position ids, ...) are built for real, on the CPU, as
    they hold values the forward reads; :func:`materialize` then allocates the parameters.
    """
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            yield
    else:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            yield


def materialize(
    module: nn.Module, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, seed: int = 0
) -> nn.Module:
    """Allocate a meta-built module's parameters on ``device`` and initialise them, in place.

    Each module with ``reset_parameters`` (linear, convolution, embedding and norm layers)
    gets its own default initialisation; the remaining parameters (class tokens, position
    and layer-scale vectors) are drawn from N(0, 0.02^2). Buffers move to ``device`` with
    their values.

    Args:
        module: built under :func:`meta_init` (parameters on the meta device).
        device: where the parameters go.
        dtype: parameter dtype (default: as built, float32).
        seed: seed of the random weights (the global RNG state is left as it was).

    Returns:
        ``module``, in place.
    """
    device = torch.device(device)
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.is_meta:
                data = torch.empty(param.shape, device=device, dtype=dtype or param.dtype)
                sub._parameters[name] = nn.Parameter(data, requires_grad=param.requires_grad)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = buffer.to(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        covered: set[int] = set()
        for sub in module.modules():
            if hasattr(sub, "reset_parameters") and sub is not module:
                sub.reset_parameters()
                covered.update(id(p) for p in sub.parameters(recurse=False))
        for param in module.parameters():
            if id(param) not in covered:
                param.normal_(0.0, 0.02)
    return module


def _finish(module: nn.Module, device: torch.device | str, dtype: torch.dtype | None, seed: int) -> nn.Module:
    if torch.device(device).type != "meta":
        materialize(module, device, dtype, seed)
    elif dtype not in (None, torch.float32):  # built in float32
        module.to(dtype=dtype)
    return module.eval()


def build_stable_diffusion(
    tokenizer_dir: str | Path,
    *,
    device: torch.device | str = "meta",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    unet_config: dict | None = None,
    vae_config: dict | None = None,
    text_config: dict | None = None,
):
    """SD 2.1-base (or the given configs) with random weights, as ``load_stable_diffusion`` returns it.

    Args:
        tokenizer_dir: folder for the CLIP BPE tokenizer (written from open_clip's
            vocabulary unless a ``vocab.json`` is already there).
        device: ``meta`` (shapes only) or a real device (random weights).
        dtype: parameter dtype of unet, vae and text_encoder (default float32).
        seed: seed of the random weights.
        unet_config, vae_config, text_config: other configs (the tiny ones of
            ``textualdeg.guidance.tiny``); default SD 2.1-base's.

    Returns:
        ``StableDiffusionModels`` in eval mode, ``requires_grad`` as built (True).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from textualdeg.guidance.models import StableDiffusionModels
    from textualdeg.guidance.tiny import SD21_SCHEDULER_CONFIG, write_clip_tokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "vocab.json").is_file():
        write_clip_tokenizer(tokenizer_dir)
    with meta_init(device):
        unet = UNet2DConditionModel(**(unet_config or SD21_BASE_UNET_CONFIG))
        vae = AutoencoderKL(**(vae_config or SD21_BASE_VAE_CONFIG))
        text_encoder = CLIPTextModel(CLIPTextConfig(**(text_config or SD21_BASE_TEXT_ENCODER_CONFIG)))
    for offset, module in enumerate((unet, vae, text_encoder)):
        _finish(module, device, dtype, seed + offset)
    return StableDiffusionModels(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        scheduler=DDIMScheduler.from_config(SD21_SCHEDULER_CONFIG),
    )


def build_clip_vision(
    *,
    device: torch.device | str = "meta",
    dtype: torch.dtype | None = None,
    seed: int = 10,
    config=None,
) -> nn.Module:
    """The CLIP ViT-H/14 image encoder (``CLIPVisionModel``) with random weights.

    Args:
        device: ``meta`` (shapes only) or a real device (random weights).
        dtype: parameter dtype (default float32).
        seed: seed of the random weights.
        config: another ``CLIPVisionConfig`` (default: :func:`clip_vision_config`).
    """
    from transformers import CLIPVisionModel

    with meta_init(device):
        model = CLIPVisionModel(config if config is not None else clip_vision_config())
    return _finish(model, device, dtype, seed)


def build_dinov2(
    *, device: torch.device | str = "meta", dtype: torch.dtype | None = None, seed: int = 20, config: dict | None = None
) -> nn.Module:
    """DINOv2 ViT-B/14 (transformers ``Dinov2Model``) with random weights, frozen as ``load_dinov2`` returns it.

    Args:
        device: ``meta`` (shapes only) or a real device (random weights).
        dtype: parameter dtype (default float32).
        seed: seed of the random weights.
        config: other ``Dinov2Config`` keyword arguments (default ``DINOV2_VITB14_CONFIG``).
    """
    from transformers import Dinov2Config, Dinov2Model

    with meta_init(device):
        model = Dinov2Model(Dinov2Config(**(config or DINOV2_VITB14_CONFIG)))
    return _finish(model, device, dtype, seed).requires_grad_(False)


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "CLIP_VISION_OPEN_CLIP_MODEL",
    "DINOV2_VITB14_CONFIG",
    "PUBLISHED_PARAMETERS",
    "SD21_BASE_TEXT_ENCODER_CONFIG",
    "SD21_BASE_UNET_CONFIG",
    "SD21_BASE_VAE_CONFIG",
    "build_clip_vision",
    "build_dinov2",
    "build_stable_diffusion",
    "clip_vision_config",
    "materialize",
    "meta_init",
    "parameter_count",
]

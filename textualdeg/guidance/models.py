"""Loading the frozen models of the guidance stages from local folders.

Holds the loaders for a Stable Diffusion 2.1-base diffusers folder and for the CLIP image
encoder (a transformers ``CLIPVisionModel`` folder, or an open_clip checkpoint converted
to the same layout), plus the CLIP image preprocessing. Nothing here reaches a model hub:
every loader is called with ``local_files_only=True``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

The image features the mappers consume are CLIP's ``last_hidden_state``: (B, 1 + P, W)
tokens (CLS first), after ``pre_layrnorm`` and the encoder, *without* ``post_layernorm``,
as in the authors' code. For ViT-H/14 at 224 px that is (B, 257, 1280).

The open_clip conversion maps ``visual.*`` keys of an open_clip checkpoint onto
transformers' ``CLIPVisionModel`` (docs/ecosystem_notes.md, section 6): conv1 ->
embeddings.patch_embedding, class_embedding, positional_embedding, ln_pre ->
pre_layrnorm, per block ln_1/ln_2 -> layer_norm1/2, attn.in_proj (q, k, v stacked) ->
q/k/v_proj, attn.out_proj -> out_proj, mlp.c_fc/c_proj -> mlp.fc1/fc2, ln_post ->
post_layernorm.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

from textualdeg.checkpoint import load_weights
from textualdeg.log import get_logger

logger = get_logger(__name__)

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Weight files accepted per component, in from_pretrained's order of preference. A
# ".fp16" variant alone (as in some hub snapshots) is accepted and loaded as that variant.
_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
)
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# The open_clip file names that open_clip itself looks for inside a folder.
_OPEN_CLIP_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)


class IncompleteModelFolderError(FileNotFoundError):
    """A model folder lacks files; ``missing`` lists them relative to ``folder``."""

    def __init__(self, kind: str, folder: str | Path, missing: list[str]):
        self.folder = Path(folder)
        self.missing = list(missing)
        super().__init__(f"{kind} folder {self.folder} is incomplete; missing: {', '.join(self.missing)}")


@dataclass
class StableDiffusionModels:
    """The five parts of a Stable Diffusion folder, as loaded by :func:`load_stable_diffusion`.

    Attributes:
        unet: the epsilon-prediction UNet (``cross_attention_dim`` = text width, 1024 for SD 2.1).
        vae: the autoencoder; images enter and leave it in [-1, 1].
        text_encoder: the CLIP text tower (``hidden_size`` 1024 for SD 2.1).
        tokenizer: the CLIP BPE tokenizer (``model_max_length`` 77).
        scheduler: a ``DDIMScheduler`` built from ``scheduler/scheduler_config.json``; it also
            serves as the training noise scheduler (``add_noise``), as in the authors' code.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler

    @property
    def vae_scale_factor(self) -> int:
        """Pixel-to-latent downsampling factor (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        """Multiplier from VAE latents to UNet latents (0.18215 for SD 2.1)."""
        return float(self.vae.config.scaling_factor)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StableDiffusionModels:
        """Move (and cast) unet, vae and text_encoder in place; returns ``self``."""
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self


def _weights_variant(folder: Path, names: tuple[str, ...]) -> tuple[bool, str | None]:
    """Return (found, variant) for a component folder: variant 'fp16' when only fp16 files exist."""
    if any((folder / name).is_file() for name in names):
        return True, None
    fp16 = [name.replace(".safetensors", ".fp16.safetensors").replace(".bin", ".fp16.bin") for name in names]
    if any((folder / name).is_file() for name in fp16):
        return True, "fp16"
    return False, None


def check_stable_diffusion_folder(folder: str | Path) -> dict[str, str | None]:
    """Check that ``folder`` holds every file :func:`load_stable_diffusion` needs.

    Args:
        folder: a diffusers Stable Diffusion folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``).

    Returns:
        The weight variant to load per weighted component (None, or 'fp16' when only the
        fp16 variant is present), keyed 'unet', 'vae', 'text_encoder'.

    Raises:
        IncompleteModelFolderError: listing every missing file or folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IncompleteModelFolderError("Stable Diffusion", folder, ["the folder itself"])
    missing: list[str] = []
    variants: dict[str, str | None] = {}
    weighted = {"unet": _DIFFUSERS_WEIGHTS, "vae": _DIFFUSERS_WEIGHTS, "text_encoder": _TRANSFORMERS_WEIGHTS}
    for part, names in weighted.items():
        if not (folder / part / "config.json").is_file():
            missing.append(f"{part}/config.json")
        found, variants[part] = _weights_variant(folder / part, names)
        if not found:
            missing.append(f"{part}/{names[0]} (or {' / '.join(names[1:])})")
    tok = folder / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        missing += [f"tokenizer/{name}" for name in ("vocab.json", "merges.txt") if not (tok / name).is_file()]
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    if missing:
        raise IncompleteModelFolderError("Stable Diffusion", folder, missing)
    return variants


def check_stable_diffusion_sizes(folder: str | Path) -> None:
    """Check that the parts of a Stable Diffusion folder fit together, from their configs alone.

    The UNet attends to the text encoder's output (``cross_attention_dim`` = text
    ``hidden_size``) and denoises the VAE's latents (``in_channels`` = ``latent_channels``);
    a folder assembled from two models fails here, before any weight is read.

    Args:
        folder: a diffusers Stable Diffusion folder (complete: :func:`check_stable_diffusion_folder`).

    Raises:
        ValueError: naming both config files and both values.
    """
    folder = Path(folder)
    configs = {
        part: json.loads((folder / part / "config.json").read_text()) for part in ("unet", "vae", "text_encoder")
    }
    pairs = (
        ("unet", "cross_attention_dim", "text_encoder", "hidden_size"),
        ("unet", "in_channels", "vae", "latent_channels"),
    )
    for part_a, key_a, part_b, key_b in pairs:
        value_a, value_b = configs[part_a].get(key_a), configs[part_b].get(key_b)
        if isinstance(value_a, int) and isinstance(value_b, int) and value_a != value_b:
            raise ValueError(
                f"Stable Diffusion folder {folder}: {part_a}/config.json has {key_a} {value_a} but "
                f"{part_b}/config.json has {key_b} {value_b}; the two parts come from different models "
                "(SD 2.1-base: 1024 and 1024, 4 and 4)"
            )


def load_stable_diffusion(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> StableDiffusionModels:
    """Load a Stable Diffusion (2.1-base) diffusers folder, offline.

    Args:
        folder: the folder holding ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``.
        dtype: dtype of unet, vae and text_encoder (the scheduler and tokenizer have none).
        device: device of unet, vae and text_encoder.

    Returns:
        The loaded parts, in eval mode. ``requires_grad`` is left as loaded (True); training
        code freezes what it does not train.

    Raises:
        IncompleteModelFolderError: when files are missing (all of them are listed).
        ValueError: parts whose sizes do not fit together (:func:`check_stable_diffusion_sizes`).
    """
    folder = Path(folder)
    variants = check_stable_diffusion_folder(folder)
    check_stable_diffusion_sizes(folder)
    common = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", torch_dtype=dtype, variant=variants["unet"], **common
    )
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, variant=variants["vae"], **common)
    text_encoder = CLIPTextModel.from_pretrained(
        folder, subfolder="text_encoder", dtype=dtype, variant=variants["text_encoder"], **common
    )
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common)
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **common)
    models = StableDiffusionModels(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
    )
    if unet.device != torch.device(device):
        models.to(device=device)
    for module in (unet, vae, text_encoder):
        module.eval()
    logger.info(
        "loaded Stable Diffusion from %s (text width %d, %d cross-attention layers)",
        folder,
        text_encoder.config.hidden_size,
        sum(name.endswith("attn2.processor") for name in unet.attn_processors),
    )
    return models


# ----------------------------------------------------------------------------------------
# CLIP image encoder


def _open_clip_vision_cfg(checkpoint: Path, open_clip_model: str) -> tuple[dict, bool, str]:
    """Return (vision_cfg, quick_gelu, where it came from) for an open_clip checkpoint.

    ``open_clip_config.json`` beside the checkpoint (the hub layout) wins; otherwise the
    named built-in open_clip config is used.
    """
    config_file = checkpoint.parent / "open_clip_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config = config.get("model_cfg", config)
        source = str(config_file)
    else:
        import open_clip

        config = open_clip.get_model_config(open_clip_model)
        if config is None:
            raise ValueError(
                f"open_clip_model={open_clip_model!r} is not a known open_clip config and {config_file} does not "
                f"exist; cannot build the vision tower for {checkpoint}"
            )
        source = f"open_clip config {open_clip_model!r} (path.open_clip_model)"
    if "vision_cfg" not in config:
        raise ValueError(f"{source} has no 'vision_cfg' (needed for {checkpoint})")
    return dict(config["vision_cfg"]), bool(config.get("quick_gelu", False)), source


# open_clip vision options that the transformers CLIP layout cannot express; the value
# given is the one that is supported.
_SUPPORTED_OPEN_CLIP_OPTIONS = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "timm_model_name": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "act_kwargs": None,
    "norm_kwargs": None,
}


def _check_open_clip_options(vision_cfg: dict, source: str) -> None:
    """ValueError naming ``source`` for an open_clip vision option that CLIPVisionModel cannot express."""
    for option, supported in _SUPPORTED_OPEN_CLIP_OPTIONS.items():
        value = vision_cfg.get(option, supported)
        if value != supported and value:
            raise ValueError(
                f"{source}: open_clip vision option {option}={value!r} cannot be converted to CLIPVisionModel"
            )


def open_clip_vision_config(
    vision_cfg: dict, *, quick_gelu: bool = False, source: str = "open_clip config"
) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` that an open_clip ``vision_cfg`` describes (no weights needed).

    Missing keys take open_clip's ``CLIPVisionCfg`` defaults (width 768, 12 layers,
    head_width 64, mlp_ratio 4, patch 16, 224 px).

    Args:
        vision_cfg: open_clip ``vision_cfg`` mapping (e.g. ViT-H-14: width 1280, 32 layers,
            head_width 80, patch 14, 224 px).
        quick_gelu: open_clip's ``quick_gelu`` model flag.
        source: the config's name, for error messages.

    Returns:
        The config :func:`convert_open_clip_vision` gives a checkpoint of that architecture.

    Raises:
        ValueError: a non-ViT tower, a non-square input, an unsupported option or a width
            that is not a multiple of ``head_width``, naming ``source``.
    """
    _check_open_clip_options(vision_cfg, source)
    width, layers = vision_cfg.get("width", 768), vision_cfg.get("layers", 12)
    image_size, patch = vision_cfg.get("image_size", 224), vision_cfg.get("patch_size", 16)
    if not isinstance(layers, int) or not isinstance(width, int):
        raise ValueError(f"{source}: layers={layers!r}, width={width!r} is not a ViT image tower")
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise ValueError(f"{source}: image_size={image_size!r} is not square")
        image_size = image_size[0]
    head_width = int(vision_cfg.get("head_width", 64))
    if width % head_width:
        raise ValueError(f"{source}: width {width} is not a multiple of head_width {head_width}")
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(width * float(vision_cfg.get("mlp_ratio", 4.0))),
        num_hidden_layers=layers,
        num_attention_heads=width // head_width,
        num_channels=3,
        image_size=int(image_size),
        patch_size=int(patch),
        hidden_act="quick_gelu" if quick_gelu else "gelu",
        layer_norm_eps=1e-5,
        projection_dim=width,
    )


# The sizes a checkpoint's tensors fix, compared with those its config claims.
_VISION_SIZES = {
    "hidden_size": "width",
    "num_hidden_layers": "layers",
    "intermediate_size": "MLP width",
    "patch_size": "patch",
    "image_size": "image size",
}


def _describe_vision(config: CLIPVisionConfig) -> str:
    return ", ".join(f"{label} {getattr(config, key)}" for key, label in _VISION_SIZES.items())


def convert_open_clip_vision(
    state_dict: dict[str, torch.Tensor],
    vision_cfg: dict,
    *,
    quick_gelu: bool = False,
    source: str = "open_clip state dict",
    config_source: str | None = None,
) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    """Convert the ``visual.*`` weights of an open_clip CLIP into a ``CLIPVisionModel`` layout.

    Args:
        state_dict: open_clip CLIP state dict (keys ``visual.conv1.weight`` ...).
        vision_cfg: open_clip ``vision_cfg`` mapping. ``head_width`` (default 64) and the
            unsupported-feature flags are read; widths and depth come from the tensors, and
            when ``config_source`` is given they must equal those the config describes.
        quick_gelu: open_clip's ``quick_gelu`` model flag (OpenAI weights); ViT-H-14 uses exact GELU.
        source: name of the file or config, used in error messages.
        config_source: where ``vision_cfg`` came from (an ``open_clip_config.json`` or the
            option ``path.open_clip_model``); when given, a checkpoint whose sizes differ
            from the config's is an error naming both.

    Returns:
        (config, weights) such that ``CLIPVisionModel(config).load_state_dict(weights)`` is strict.

    Raises:
        ValueError: a feature the HF layout lacks (e.g. layer scale), a missing visual key,
            or a checkpoint of other sizes than its config (both named), naming ``source``.
    """
    _check_open_clip_options(vision_cfg, source)
    sd = {key[len("visual.") :]: value for key, value in state_dict.items() if key.startswith("visual.")}
    required = ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_post.weight")
    absent = [f"visual.{key}" for key in required if key not in sd]
    if absent:
        raise ValueError(f"{source} is not an open_clip ViT checkpoint; missing keys: {', '.join(absent)}")
    width, _, patch, _ = sd["conv1.weight"].shape  # (W, 3, p, p)
    num_positions = sd["positional_embedding"].shape[0]  # 1 + (image_size / p)^2
    grid = round((num_positions - 1) ** 0.5)
    layers = 1 + max(int(m.group(1)) for key in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", key)))
    intermediate = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]  # (mlp width, W)
    found = {"hidden_size": width, "num_hidden_layers": layers, "intermediate_size": intermediate,
             "patch_size": patch, "image_size": grid * patch}
    if config_source is not None:
        claimed = open_clip_vision_config(vision_cfg, quick_gelu=quick_gelu, source=config_source)
        if any(getattr(claimed, key) != value for key, value in found.items()):
            held = ", ".join(f"{label} {found[key]}" for key, label in _VISION_SIZES.items())
            raise ValueError(
                f"{source} holds a CLIP image tower of {held}, but {config_source} describes "
                f"{_describe_vision(claimed)}; point path.open_clip_model at the checkpoint's open_clip config "
                "or put its open_clip_config.json beside it"
            )
    head_width = int(vision_cfg.get("head_width", 64))
    if width % head_width:
        raise ValueError(f"{source}: width {width} is not a multiple of head_width {head_width}")
    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=width // head_width,
        num_channels=3,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="quick_gelu" if quick_gelu else "gelu",
        layer_norm_eps=1e-5,
        projection_dim=sd["proj"].shape[1] if "proj" in sd else width,
    )
    out = {
        "embeddings.patch_embedding.weight": sd["conv1.weight"],
        "embeddings.class_embedding": sd["class_embedding"],
        "embeddings.position_embedding.weight": sd["positional_embedding"],
        "pre_layrnorm.weight": sd["ln_pre.weight"],
        "pre_layrnorm.bias": sd["ln_pre.bias"],
        "post_layernorm.weight": sd["ln_post.weight"],
        "post_layernorm.bias": sd["ln_post.bias"],
    }
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        q_w, k_w, v_w = sd[src + "attn.in_proj_weight"].chunk(3)  # (3W, W) -> 3 x (W, W)
        q_b, k_b, v_b = sd[src + "attn.in_proj_bias"].chunk(3)  # (3W,) -> 3 x (W,)
        out.update(
            {
                dst + "self_attn.q_proj.weight": q_w,
                dst + "self_attn.q_proj.bias": q_b,
                dst + "self_attn.k_proj.weight": k_w,
                dst + "self_attn.k_proj.bias": k_b,
                dst + "self_attn.v_proj.weight": v_w,
                dst + "self_attn.v_proj.bias": v_b,
                dst + "self_attn.out_proj.weight": sd[src + "attn.out_proj.weight"],
                dst + "self_attn.out_proj.bias": sd[src + "attn.out_proj.bias"],
                dst + "layer_norm1.weight": sd[src + "ln_1.weight"],
                dst + "layer_norm1.bias": sd[src + "ln_1.bias"],
                dst + "layer_norm2.weight": sd[src + "ln_2.weight"],
                dst + "layer_norm2.bias": sd[src + "ln_2.bias"],
                dst + "mlp.fc1.weight": sd[src + "mlp.c_fc.weight"],
                dst + "mlp.fc1.bias": sd[src + "mlp.c_fc.bias"],
                dst + "mlp.fc2.weight": sd[src + "mlp.c_proj.weight"],
                dst + "mlp.fc2.bias": sd[src + "mlp.c_proj.bias"],
            }
        )
    return config, {key: value.contiguous() for key, value in out.items()}


def _find_open_clip_file(folder: Path) -> Path | None:
    for name in _OPEN_CLIP_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_clip_vision(
    path: str | Path,
    *,
    open_clip_model: str = "ViT-H-14",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> CLIPVisionModel:
    """Load the CLIP image encoder as a transformers ``CLIPVisionModel``, offline.

    Three inputs are accepted:

    * a transformers folder with ``config.json`` (a ``CLIPVisionModel`` folder or a full
      ``CLIPModel`` folder such as laion/CLIP-ViT-H-14-laion2B-s32B-b79K; only the vision
      tower is read);
    * an open_clip checkpoint file (``.bin``/``.pt``/``.pth``/``.safetensors``); its
      architecture comes from ``open_clip_config.json`` beside it, else from the built-in
      open_clip config ``open_clip_model``;
    * a folder without ``config.json`` holding an open_clip checkpoint file (hub layout).

    Both routes give the same features (``last_hidden_state``) to about 1e-5.

    Args:
        path: folder or checkpoint file.
        open_clip_model: open_clip config name used when no ``open_clip_config.json`` is found.
        dtype: parameter dtype.
        device: parameter device.

    Returns:
        The encoder in eval mode.

    Raises:
        IncompleteModelFolderError: a folder with neither a complete transformers model nor
            an open_clip checkpoint.
        ValueError: an open_clip checkpoint whose vision tower cannot be converted.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        found, variant = _weights_variant(path, _TRANSFORMERS_WEIGHTS)
        if not found:
            raise IncompleteModelFolderError(
                "CLIP vision", path, [f"{_TRANSFORMERS_WEIGHTS[0]} (or {' / '.join(_TRANSFORMERS_WEIGHTS[1:])})"]
            )
        model = CLIPVisionModel.from_pretrained(path, dtype=dtype, variant=variant, local_files_only=True)
        source = "transformers"
    else:
        checkpoint = path
        if path.is_dir():
            checkpoint = _find_open_clip_file(path)
            if checkpoint is None:
                wanted = "config.json + model.safetensors (transformers) or " + " / ".join(_OPEN_CLIP_FILES)
                raise IncompleteModelFolderError("CLIP vision", path, [wanted])
        elif not path.is_file():
            raise FileNotFoundError(f"CLIP image encoder not found: {path}")
        vision_cfg, quick_gelu, cfg_source = _open_clip_vision_cfg(checkpoint, open_clip_model)
        config, weights = convert_open_clip_vision(
            load_weights(checkpoint), vision_cfg, quick_gelu=quick_gelu, source=str(checkpoint),
            config_source=cfg_source,
        )
        model = CLIPVisionModel.from_pretrained(None, config=config, state_dict=weights, dtype=dtype)
        source = f"open_clip ({cfg_source})"
    if model.device != torch.device(device):
        model.to(device=device)
    model.eval()
    logger.info(
        "loaded CLIP image encoder from %s via %s (width %d, %d tokens)",
        path,
        source,
        model.config.hidden_size,
        1 + (model.config.image_size // model.config.patch_size) ** 2,
    )
    return model


def center_crop_square(images: torch.Tensor) -> torch.Tensor:
    """Crop the central square of side min(H, W), as the authors' generation dataset does.

    Args:
        images: (B, C, H, W).

    Returns:
        (B, C, S, S) with S = min(H, W).
    """
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return images[..., top : top + side, left : left + side]


def clip_preprocess(
    images: torch.Tensor,
    *,
    image_size: int = 224,
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
    std: tuple[float, float, float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Resize to CLIP's input size (bicubic, antialiased like PIL) and normalise.

    The image is resized as a whole (no crop); crop first with :func:`center_crop_square`
    to keep the aspect ratio.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1].
        image_size: square output side (224 for ViT-H/14).
        mean: per-channel mean (OpenAI CLIP statistics by default).
        std: per-channel std.

    Returns:
        (B, 3, image_size, image_size) normalised float tensor.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W); got shape {tuple(images.shape)}")
    images = images.float()
    if images.shape[-2:] != (image_size, image_size):
        size = (image_size, image_size)
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        images = images.clamp(0.0, 1.0)  # PIL clamps its bicubic overshoot on uint8 images
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def clip_image_features(image_encoder: CLIPVisionModel, images: torch.Tensor) -> torch.Tensor:
    """CLIP tokens the mappers consume: preprocess, encode, return ``last_hidden_state``.

    Args:
        image_encoder: a loaded ``CLIPVisionModel``.
        images: (B, 3, H, W) float RGB in [0, 1], any size (resized to the encoder's size).

    Returns:
        (B, 1 + P, W) tokens, CLS first, not post-layernormed ((B, 257, 1280) for ViT-H/14).
    """
    param = next(image_encoder.parameters())
    pixels = clip_preprocess(images.to(param.device), image_size=image_encoder.config.image_size)
    return image_encoder(pixel_values=pixels.to(param.dtype)).last_hidden_state

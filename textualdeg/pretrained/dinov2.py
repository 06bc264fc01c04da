"""DINOv2 from local files: a frozen transformers ``Dinov2Model`` and its patch tokens.

The lowest layer of the package (``textualdeg.pretrained`` imports neither ``data/`` nor
``restoration/``): ``load_dinov2`` reads a transformers ``Dinov2Model`` folder or a
torch-hub checkpoint file (facebookresearch/dinov2 layout, e.g.
``dinov2_vitb14_pretrain.pth``, converted by key) and returns the model frozen in eval
mode; ``DinoFeatureExtractor`` gives the layer-normed patch tokens the authors compare
(their vendored ``forward`` returning ``head(x_norm_patchtokens)``); ``save_tiny_dinov2``
writes a tiny random one in the transformers on-disk format for tests and the demo.
The reference-window selection that uses it is ``textualdeg.restoration.dino_window``.
transformers is imported inside functions only, so importing this module does not
import it.

Key mapping after huggingface/transformers
``src/transformers/models/dinov2/convert_dinov2_to_hf.py`` (Apache-2.0), updated to the
attention/SwiGLU parameter names of transformers 5.

Paper: "DINOv2: Learning Robust Visual Features without Supervision" (Oquab et al.,
2023), arXiv:2304.07193; used by "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from textualdeg.log import get_logger

logger = get_logger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HUB_PREFIXES = ("module.", "backbone.")
_HUB_WRAPPERS = ("teacher", "model", "state_dict")


# --------------------------------------------------------------------------------------
# torch-hub checkpoint -> transformers Dinov2Model
# --------------------------------------------------------------------------------------
def _unwrap_hub_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Return the tensor mapping of a hub checkpoint, without wrapper keys or prefixes."""
    if isinstance(obj, Mapping):
        for wrapper in _HUB_WRAPPERS:
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"a DINOv2 checkpoint must hold a state_dict, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _HUB_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def dinov2_config_from_hub(
    state_dict: Mapping[str, torch.Tensor], num_attention_heads: int | None = None
) -> dict[str, object]:
    """Infer ``Dinov2Config`` keyword arguments from a hub-layout state_dict.

    Args:
        state_dict: facebookresearch/dinov2 keys (``cls_token``, ``pos_embed``,
            ``patch_embed.proj.weight``, ``blocks.{i}.attn.qkv.weight``, ...).
        num_attention_heads (int | None): heads per block; the shapes do not record it,
            so the default is ``hidden_size // 64`` (true of every released DINOv2).

    Returns:
        Keyword arguments for ``transformers.Dinov2Config``.
    """
    missing = [k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight") if k not in state_dict]
    if missing:
        raise ValueError(f"not a DINOv2 torch-hub state_dict: missing {missing}")
    if any(k.startswith("register_tokens") for k in state_dict):
        raise ValueError("DINOv2 checkpoints with register tokens are not supported (Dinov2Model has none)")
    hidden = int(state_dict["cls_token"].shape[-1])
    proj = state_dict["patch_embed.proj.weight"]  # (D, C, p, p)
    patch = int(proj.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    num_positions = int(state_dict["pos_embed"].shape[1]) - 1
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise ValueError(f"pos_embed holds {num_positions} patch positions, not a square grid")
    swiglu = "blocks.0.mlp.w12.weight" in state_dict
    if swiglu:
        mlp_ratio = 4  # transformers derives the SwiGLU width from mlp_ratio 4 as DINOv2 does
    else:
        mlp_hidden = int(state_dict["blocks.0.mlp.fc1.weight"].shape[0])
        if mlp_hidden % hidden:
            raise ValueError(f"MLP width {mlp_hidden} is not a multiple of the hidden size {hidden}")
        mlp_ratio = mlp_hidden // hidden
    if num_attention_heads is None:
        if hidden % 64:
            raise ValueError(f"cannot infer the head count for hidden size {hidden}; pass num_attention_heads")
        num_attention_heads = hidden // 64
    if hidden % num_attention_heads:
        raise ValueError(f"num_attention_heads={num_attention_heads} does not divide hidden size {hidden}")
    return {
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": num_attention_heads,
        "mlp_ratio": mlp_ratio,
        "patch_size": patch,
        "image_size": side * patch,
        "num_channels": int(proj.shape[1]),
        "use_swiglu_ffn": swiglu,
        "layer_norm_eps": 1e-6,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
    }


def convert_hub_state_dict(
    state_dict: Mapping[str, torch.Tensor], legacy_names: bool = False
) -> dict[str, torch.Tensor]:
    """Rename a facebookresearch/dinov2 state_dict to transformers ``Dinov2Model`` keys.

    The fused ``qkv`` projection is split into query/key/value, a fused SwiGLU ``w12``
    into gate/up, and a missing LayerScale (``init_values=None``) becomes ones.

    Args:
        state_dict: hub-layout tensors (wrappers and ``module.``/``backbone.`` prefixes
            already removed).
        legacy_names (bool): emit transformers 4 names (``attention.attention.query``,
            ``attention.output.dense``, ``mlp.weights_in``) instead of transformers 5
            names (``attention.q_proj``, ``attention.o_proj``, ``mlp.gate_proj``).

    Returns:
        A new dict keyed for ``Dinov2Model.load_state_dict``.
    """
    src = dict(state_dict)
    hidden = int(src["cls_token"].shape[-1])
    out: dict[str, torch.Tensor] = {
        "embeddings.cls_token": src.pop("cls_token"),
        "embeddings.position_embeddings": src.pop("pos_embed"),
        "embeddings.patch_embeddings.projection.weight": src.pop("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias": src.pop("patch_embed.proj.bias"),
        "layernorm.weight": src.pop("norm.weight"),
        "layernorm.bias": src.pop("norm.bias"),
    }
    mask_token = src.pop("mask_token", None)
    out["embeddings.mask_token"] = (
        mask_token.reshape(1, hidden) if mask_token is not None else torch.zeros(1, hidden)
    )
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    if legacy_names:
        q, k, v, o = ("attention.attention.query", "attention.attention.key",
                      "attention.attention.value", "attention.output.dense")
    else:
        q, k, v, o = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    for i in range(depth):
        hub, hf = f"blocks.{i}.", f"encoder.layer.{i}."
        for norm in ("norm1", "norm2"):
            for p in ("weight", "bias"):
                out[f"{hf}{norm}.{p}"] = src.pop(f"{hub}{norm}.{p}")
        qkv_w = src.pop(f"{hub}attn.qkv.weight")  # (3D, D): query, key, value stacked
        for name, chunk in zip((q, k, v), qkv_w.chunk(3, dim=0)):
            out[f"{hf}{name}.weight"] = chunk
        qkv_b = src.pop(f"{hub}attn.qkv.bias", None)
        if qkv_b is not None:
            for name, chunk in zip((q, k, v), qkv_b.chunk(3, dim=0)):
                out[f"{hf}{name}.bias"] = chunk
        out[f"{hf}{o}.weight"] = src.pop(f"{hub}attn.proj.weight")
        out[f"{hf}{o}.bias"] = src.pop(f"{hub}attn.proj.bias")
        for j in (1, 2):
            gamma = src.pop(f"{hub}ls{j}.gamma", None)
            out[f"{hf}layer_scale{j}.lambda1"] = gamma if gamma is not None else torch.ones(hidden)
        if f"{hub}mlp.w12.weight" in src:
            w12_w, w12_b = src.pop(f"{hub}mlp.w12.weight"), src.pop(f"{hub}mlp.w12.bias")
            if legacy_names:
                out[f"{hf}mlp.weights_in.weight"], out[f"{hf}mlp.weights_in.bias"] = w12_w, w12_b
                out[f"{hf}mlp.weights_out.weight"] = src.pop(f"{hub}mlp.w3.weight")
                out[f"{hf}mlp.weights_out.bias"] = src.pop(f"{hub}mlp.w3.bias")
            else:
                # w12 = [gate; up] (2F, D): DINOv2's SwiGLU computes silu(x1) * x2
                gate_w, up_w = w12_w.chunk(2, dim=0)
                gate_b, up_b = w12_b.chunk(2, dim=0)
                out[f"{hf}mlp.gate_proj.weight"], out[f"{hf}mlp.gate_proj.bias"] = gate_w, gate_b
                out[f"{hf}mlp.up_proj.weight"], out[f"{hf}mlp.up_proj.bias"] = up_w, up_b
                out[f"{hf}mlp.down_proj.weight"] = src.pop(f"{hub}mlp.w3.weight")
                out[f"{hf}mlp.down_proj.bias"] = src.pop(f"{hub}mlp.w3.bias")
        else:
            for fc in ("fc1", "fc2"):
                for p in ("weight", "bias"):
                    out[f"{hf}mlp.{fc}.{p}"] = src.pop(f"{hub}mlp.{fc}.{p}")
    leftover = sorted(key for key in src if not key.startswith("head."))
    if leftover:
        raise ValueError(f"unexpected keys in the DINOv2 checkpoint: {leftover[:8]}")
    return out


def _read_state_file(path: Path) -> object:
    """Load a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` file onto the CPU."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_dinov2(
    path: str | Path,
    num_attention_heads: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Load DINOv2 as a frozen transformers ``Dinov2Model`` in eval mode.

    Args:
        path (str | Path): a transformers model folder (``config.json`` + weights) or a
            torch-hub checkpoint file such as ``dinov2_vitb14_pretrain.pth``.
        num_attention_heads (int | None): head count for hub files (default
            ``hidden_size // 64``); ignored for folders.
        device (str | torch.device): where the model goes.
        dtype (torch.dtype): parameter dtype.

    Returns:
        The ``Dinov2Model`` with ``requires_grad`` False everywhere.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a DINOv2 checkpoint, or a folder lacks weights.
    """
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"DINOv2 weights not found: {path} (pretrain_dino)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a folder without config.json; expected a transformers Dinov2Model folder")
        model, info = Dinov2Model.from_pretrained(str(path), dtype=dtype, output_loading_info=True)
        missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
        if missing:  # transformers would leave them randomly initialised
            raise ValueError(f"{path}: DINOv2 weights missing or mis-shaped: {missing[:8]}")
    else:
        state = _unwrap_hub_state_dict(_read_state_file(path))
        try:
            config = Dinov2Config(**dinov2_config_from_hub(state, num_attention_heads))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        model = Dinov2Model(config)
        legacy = "encoder.layer.0.attention.attention.query.weight" in model.state_dict()
        converted = convert_hub_state_dict(state, legacy_names=legacy)
        model.load_state_dict(converted, strict=True)
        model.to(dtype)
        logger.info("loaded DINOv2 torch-hub checkpoint %s (%d blocks, width %d)",
                    path.name, config.num_hidden_layers, config.hidden_size)
    model.requires_grad_(False)
    return model.eval().to(device)


def save_tiny_dinov2(
    folder: str | Path,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    patch_size: int = 14,
    image_size: int = 224,
    seed: int = 0,
) -> Path:
    """Write a tiny random-weight ``Dinov2Model`` in the transformers on-disk format.

    Args:
        folder (str | Path): output folder (created); gets ``config.json`` and
            ``model.safetensors``.
        hidden_size (int): token width.
        num_hidden_layers (int): transformer blocks.
        num_attention_heads (int): heads per block (must divide ``hidden_size``).
        patch_size (int): patch side (14 as DINOv2).
        image_size (int): native resolution of the position embeddings.
        seed (int): torch seed for the random weights.

    Returns:
        The folder path.
    """
    from transformers import Dinov2Config, Dinov2Model

    if hidden_size % num_attention_heads:
        raise ValueError(f"num_attention_heads={num_attention_heads} must divide hidden_size={hidden_size}")
    config = Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        patch_size=patch_size,
        image_size=image_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    return folder


# --------------------------------------------------------------------------------------
# patch tokens
# --------------------------------------------------------------------------------------
class DinoFeatureExtractor(nn.Module):
    """Layer-normed DINOv2 patch tokens of an image batch (the authors' ``net_ext``).

    Args:
        model (nn.Module): a transformers ``Dinov2Model`` (frozen).
        normalize (bool): apply ImageNet mean/std first (True; the authors feed raw [0, 1]).
    """

    def __init__(self, model: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def patch_size(self) -> int:
        """Patch side of the ViT (14 for DINOv2)."""
        patch = self.model.config.patch_size
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images whose sides are multiples of the patch size.

        Args:
            images (torch.Tensor): (N, 3, H, W) RGB in [0, 1].

        Returns:
            (N, (H/p)*(W/p), D) patch tokens (the CLS token is dropped).
        """
        if self.normalize:
            images = (images - self.mean.to(images)) / self.std.to(images)
        dtype = next(self.model.parameters()).dtype
        tokens = self.model(pixel_values=images.to(dtype)).last_hidden_state  # (N, 1+P, D)
        num_patches = (images.shape[-2] // self.patch_size) * (images.shape[-1] // self.patch_size)
        return tokens[:, -num_patches:].float()  # (N, P, D)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DinoFeatureExtractor",
    "convert_hub_state_dict",
    "dinov2_config_from_hub",
    "load_dinov2",
    "save_tiny_dinov2",
]

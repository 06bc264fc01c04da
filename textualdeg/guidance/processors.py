"""Cross-attention with separate, trainable key/value projections ("global K/V").

The I2T stage adds to every cross-attention (``attn2``) layer of the UNet a copy of its
``to_k``/``to_v`` projections, trained with the mapper and then used for *all* cross-
attention, conditional and unconditional alike. The authors did this by patching
``Attention.__call__`` on the class (D5 in docs/official_differences.md); here it is a
diffusers attention processor installed on ``attn2`` layers only, so self-attention and
the VAE are untouched.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Weight layouts:

* inside the UNet (``unet.state_dict()``): ``<attn2 path>.processor.to_k_global.weight``;
* our flat dict / safetensors layout (:func:`global_kv_state_dict`):
  ``<attn2 path>.to_k_global.weight``, i.e. the authors' UNet key names
  (e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_global.weight``);
* the authors' mapper file: ``<attn2 path with '.' -> '_'>_to_k.weight``, converted by
  :func:`convert_authors_global_kv`.

SD 2.1 has 16 ``attn2`` layers (6 down, 1 mid, 9 up) and 32 attention layers in all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from textualdeg.log import get_logger

logger = get_logger(__name__)

_PROCESSOR_SUFFIX = ".processor"
_AUTHORS_KEY = re.compile(
    r"^(?:(?P<block>down_blocks|up_blocks)_(?P<bidx>\d+)|mid_block)_attentions_(?P<aidx>\d+)"
    r"_transformer_blocks_(?P<tidx>\d+)_attn2_to_(?P<kv>[kv])\.(?P<param>weight|bias)$"
)


class GlobalKVAttnProcessor(nn.Module):
    """Cross-attention whose keys and values come from trainable ``to_k_global``/``to_v_global``.

    Queries, heads, output projection and everything else come from the ``Attention``
    module it is installed on; the computation is that of diffusers' ``AttnProcessor2_0``
    (``F.scaled_dot_product_attention``) with ``attn.to_k``/``attn.to_v`` replaced by this
    module's copies. With the copies equal to the layer's own weights the output equals
    the default processor's.

    Args:
        cross_attention_dim: width of ``encoder_hidden_states`` (the text width, 1024 for SD 2.1).
        inner_dim: output width of the projections (heads x head_dim: 320/640/1280 for SD 2.1).
        bias: whether the projections have a bias (SD's ``to_k``/``to_v`` have none).
    """

    def __init__(self, cross_attention_dim: int = 1024, inner_dim: int = 320, bias: bool = False):
        super().__init__()
        if cross_attention_dim <= 0 or inner_dim <= 0:
            raise ValueError(
                f"cross_attention_dim and inner_dim must be positive; got {cross_attention_dim} and {inner_dim}"
            )
        self.to_k_global = nn.Linear(cross_attention_dim, inner_dim, bias=bias)
        self.to_v_global = nn.Linear(cross_attention_dim, inner_dim, bias=bias)

    @classmethod
    def from_attention(cls, attn: Attention) -> GlobalKVAttnProcessor:
        """Build a processor whose projections are copies of ``attn.to_k``/``attn.to_v`` (same device, dtype)."""
        if attn.to_k.weight.shape != attn.to_v.weight.shape:
            raise ValueError(
                f"to_k and to_v shapes differ ({tuple(attn.to_k.weight.shape)} vs {tuple(attn.to_v.weight.shape)})"
            )
        inner_dim, cross_attention_dim = attn.to_k.weight.shape  # (inner, D_ctx)
        weight = attn.to_k.weight
        with torch.device(weight.device):
            processor = cls(
                cross_attention_dim=cross_attention_dim, inner_dim=inner_dim, bias=attn.to_k.bias is not None
            )
        processor.to(dtype=weight.dtype)
        with torch.no_grad():
            processor.to_k_global.load_state_dict(attn.to_k.state_dict())
            processor.to_v_global.load_state_dict(attn.to_v.state_dict())
        return processor

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``hidden_states`` to ``encoder_hidden_states`` through the global K/V.

        Args:
            attn: the ``Attention`` module this processor is installed on.
            hidden_states: (B, N, C) or (B, C, H, W) queries' input.
            encoder_hidden_states: (B, L, D_ctx) context (the text encoding). When None the
                layer's own ``to_k``/``to_v`` are applied to ``hidden_states`` (self-attention),
                as the authors' patched call did.
            attention_mask: optional mask, prepared as diffusers does.
            temb: timestep embedding, only for spatial-norm attention.

        Returns:
            Tensor of the shape of ``hidden_states``.
        """
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, HW, C)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, context_len, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])  # (B, h, N, L)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (B, N, inner)
        if encoder_hidden_states is None:
            key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        else:
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key = self.to_k_global(encoder_hidden_states)  # (B, L, inner)
            value = self.to_v_global(encoder_hidden_states)  # (B, L, inner)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, L, d)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, L, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)  # (B, N, inner)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)  # (B, C, H, W)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _attn2_names(unet: UNet2DConditionModel) -> list[str]:
    """Module paths of the cross-attention layers, in the UNet's processor order."""
    return [key[: -len(_PROCESSOR_SUFFIX)] for key in unet.attn_processors if key.endswith("attn2" + _PROCESSOR_SUFFIX)]


def global_kv_processors(unet: UNet2DConditionModel) -> dict[str, GlobalKVAttnProcessor]:
    """The installed global-K/V processors, keyed by ``attn2`` module path (empty if none)."""
    return {
        name: unet.get_submodule(name).processor
        for name in _attn2_names(unet)
        if isinstance(unet.get_submodule(name).processor, GlobalKVAttnProcessor)
    }


def install_global_kv(unet: UNet2DConditionModel) -> dict[str, GlobalKVAttnProcessor]:
    """Install a :class:`GlobalKVAttnProcessor` on every ``attn2`` layer (and only there).

    Each processor starts as a copy of its layer's ``to_k``/``to_v`` (same device and
    dtype), so the UNet's output is unchanged until the copies are trained or loaded.
    Self-attention layers keep their processors. The processors are submodules of the
    UNet: ``unet.to(...)`` moves them and ``unet.requires_grad_(False)`` freezes them, so
    for stage-1 training call ``requires_grad_(True)`` on them after freezing the UNet.

    Args:
        unet: a diffusers UNet (16 ``attn2`` layers for SD 2.1).

    Returns:
        The installed processors keyed by ``attn2`` module path, e.g.
        ``'down_blocks.0.attentions.0.transformer_blocks.0.attn2'``.

    Raises:
        ValueError: the UNet has no ``attn2`` layer, or global K/V is already installed.
    """
    if global_kv_processors(unet):
        raise ValueError("install_global_kv: this UNet already has global-K/V processors installed")
    processors = dict(unet.attn_processors)
    installed: dict[str, GlobalKVAttnProcessor] = {}
    for name in _attn2_names(unet):
        installed[name] = GlobalKVAttnProcessor.from_attention(unet.get_submodule(name))
        processors[name + _PROCESSOR_SUFFIX] = installed[name]
    if not installed:
        raise ValueError("install_global_kv: the UNet has no cross-attention (attn2) layers")
    num_attention_layers = len(processors)  # set_attn_processor empties the dict it is given
    unet.set_attn_processor(processors)
    logger.info("installed %d global-K/V processors (of %d attention layers)", len(installed), num_attention_layers)
    return installed


def global_kv_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The global K/V weights as a flat dict for safetensors.

    Returns:
        ``{'<attn2 path>.to_k_global.weight': (inner, D_ctx), '<attn2 path>.to_v_global.weight': ...}``
        (detached; 32 tensors for SD 2.1).

    Raises:
        ValueError: no global-K/V processor is installed.
    """
    processors = global_kv_processors(unet)
    if not processors:
        raise ValueError("global_kv_state_dict: no global-K/V processors installed (call install_global_kv first)")
    return {
        f"{name}.{key}": tensor.detach()
        for name, processor in processors.items()
        for key, tensor in processor.state_dict().items()
    }


def convert_authors_global_kv(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' mapper-file K/V keys to our flat layout.

    ``down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_k.weight`` becomes
    ``down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k_global.weight``.

    Args:
        tensors: a mapping holding only authors'-layout K/V keys.

    Returns:
        The same tensors under our keys.

    Raises:
        ValueError: a key that is not an authors' K/V key (named).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = _AUTHORS_KEY.match(key)
        if match is None:
            raise ValueError(f"convert_authors_global_kv: {key!r} is not an authors' global K/V key")
        block = f"{match['block']}.{match['bidx']}" if match["block"] else "mid_block"
        name = f"{block}.attentions.{match['aidx']}.transformer_blocks.{match['tidx']}.attn2"
        out[f"{name}.to_{match['kv']}_global.{match['param']}"] = tensor
    return out


def is_authors_global_kv_key(key: str) -> bool:
    """True for a key of the authors' mapper file that holds a global K/V projection."""
    return _AUTHORS_KEY.match(key) is not None


def load_global_kv(
    unet: UNet2DConditionModel,
    tensors: Mapping[str, torch.Tensor],
    *,
    source: str = "global K/V weights",
) -> None:
    """Copy global K/V weights (our flat layout) into the installed processors.

    Args:
        unet: a UNet on which :func:`install_global_kv` was called.
        tensors: ``{'<attn2 path>.to_k_global.weight': ...}`` as written by
            :func:`global_kv_state_dict` (or converted by :func:`convert_authors_global_kv`).
            Cast to each processor's dtype and device.
        source: name of the file the tensors came from, for error messages.

    Raises:
        ValueError: processors not installed, or keys / shapes that do not match the UNet
            (naming ``source`` and the offending keys).
    """
    expected = {key: tensor.shape for key, tensor in global_kv_state_dict(unet).items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: global K/V keys do not match the UNet ({len(expected)} expected); "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise ValueError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, the UNet expects {tuple(shape)}")
    for name, processor in global_kv_processors(unet).items():
        prefix = name + "."
        own = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        processor.load_state_dict(own)

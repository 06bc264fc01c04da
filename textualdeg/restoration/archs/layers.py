"""Building blocks shared by the restoration backbones (one place each).

Holds the channel layer norms, NAFNet's ``SimpleGate``/``NAFBlock``, the test-time local
average pool (TLC), Restormer's MDTA/GDFN transformer block with its patch embedding and
resizing modules, and the pad-to-multiple helper the models use.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Ported (re-written, same computation and parameter names) from:
- megvii-research/NAFNet@2b4af71 ``basicsr/models/archs/{NAFNet_arch,arch_util,local_arch}.py``
  (MIT license): ``LayerNorm2d``, ``SimpleGate``, ``NAFBlock``, the TLC ``AvgPool2d``;
- swz30/Restormer@df766d5 ``basicsr/models/archs/restormer_arch.py`` (Restormer license,
  research use): ``LayerNorm``, ``Attention`` (MDTA), ``FeedForward`` (GDFN),
  ``TransformerBlock``, ``OverlapPatchEmbed``, ``Downsample``, ``Upsample``.

Parameter names equal the official ones, so official checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LayerNorm2d",
    "BiasFreeLayerNorm2d",
    "RestormerLayerNorm",
    "SimpleGate",
    "NAFBlock",
    "LocalAvgPool2d",
    "replace_global_pools",
    "MDTA",
    "GDFN",
    "TransformerBlock",
    "transformer_stage",
    "OverlapPatchEmbed",
    "Downsample",
    "Upsample",
    "LAYER_NORM_TYPES",
    "pad_to_multiple",
    "check_image_input",
    "PaddedBackbone",
    "as_int_tuple",
    "FuseFn",
    "no_fuse",
    "crop_stages",
]

# ``fuse(level, x) -> x``: hook a guided subclass passes to a backbone's ``_forward_padded``;
# called on the feature entering each encoder level and the bottleneck (same shape out).
FuseFn = Callable[[int, torch.Tensor], torch.Tensor]


def no_fuse(level: int, x: torch.Tensor) -> torch.Tensor:
    """The identity ``fuse`` hook (plain backbone)."""
    return x

def crop_stages(out: Any, padded_hw: Sequence[int], hw: Sequence[int]) -> Any:
    """Crop every tensor of a stage tuple to its share of the unpadded size.

    Args:
        out: a NamedTuple whose fields are lists of (B, C, H_i, W_i) tensors computed on a
            padded input of size ``padded_hw``; an output at scale ``H_i / H_pad`` keeps
            ``ceil(h * H_i / H_pad)`` rows (and likewise columns).
        padded_hw: (H_pad, W_pad).
        hw: (h, w), the input size before padding.

    Returns:
        The same type with cropped tensors.
    """
    (hp, wp), (h, w) = padded_hw, hw

    def crop(t: torch.Tensor) -> torch.Tensor:
        return t[..., : math.ceil(h * t.shape[-2] / hp), : math.ceil(w * t.shape[-1] / wp)]

    return type(out)(*[[crop(t) for t in field] for field in out])


LAYER_NORM_TYPES = ("WithBias", "BiasFree")


# --------------------------------------------------------------------------------------
# argument and input checks
# --------------------------------------------------------------------------------------
class PaddedBackbone(nn.Module):
    """Base of the plain backbones: one ``forward`` for NAFNet, Restormer and PromptIR.

    ``forward(x)`` checks the input channels, pads right/bottom to ``pad_multiple`` with
    ``pad_mode`` (NAFNet's official check_image_size zero-pads; Restormer's and PromptIR's
    test scripts reflect-pad), runs ``_forward_padded`` and crops back. Subclasses set
    ``input_channels``, ``pad_multiple`` and ``pad_mode`` and define ``_forward_padded``.
    """

    input_channels: int
    pad_multiple: int
    pad_mode: str = "reflect"

    def forward(self, x: torch.Tensor, stages: bool = False) -> Any:
        """Restore a batch.

        Args:
            x: (B, input_channels, H, W) in [0, 1], any H and W.
            stages: return every output of a multi-stage network (``_forward_stages_padded``;
                SFNet's scales, DSRIR's stages), each cropped to its share of (H, W), for
                the stage losses (``restoration/stage_losses.py``). Going through
                ``forward`` keeps DDP's gradient hooks.

        Returns:
            (B, output channels, H, W); with ``stages``, the network's stage outputs.
        """
        check_image_input(x, self.input_channels)
        h, w = x.shape[-2:]
        padded = self._pad(x)
        if stages:
            return crop_stages(self._forward_stages_padded(padded), padded.shape[-2:], (h, w))
        out = self._forward_padded(padded)
        return out[:, :, :h, :w]

    def _forward_stages_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> Any:
        """Every output of a multi-stage network (a NamedTuple of tensor lists, final first)."""
        raise ValueError(f"{type(self).__name__} has a single output: train it with a pixel loss "
                         f"(train.pixel_opt), not a stage loss")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad right/bottom to a multiple of ``pad_multiple`` with ``pad_mode``."""
        return pad_to_multiple(x, self.pad_multiple, mode=self.pad_mode)

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        raise NotImplementedError


def as_int_tuple(name: str, value, length: int | None = None, minimum: int = 0) -> tuple[int, ...]:
    """Validate a sequence of ints (YAML gives lists) and return it as a tuple.

    Args:
        name: argument name used in the error message.
        value: the sequence to check.
        length: required length, or None for any length.
        minimum: smallest allowed entry.

    Returns:
        The entries as a tuple of ints.

    Raises:
        ValueError: naming ``name`` and ``value`` when it is not such a sequence.
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of ints, got {value!r}")
    items = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{name} must contain ints, got {value!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")
    return items


def check_image_input(x: torch.Tensor, channels: int, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a (B, channels, H, W) tensor.

    Args:
        x: the input batch.
        channels: expected channel count.
        name: argument name used in the message.
    """
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{name} must have shape (B, {channels}, H, W); got {tuple(x.shape)}"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad the right and bottom of ``x`` so H and W are multiples of ``multiple``.

    Args:
        x: (B, C, H, W) tensor.
        multiple: target multiple (1 disables padding).
        mode: ``"constant"`` (zeros, NAFNet's ``check_image_size``) or ``"reflect"``
            (Restormer's test script). Reflect falls back to ``"replicate"`` when a side is
            too small to reflect (pad >= size).

    Returns:
        (B, C, H', W') tensor with H' = ceil(H / multiple) * multiple, same for W'.
    """
    h, w = x.shape[-2:]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "constant":
        return F.pad(x, (0, pad_w, 0, pad_h))
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


# --------------------------------------------------------------------------------------
# normalisation and gating
# --------------------------------------------------------------------------------------
class LayerNorm2d(nn.Module):
    """Layer norm over the channel dimension of an NCHW tensor (NAFNet's LayerNorm2d).

    Computes ``(x - mean_c) / sqrt(var_c + eps) * weight + bias`` per pixel, with the
    biased variance. Plain tensor ops (autograd derives the backward that NAFNet's
    hand-written ``LayerNormFunction`` implements).

    Args:
        channels (int): number of channels C.
        eps (float): added to the variance. Default 1e-6 (NAFNet); Restormer's WithBias
            norm uses 1e-5.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, H, W) over C; returns (B, C, H, W)."""
        mu = x.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (x - mu).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class BiasFreeLayerNorm2d(nn.Module):
    """Restormer's BiasFree layer norm over channels: ``x / sqrt(var_c + eps) * weight``.

    The input is not centred (only the variance removes the mean), as in the official code.

    Args:
        channels (int): number of channels C.
        eps (float): added to the variance. Default 1e-5.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, H, W) over C; returns (B, C, H, W)."""
        var = x.var(1, keepdim=True, unbiased=False)  # (B, 1, H, W)
        return x / (var + self.eps).sqrt() * self.weight.view(1, -1, 1, 1)


class RestormerLayerNorm(nn.Module):
    """Restormer's ``LayerNorm`` wrapper: the norm lives in ``body`` (checkpoint keys
    ``norm1.body.weight`` / ``norm1.body.bias``).

    Args:
        dim (int): channels.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``.
    """

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias") -> None:  # noqa: N803
        super().__init__()
        if LayerNorm_type not in LAYER_NORM_TYPES:
            raise ValueError(
                f"LayerNorm_type must be one of {LAYER_NORM_TYPES}, got {LayerNorm_type!r}"
            )
        if LayerNorm_type == "BiasFree":
            self.body: nn.Module = BiasFreeLayerNorm2d(dim, eps=1e-5)
        else:
            self.body = LayerNorm2d(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.body(x)


class SimpleGate(nn.Module):
    """NAFNet's gate: split channels in two halves and multiply them, (B, 2C, H, W) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


# --------------------------------------------------------------------------------------
# NAFNet
# --------------------------------------------------------------------------------------
class NAFBlock(nn.Module):
    """NAFNet's nonlinear-activation-free block.

    ``y = x + beta * conv3(SCA(SG(dwconv(conv1(LN(x))))))`` then
    ``out = y + gamma * conv5(SG(conv4(LN(y))))``; beta and gamma start at zero, so a fresh
    block is the identity.

    Args:
        c (int): channels.
        dw_expand (int): expansion of the depthwise branch (official ``DW_Expand``). Default 2.
        ffn_expand (int): expansion of the FFN branch (official ``FFN_Expand``). Default 2.
        drop_out_rate (float): dropout after each branch. Default 0.
    """

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0) -> None:
        super().__init__()
        dw_channel = c * dw_expand
        ffn_channel = c * ffn_expand
        # Registration order fixes the state_dict order of the official checkpoints:
        # beta, gamma (own parameters) first, then conv1..3, sca, conv4, conv5, norm1, norm2.
        self.conv1 = nn.Conv2d(c, dw_channel, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, kernel_size=3, padding=1, groups=dw_channel, bias=True)
        self.conv3 = nn.Conv2d(dw_channel // 2, c, kernel_size=1, bias=True)
        # Simplified channel attention; index 0 is swapped for LocalAvgPool2d by TLC.
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw_channel // 2, dw_channel // 2, kernel_size=1, bias=True),
        )
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, ffn_channel, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, kernel_size=1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = self.conv2(self.conv1(self.norm1(inp)))  # (B, 2C, H, W)
        x = self.sg(x)  # (B, C, H, W)
        x = x * self.sca(x)
        x = self.dropout1(self.conv3(x))
        y = inp + x * self.beta
        x = self.sg(self.conv4(self.norm2(y)))
        x = self.dropout2(self.conv5(x))
        return y + x * self.gamma


class LocalAvgPool2d(nn.Module):
    """Test-time local converter (TLC) pool: a stride-1 box average of a fixed kernel,
    replicate-padded back to the input size; the global average when the kernel covers the
    whole map. Replaces ``AdaptiveAvgPool2d(1)`` in NAFNetLocal; it has no parameters.

    Same computation as NAFNet's ``local_arch.AvgPool2d`` (``fast_imp=False``) once its
    kernel has been fixed by the calibration forward at the training size.

    Args:
        kernel_size (tuple[int, int]): (kh, kw) box size in pixels of this feature map.
    """

    def __init__(self, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        kernel_size = as_int_tuple("kernel_size", kernel_size, length=2, minimum=1)
        self.kernel_size = kernel_size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) when the kernel covers the map, else (B, C, H, W)."""
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        if kh >= h and kw >= w:
            return F.adaptive_avg_pool2d(x, 1)
        # Summed-area table: one O(HW) pass, whatever the kernel size.
        s = x.cumsum(dim=-1).cumsum(dim=-2)  # (B, C, H, W)
        s = F.pad(s, (1, 0, 1, 0))  # (B, C, H+1, W+1)
        k1, k2 = min(h, kh), min(w, kw)
        out = s[:, :, k1:, k2:] + s[:, :, :-k1, :-k2] - s[:, :, :-k1, k2:] - s[:, :, k1:, :-k2]
        out = out / (k1 * k2)  # (B, C, H-k1+1, W-k2+1)
        oh, ow = out.shape[-2:]
        pad = ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2)
        return F.pad(out, pad, mode="replicate")  # (B, C, H, W)


def replace_global_pools(module: nn.Module, kernel_size: tuple[int, int]) -> int:
    """Swap every ``AdaptiveAvgPool2d(1)`` inside ``module`` for ``LocalAvgPool2d(kernel_size)``.

    This is TLC's ``replace_layers`` with the kernel given explicitly (the official code
    fixes it lazily during a calibration forward). Call it once per resolution level with
    that level's kernel (see ``NAFNetLocal.local_kernel_size``).

    Args:
        module: module whose descendants are converted in place.
        kernel_size: (kh, kw) of the local pool at this level.

    Returns:
        The number of pools replaced.
    """
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, LocalAvgPool2d(kernel_size))
                count += 1
    return count


# --------------------------------------------------------------------------------------
# Restormer
# --------------------------------------------------------------------------------------
class MDTA(nn.Module):
    """Multi-Dconv head transposed attention (Restormer's ``Attention``).

    Channel attention: q, k, v from a 1x1 then depthwise 3x3 conv; q and k L2-normalised
    over pixels; a learnable per-head temperature scales the (C/h x C/h) logits.

    Args:
        dim (int): channels C (divisible by ``num_heads``).
        num_heads (int): heads.
        bias (bool): conv biases.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads must divide dim; got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)  # 3 x (B, C, H, W)
        q = q.reshape(b, self.num_heads, c // self.num_heads, h * w)  # (B, nh, C/nh, HW)
        k = k.reshape(b, self.num_heads, c // self.num_heads, h * w)  # (B, nh, C/nh, HW)
        v = v.reshape(b, self.num_heads, c // self.num_heads, h * w)  # (B, nh, C/nh, HW)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (B, nh, C/nh, C/nh)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).reshape(b, c, h, w)  # (B, nh, C/nh, HW) -> (B, C, H, W)
        return self.project_out(out)


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network (Restormer's ``FeedForward``).

    Args:
        dim (int): channels C.
        ffn_expansion_factor (float): hidden width is ``int(dim * ffn_expansion_factor)``.
        bias (bool): conv biases.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        if hidden < 1:
            raise ValueError(
                f"ffn_expansion_factor too small: dim={dim}, ffn_expansion_factor={ffn_expansion_factor}"
            )
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)  # 2 x (B, hidden, H, W)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Restormer block: ``x + MDTA(LN(x))`` then ``+ GDFN(LN(.))``.

    Args:
        dim (int): channels.
        num_heads (int): MDTA heads.
        ffn_expansion_factor (float): GDFN expansion.
        bias (bool): conv biases.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # noqa: N803
    ) -> None:
        super().__init__()
        self.norm1 = RestormerLayerNorm(dim, LayerNorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = RestormerLayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(
    num: int,
    dim: int,
    num_heads: int,
    ffn_expansion_factor: float,
    bias: bool,
    LayerNorm_type: str,  # noqa: N803
) -> nn.Sequential:
    """``num`` TransformerBlocks in an ``nn.Sequential`` (keys ``<stage>.<i>.<...>``)."""
    return nn.Sequential(
        *[TransformerBlock(dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(num)]
    )


class OverlapPatchEmbed(nn.Module):
    """3x3 conv patch embedding (key ``proj``), (B, in_c, H, W) -> (B, embed_dim, H, W).

    Args:
        in_c (int): input channels.
        embed_dim (int): output channels.
        bias (bool): conv bias (the official models always build it without).
    """

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Conv3x3 (C -> C/2) then PixelUnshuffle(2): (B, C, H, W) -> (B, 2C, H/2, W/2).

    Args:
        n_feat (int): input channels C (even).
    """

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, padding=1, bias=False),
            nn.PixelUnshuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Conv3x3 (C -> 2C) then PixelShuffle(2): (B, C, H, W) -> (B, C/2, 2H, 2W).

    Args:
        n_feat (int): input channels C (even).
    """

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, padding=1, bias=False),
            nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

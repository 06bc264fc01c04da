"""DRSformer, the sparse-transformer deraining backbone, and its Rain200L/SPA variant.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334, which uses DRSformer
("Learning A Sparse Transformer Network for Effective Image Deraining", Chen et al.,
CVPR 2023, arXiv:2303.11950) as its deraining backbone.

Ported from cschenxiang/DRSformer (no license file upstream):
``DRSformer``       @8ac1db3 ``basicsr/models/archs/DRSformer_arch.py``;
``DRSformer200LSPA`` @94a066e ``basicsr/models/archs/DRSformer_arch_200L+SPA.py`` (same
class name ``DRSformer`` upstream; the authors of TextualDegRemoval call it
``DRSformer200L_SPA``). Same constructor arguments and parameter names, so the state_dicts
equal ``tests/restoration/archs/reference/drsformer*_default.keys.tsv`` and official
checkpoints load with ``strict=True``.

The network is Restormer's 4-level U-Net with three changes:

* attention is TKSA (top-k sparse attention): Restormer's transposed channel attention
  whose (C/h x C/h) logits are masked to their top C/2, 2C/3, 3C/4 and 4C/5 entries per
  row, four softmaxes mixed by learnable weights (initialised to 0.2);
* the feed-forward is MSFN (mixed-scale): parallel depthwise 3x3 and 5x5 branches with
  ReLU, cross-mixed, a second depthwise 3x3 / 5x5 stage, then a 1x1;
* the full model adds MEFC (mixture-of-experts feature compensator, upstream ``subnet``)
  after the patch embedding (``encoder_level0``) and as ``refinement``. The Rain200L/SPA
  variant has neither.

Differences from the upstream code, none of which changes the computation: the four masked
softmaxes are mixed before the product with v (one matmul instead of four) and the four
top-k selections come from one sorted ``topk`` (equal sets unless logits tie exactly);
activations without parameters are functional calls (upstream's ``nn.ReLU`` modules and
``Dropout(0)`` hold no parameters); arguments are checked up front.

Outputs equal the upstream ones to float32 rounding (a committed fixture checks 1e-5), with
one caveat that belongs to TKSA itself: the top-k mask is discontinuous, so where a logit
sits on a top-k boundary within rounding noise, any change of summation order (ours, or
upstream's own run with another CPU thread count) can flip it and move the output by
~1e-2 on large perturbed models.

The official network needs H and W divisible by 8; its ``test.py`` reflect-pads
right/bottom, and ``forward`` does the same and crops back.

Hook points for subclasses (as ``restormer.py``): ``pad_multiple`` and
``_forward_padded(inp, fuse)``. ``fuse(level, x)`` sees the feature entering
``encoder_level1`` (level 0, ``dim`` channels, full resolution; after MEFC in the full
model), ``encoder_level2`` (1, 2*dim, 1/2), ``encoder_level3`` (2, 4*dim, 1/4) and
``latent`` (3, 8*dim, 1/8).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, no_fuse
from textualdeg.restoration.archs.memory import CheckpointedSequential, active_checkpointing, checkpoint_call
from textualdeg.restoration.archs.restormer import add_transformer_unet, check_restormer_args, transformer_unet_forward
from textualdeg.restoration.archs.restormer_blocks import OverlapPatchEmbed, TransformerBlock, transformer_stage

__all__ = [
    "TKSA",
    "MSFN",
    "SparseTransformerBlock",
    "sparse_transformer_stage",
    "MEFC",
    "DRSformer",
    "DRSformer200LSPA",
    "check_drsformer_args",
]


# --------------------------------------------------------------------------------------
# sparse transformer block
# --------------------------------------------------------------------------------------
class TKSA(nn.Module):
    """Top-k sparse attention (DRSformer's ``Attention``).

    q, k, v come from a 1x1 then depthwise 3x3 conv; q and k are L2-normalised over pixels
    and a learnable per-head temperature scales the (C/h x C/h) channel logits. Four
    softmaxes keep the top ``int(c/2)``, ``int(c*2/3)``, ``int(c*3/4)`` and ``int(c*4/5)``
    logits of each row (c = C/h) and are summed with the weights ``attn1..attn4``.

    Args:
        dim (int): channels C (divisible by ``num_heads``, with C/h >= 2).
        num_heads (int): heads.
        bias (bool): conv biases.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads or dim // num_heads < 2:
            raise ValueError(
                f"TKSA needs num_heads to divide dim with at least 2 channels per head; "
                f"got dim={dim}, num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        ch = c // self.num_heads
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)  # 3 x (B, C, H, W)
        q = F.normalize(q.reshape(b, self.num_heads, ch, h * w), dim=-1)  # (B, nh, C/nh, HW)
        k = F.normalize(k.reshape(b, self.num_heads, ch, h * w), dim=-1)  # (B, nh, C/nh, HW)
        v = v.reshape(b, self.num_heads, ch, h * w)  # (B, nh, C/nh, HW)
        logits = (q @ k.transpose(-2, -1)) * self.temperature  # (B, nh, C/nh, C/nh)

        # the upstream expressions, so the kept counts match for every width
        keep = (int(ch / 2), int(ch * 2 / 3), int(ch * 3 / 4), int(ch * 4 / 5))
        ranked = logits.topk(keep[-1], dim=-1).indices  # (B, nh, C/nh, k_max), best first
        attn = torch.zeros_like(logits)
        for n, weight in zip(keep, (self.attn1, self.attn2, self.attn3, self.attn4)):
            kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, ranked[..., :n], True)
            attn = attn + logits.masked_fill(~kept, float("-inf")).softmax(dim=-1) * weight
        out = (attn @ v).reshape(b, c, h, w)  # (B, nh, C/nh, HW) -> (B, C, H, W)
        return self.project_out(out)


class MSFN(nn.Module):
    """Mixed-scale feed-forward network (DRSformer's ``FeedForward``).

    ``project_in`` (C -> 2h), depthwise 3x3 and 5x5 branches with ReLU, each split in two;
    the first halves of both branches feed a grouped 3x3, the second halves a grouped 5x5
    (both 2h -> h, ReLU); the results are concatenated and ``project_out`` maps 2h -> C.

    Args:
        dim (int): channels C.
        ffn_expansion_factor (float): h = ``int(dim * ffn_expansion_factor)``.
        bias (bool): conv biases.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        if hidden < 1:
            raise ValueError(f"ffn_expansion_factor too small: dim={dim}, ffn_expansion_factor={ffn_expansion_factor}")
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(hidden * 2, hidden * 2, 5, padding=2, groups=hidden * 2, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(hidden * 2, hidden, 3, padding=1, groups=hidden, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(hidden * 2, hidden, 5, padding=2, groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden * 2, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = self.project_in(x)  # (B, 2h, H, W)
        a3, b3 = F.relu(self.dwconv3x3(x)).chunk(2, dim=1)  # 2 x (B, h, H, W)
        a5, b5 = F.relu(self.dwconv5x5(x)).chunk(2, dim=1)  # 2 x (B, h, H, W)
        x1 = F.relu(self.dwconv3x3_1(torch.cat([a3, a5], dim=1)))  # (B, h, H, W)
        x2 = F.relu(self.dwconv5x5_1(torch.cat([b3, b5], dim=1)))  # (B, h, H, W)
        return self.project_out(torch.cat([x1, x2], dim=1))


class SparseTransformerBlock(TransformerBlock):
    """DRSformer's sparse transformer block: ``x + TKSA(LN(x))`` then ``+ MSFN(LN(.))``.

    Restormer's block (same arguments and parameter names) with TKSA and MSFN.
    """

    attention_cls = TKSA
    ffn_cls = MSFN


def sparse_transformer_stage(
    num: int,
    dim: int,
    num_heads: int,
    ffn_expansion_factor: float,
    bias: bool,
    LayerNorm_type: str,  # noqa: N803
) -> CheckpointedSequential:
    """``num`` SparseTransformerBlocks in a stage (keys ``<stage>.<i>.<...>``)."""
    return transformer_stage(num, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type,
                             block=SparseTransformerBlock)


# --------------------------------------------------------------------------------------
# MEFC: mixture-of-experts feature compensator
# --------------------------------------------------------------------------------------
class _SepConv(nn.Module):
    """Two rounds of depthwise k x k + pointwise conv with a ReLU between (key ``op``)."""

    def __init__(self, c: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.op = nn.Sequential(
            nn.Conv2d(c, c, kernel_size, padding=pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c, c, kernel_size, padding=pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _DilConv(nn.Module):
    """Depthwise k x k conv with dilation 2, then a pointwise conv (key ``op``)."""

    def __init__(self, c: int, kernel_size: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(c, c, kernel_size, padding=kernel_size - 1, dilation=2, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _ConvReLU(nn.Module):
    """Pointwise conv then ReLU (upstream ``ReLUConv``; key ``op``)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.op = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


# The eight experts, in the upstream order (their index is the parameter key).
MEFC_OPERATIONS = (
    "sep_conv_1x1",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "dil_conv_7x7",
    "avg_pool_3x3",
)


def _make_operation(name: str, c: int) -> nn.Module:
    """The expert ``name`` (an entry of ``MEFC_OPERATIONS``) on ``c`` channels, stride 1."""
    kind, size = name.rsplit("_", 1)
    kernel = int(size.split("x")[0])
    if kind == "sep_conv":
        return _SepConv(c, kernel)
    if kind == "dil_conv":
        return _DilConv(c, kernel)
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class _MixedOperation(nn.Module):
    """All experts on one input, each scaled by its weight, then a 1x1 conv and ReLU
    (upstream ``OperationLayer``; keys ``_ops.<expert>``, ``_out.0``)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self._ops = nn.ModuleList([_make_operation(name, c) for name in MEFC_OPERATIONS])
        self._out = nn.Sequential(nn.Conv2d(c * len(MEFC_OPERATIONS), c, 1, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), weights (B, n_ops) -> (B, C, H, W)."""
        states = [op(x) * weights[:, i].view(-1, 1, 1, 1) for i, op in enumerate(self._ops)]
        return self._out(torch.cat(states, dim=1))  # (B, n_ops*C, H, W) -> (B, C, H, W)


class _OperationGroup(nn.Module):
    """A pointwise conv, then ``steps`` residual mixed operations (upstream ``GroupOLs``).

    Activation checkpointing (memory.py) recomputes the group (``level``) or each mixed
    operation (``block``): at full resolution the eight experts keep most of DRSformer's
    activations.
    """

    checkpointing: str = "none"

    def __init__(self, steps: int, c: int) -> None:
        super().__init__()
        self.preprocess = _ConvReLU(c)
        self._ops = nn.ModuleList([_MixedOperation(c) for _ in range(steps)])

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), weights (B, steps, n_ops) -> (B, C, H, W)."""
        mode = active_checkpointing(self)
        if mode == "level":
            return checkpoint_call(self, self._steps, x, weights, False)
        return self._steps(x, weights, mode == "block")

    def _steps(self, x: torch.Tensor, weights: torch.Tensor, per_step: bool) -> torch.Tensor:
        x = self.preprocess(x)
        for i, op in enumerate(self._ops):
            y = checkpoint_call(op, op, x, weights[:, i]) if per_step else op(x, weights[:, i])
            x = F.relu(y + x)
        return x


class _OperationAttention(nn.Module):
    """Expert logits from the global average: Linear -> ReLU -> Linear (upstream ``OALayer``)."""

    def __init__(self, channel: int, steps: int, num_ops: int) -> None:
        super().__init__()
        self.steps = steps
        self.num_ops = num_ops
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.ca_fc = nn.Sequential(
            nn.Linear(channel, 2 * steps * num_ops),
            nn.ReLU(),
            nn.Linear(2 * steps * num_ops, steps * num_ops),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, steps, n_ops)."""
        y = self.ca_fc(self.avg_pool(x).flatten(1))  # (B, C) -> (B, steps*n_ops)
        return y.view(-1, self.steps, self.num_ops)


class MEFC(nn.Module):
    """Mixture-of-experts feature compensator (DRSformer's ``subnet``).

    Eight experts (separable convs 1/3/5/7, dilated convs 3/5/7, 3x3 average pool) are
    applied ``steps`` times with residuals; their weights per step are a softmax over the
    logits an MLP computes from the global average of the input.

    Args:
        dim (int): channels.
        steps (int): mixed-operation steps. Default 4 (the only value upstream uses).

    Keys: ``layers.0`` (the expert-weight MLP) and ``layers.1`` (the operations), the
    upstream layout.
    """

    def __init__(self, dim: int, steps: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [_OperationAttention(dim, steps, len(MEFC_OPERATIONS)), _OperationGroup(steps, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        attention, group = self.layers
        return group(x, attention(x).softmax(dim=-1))  # weights (B, steps, n_ops)


# --------------------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------------------
def check_drsformer_args(
    inp_channels: int,
    out_channels: int,
    dim: int,
    num_blocks: Sequence[int],
    heads: Sequence[int],
    ffn_expansion_factor: float,
    LayerNorm_type: str,  # noqa: N803
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate the DRSformer constructor arguments.

    Returns:
        ``(num_blocks, heads)`` as tuples.

    Raises:
        ValueError: naming the argument and its value.
    """
    num_blocks, heads = check_restormer_args(
        inp_channels, out_channels, dim, num_blocks, 0, heads, ffn_expansion_factor, LayerNorm_type
    )
    for level, width in enumerate((dim, 2 * dim, 4 * dim, 8 * dim)):
        if width // heads[level] < 2:  # TKSA keeps int(c/2) logits per row: c >= 2
            raise ValueError(
                f"heads[{level}]={heads[level]} leaves {width // heads[level]} channel per head at "
                f"width {width}; TKSA needs at least 2 (dim={dim}, heads={heads})"
            )
    if inp_channels != out_channels:
        raise ValueError(
            "the input residual needs inp_channels == out_channels; "
            f"got inp_channels={inp_channels}, out_channels={out_channels}"
        )
    return num_blocks, heads


@ARCH_REGISTRY.register()
class DRSformer(PaddedBackbone):
    """DRSformer: a 4-level U-Net of TKSA/MSFN blocks with MEFC at both ends.

    Args:
        inp_channels (int): input channels. Default 3.
        out_channels (int): output channels (equal to ``inp_channels``: global residual).
            Default 3.
        dim (int): channels at full resolution. Default 48.
        num_blocks (Sequence[int]): blocks per level (level 4 = ``latent``).
            Default (4, 6, 6, 8).
        heads (Sequence[int]): attention heads per level. Default (1, 2, 4, 8).
        ffn_expansion_factor (float): MSFN expansion. Default 2.66.
        bias (bool): biases in the attention/FFN convs. Default False.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``. Default ``"WithBias"``.

    Input (B, inp_channels, H, W) in [0, 1], any H and W; output (B, out_channels, H, W).
    (Upstream has no ``num_refinement_blocks``: its refinement is one MEFC.)
    """

    # MEFC after the patch embedding and as refinement; the Rain200L/SPA variant has none.
    use_mefc: bool = True

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # noqa: N803
    ) -> None:
        super().__init__()
        num_blocks, heads = check_drsformer_args(
            inp_channels, out_channels, dim, num_blocks, heads, ffn_expansion_factor, LayerNorm_type
        )
        self.inp_channels = inp_channels
        self.input_channels = inp_channels
        self.out_channels = out_channels
        ffn, ln = ffn_expansion_factor, LayerNorm_type

        # Registration order fixes the upstream state_dict order.
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level0 = MEFC(dim) if self.use_mefc else nn.Identity()
        add_transformer_unet(self, dim, num_blocks, heads, ffn, bias, ln, block=SparseTransformerBlock)
        self.refinement = MEFC(dim * 2) if self.use_mefc else nn.Identity()
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, padding=1, bias=bias)

        self.pad_multiple = 8

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        """Run the network on an input whose H and W are multiples of 8.

        Args:
            inp: (B, inp_channels, H, W), padded.
            fuse: optional ``fuse(level, x) -> x`` on the features entering each encoder
                level and ``latent`` (see the module doc).

        Returns:
            (B, out_channels, H, W).
        """
        fuse = fuse if fuse is not None else no_fuse
        inp_enc1 = fuse(0, self.encoder_level0(self.patch_embed(inp)))  # (B, dim, H, W)
        x = self.refinement(transformer_unet_forward(self, inp_enc1, fuse))  # (B, 2dim, H, W)
        return self.output(x) + inp


@ARCH_REGISTRY.register(name="DRSformer200L_SPA")
class DRSformer200LSPA(DRSformer):
    """DRSformer without MEFC, as its authors train it on Rain200L and SPA-Data.

    Same arguments, input and output as :class:`DRSformer`; the state_dict lacks the
    ``encoder_level0.*`` and ``refinement.*`` entries (upstream
    ``DRSformer_arch_200L+SPA.py``).
    """

    use_mefc = False

"""DSRIR: a progressive all-in-one restoration network of three sub-networks.

Paper: "DSRIR: Dynamic spatial refinement learning for progressive all-in-one image
restoration" (the official README names no authors, venue or arXiv id; its citation
block is empty), used here as a backbone for "Improving Image Restoration through
Removing Degradations in Textual Representations" (Lin et al., CVPR 2024,
arXiv:2312.17334).

Ported from xfwang23/DSRIR@31f8e1f42848cd2a41f0be7c172e506601cdd563 ``model/DSRIR.py``
(no license file upstream): re-written with the same constructor arguments, attribute
names and registration order, so ``reference/dsrir_default.keys.tsv`` is our state_dict and
the authors' checkpoints (``torch.load(...)['state_dict']``) load with ``strict=True``. At
the defaults the network has 3,516,837 parameters, the paper's 3.52 M.

The network embeds the image once (``ebd``) and splits the embedding into three parts.
Sub-network 1 (``SN1``, a 3-level U-Net of patch-attention blocks) restores from the first
part, sub-network 2 (``SN2``, a 2-level U-Net) from its output joined with the second
part, sub-network 3 (``SN3``, four full-resolution groups) from that joined with the third.
After each, a pixel-wise refine unit (``PRU<k>``) and an uncertainty supervised attention
unit (``usau_<k>``) emit a restored image and a variance map; the last image is the result.

Differences from the official code, none of which changes a number:

* ``forward(x)`` returns the final image only (the framework's contract) and accepts any
  H and W: it reflect-pads right/bottom to ``pad_multiple`` (8 at the defaults: the patch
  attention splits each level into a fixed grid of patches, 8x8 at full resolution) and
  crops back. The official test script instead crops test images to a multiple of 8.
  ``forward_stages(x)`` returns every official output, as the official ``forward`` does.
* The block counts and patch grids the official constructor hard-codes are keyword
  arguments (``sn1_pab`` ... ``sn3_pa``) with the official values as defaults, so tests
  can build small models.
* The last USAU's feature branch (``usau_3.conv2``, ``usau_3.att_map``) is kept for
  checkpoint compatibility but not evaluated: the official code discards its result.
  Those two modules never receive gradients, in either implementation; here they are
  frozen (``requires_grad=False``) so distributed training needs no unused-parameter search.
* Arguments are checked up front (``ValueError`` naming the argument).

Hook for guided subclasses: ``_forward_padded(inp, fuse)`` calls ``fuse(level, x)`` on the
feature entering each encoder level of ``SN1``, the sub-network that sees the input first
and the only one with three scales: level 0 (``sn1_feats`` channels, full resolution),
1 (``sn1_feats + feats_step1``, 1/2) and 2 (``sn1_feats + 2 * feats_step1``, 1/4).
Guidance fused there reaches every later stage through the features each stage passes on.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, as_int_tuple, no_fuse
from textualdeg.restoration.archs.memory import CheckpointedSequential, active_checkpointing, checkpoint_call

__all__ = [
    "DSRIR", "DSRIRStages", "PatchAttention", "PAB", "PAG", "PRU", "USAU", "PatchAttentionUNet", "PatchAttentionGroups",
]

PatchGrid = tuple[int, int]


class DSRIRStages(NamedTuple):
    """Every output of DSRIR, final stage first (the official ``forward``'s two lists).

    Attributes:
        images (list[Tensor]): restored images of stages 3, 2, 1, each (B, out_c, H, W).
        variances (list[Tensor]): variance (log-uncertainty) maps of stages 3, 2, 1,
            each (B, out_c, H, W).
    """

    images: list[torch.Tensor]
    variances: list[torch.Tensor]


class DownSample(nn.Module):
    """Bilinear 2x downscale, then a 1x1 conv from ``channels`` to ``channels + step``."""

    def __init__(self, channels: int, step: int) -> None:
        super().__init__()
        # index 0 holds no weights; the conv's key is ``down.1.weight`` as in the official code
        self.down = nn.Sequential(
            nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
            nn.Conv2d(channels, channels + step, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns (B, C + step, H/2, W/2)."""
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear 2x upscale, then a 1x1 conv from ``channels + step`` to ``channels``."""

    def __init__(self, channels: int, step: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(channels + step, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C + step, H, W). Returns (B, C, 2H, 2W)."""
        return self.up(x)


def _squeeze_excite(channels: int, reduction: int, kernel_size: int = 1) -> nn.Sequential:
    """conv(C -> C/r) -> ReLU -> conv(C/r -> C) -> sigmoid, with biases (official layout)."""
    pad = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(channels, channels // reduction, kernel_size, padding=pad, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels // reduction, channels, kernel_size, padding=pad, bias=True),
        nn.Sigmoid(),
    )


class PatchAttention(nn.Module):
    """Channel attention computed per patch of a fixed ``pa_size`` grid.

    The feature is cut into ``pa_size[0] x pa_size[1]`` equal patches; each patch's
    channels are rescaled by weights computed from that patch's mean.

    Args:
        channel (int): channels C.
        reduction (int): squeeze ratio of the weight branch.
        pa_size (tuple[int, int]): patch grid (rows, columns); H and W must be multiples.
    """

    def __init__(self, channel: int, reduction: int, pa_size: PatchGrid) -> None:
        super().__init__()
        self.pa_size = (int(pa_size[0]), int(pa_size[1]))
        self.conv_du = _squeeze_excite(channel, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W), H and W multiples of ``pa_size``. Returns (B, C, H, W)."""
        b, c, h, w = x.shape
        ph, pw = self.pa_size
        if h % ph or w % pw:
            raise ValueError(
                f"PatchAttention with a {ph}x{pw} patch grid needs H and W divisible by ({ph}, {pw}), "
                f"got a feature of size {h}x{w}"
            )
        weights = self.conv_du(F.adaptive_avg_pool2d(x, (ph, pw)))  # (B, C, ph, pw)
        patches = x.reshape(b, c, ph, h // ph, pw, w // pw)  # (B, C, ph, H/ph, pw, W/pw)
        return (patches * weights[:, :, :, None, :, None]).reshape(b, c, h, w)


class PAB(nn.Module):
    """Patch attention block: ``x + PA(conv(relu(conv(x))))``.

    Args:
        n_feat (int): channels.
        kernel_size (int): conv kernel size.
        reduction (int): squeeze ratio of the patch attention.
        bias (bool): biases in the two convs.
        pa_size (tuple[int, int]): patch grid of the attention.
    """

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, bias: bool, pa_size: PatchGrid) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_feat, n_feat, kernel_size, padding=kernel_size // 2, bias=bias)
        self.conv2 = nn.Conv2d(n_feat, n_feat, kernel_size, padding=kernel_size // 2, bias=bias)
        self.PA = PatchAttention(n_feat, reduction, pa_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns (B, C, H, W)."""
        return self.PA(self.conv2(F.relu(self.conv1(x)))) + x


class PAG(nn.Module):
    """Patch attention group: ``len(pa_sizes)`` PABs and a conv, plus the input.

    Args:
        n_feat (int): channels.
        kernel_size (int): conv kernel size.
        reduction (int): squeeze ratio of the patch attentions.
        bias (bool): conv biases.
        pa_sizes (Sequence[tuple[int, int]]): patch grid of each PAB.
    """

    def __init__(
        self, n_feat: int, kernel_size: int, reduction: int, bias: bool, pa_sizes: Sequence[PatchGrid]
    ) -> None:
        super().__init__()
        self.body = CheckpointedSequential(  # memory.py: optional recomputation
            *[PAB(n_feat, kernel_size, reduction, bias, pa) for pa in pa_sizes],
            nn.Conv2d(n_feat, n_feat, kernel_size, padding=kernel_size // 2, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns (B, C, H, W)."""
        return self.body(x) + x


class PRU(nn.Module):
    """Pixel-wise refine unit: ``x + r * att(r)`` with ``r = conv(x)`` and a per-pixel gate.

    Args:
        n_feat (int): channels.
        reduction (int): squeeze ratio of the 3x3 gate branch ``fr``.
    """

    def __init__(self, n_feat: int, reduction: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_feat, n_feat, 3, padding=1, bias=False)
        self.fr = _squeeze_excite(n_feat, reduction, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns (B, C, H, W)."""
        res = self.conv(x)
        return self.fr(res) * res + x


class USAU(nn.Module):
    """Uncertainty supervised attention unit: a stage's image, variance map and next feature.

    ``fusion = conv1(x) + conv_in(img)``; the stage's image is ``conv_out(fusion) + img``;
    a variance map and a sigmoid attention come from a shared ``var_est`` branch; the
    feature passed on is ``x + att * conv2(x)``.

    Args:
        in_channels (int): channels of the input image.
        n_feats (int): feature channels.
        out_channels (int): channels of the restored image and variance map.
        kernel (int): kernel size of ``conv_in`` / ``conv_out``.
        bias (bool): biases in ``conv_in``, ``conv_out``, ``conv1``, ``conv2`` (the variance
            and attention convs always have biases, as in the official code).
    """

    def __init__(self, in_channels: int, n_feats: int, out_channels: int, kernel: int, bias: bool) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, n_feats, kernel, padding=kernel // 2, bias=bias)
        self.conv_out = nn.Conv2d(n_feats, out_channels, kernel, padding=kernel // 2, bias=bias)
        self.conv1 = nn.Conv2d(n_feats, n_feats, 1, bias=bias)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 1, bias=bias)
        self.var_est = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.var_map = nn.Sequential(nn.Conv2d(n_feats, out_channels, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.att_map = nn.Sequential(nn.Conv2d(n_feats, n_feats, 1), nn.Sigmoid())

    def forward(
        self, x: torch.Tensor, img: torch.Tensor, last: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Args: x (B, C, H, W) feature; img (B, in_channels, H, W) input image; last: skip
        the feature branch (final stage). Returns (feature (B, C, H, W) or None, restored
        (B, out_channels, H, W), variance (B, out_channels, H, W))."""
        fusion = self.conv1(x) + self.conv_in(img)  # (B, C, H, W)
        restored = self.conv_out(fusion) + img
        var_est = self.var_est(fusion)
        variance = self.var_map(var_est)
        if last:
            return None, restored, variance
        return self.att_map(var_est) * self.conv2(x) + x, restored, variance


def _block(owner: nn.Module, module: nn.Module, *args):
    """``module(*args)``, a checkpointed region while ``owner`` checkpoints (memory.py)."""
    if active_checkpointing(owner) != "none":
        return checkpoint_call(module, module, *args)
    return module(*args)


class PatchAttentionUNet(nn.Module):
    """U-Net of PAB stacks (the official ``SubNet1`` with 3 levels, ``SubNet2`` with 2).

    Level k (0-based) has ``n_feat + k * feats_step`` channels at 1/2**k resolution and
    ``num_blocks[k]`` PABs with patch grid ``pa[k]`` in its encoder and in its decoder.
    Decoder level k takes ``up(decoder k+1) + skipatt(encoder k)``.

    Args:
        num_blocks (Sequence[int]): PABs per level (its length is the number of levels).
        pa (Sequence[tuple[int, int]]): patch grid per level.
        n_feat (int): channels at full resolution.
        kernel_size (int): conv kernel size.
        reduction (int): squeeze ratio of the patch attentions.
        feats_step (int): channels added per level.
        bias (bool): conv biases.

    With activation checkpointing on (memory.py) the skip-attention PABs are recomputed
    in backward too, one region each.
    """

    checkpointing: str = "none"

    def __init__(
        self,
        num_blocks: Sequence[int],
        pa: Sequence[PatchGrid],
        n_feat: int,
        kernel_size: int,
        reduction: int,
        feats_step: int,
        bias: bool,
    ) -> None:
        super().__init__()
        self.levels = len(num_blocks)

        def stack(level: int) -> CheckpointedSequential:
            width = n_feat + level * feats_step
            return CheckpointedSequential(
                *[PAB(width, kernel_size, reduction, bias, pa[level]) for _ in range(num_blocks[level])]
            )

        # Registration order is the official one (it fixes the state_dict order).
        for k in range(self.levels):
            self.add_module(f"encoder{k + 1}", stack(k))
        for k in reversed(range(self.levels)):
            self.add_module(f"decoder{k + 1}", stack(k))
        for k in range(1, self.levels):
            self.add_module(f"down{k}", DownSample(n_feat + (k - 1) * feats_step, feats_step))
        for k in range(1, self.levels):
            self.add_module(f"up{k}", UpSample(n_feat + (k - 1) * feats_step, feats_step))
        for k in reversed(range(1, self.levels)):
            width = n_feat + (k - 1) * feats_step
            self.add_module(f"skipatt{k}", PAB(width, kernel_size, reduction, bias, pa[k - 1]))

    def forward(self, x: torch.Tensor, fuse: FuseFn = no_fuse) -> torch.Tensor:
        """Args: x (B, n_feat, H, W); fuse: hook on the feature entering each encoder level.
        Returns (B, n_feat, H, W)."""
        skips = []
        for k in range(self.levels):
            if k:
                x = getattr(self, f"down{k}")(x)  # (B, n_feat + k*step, H/2**k, W/2**k)
            x = getattr(self, f"encoder{k + 1}")(fuse(k, x))
            skips.append(x)
        x = getattr(self, f"decoder{self.levels}")(x)
        for k in reversed(range(1, self.levels)):
            skip = _block(self, getattr(self, f"skipatt{k}"), skips[k - 1])
            x = getattr(self, f"up{k}")(x) + skip  # (B, ., H/2**(k-1), .)
            x = getattr(self, f"decoder{k}")(x)
        return x


class PatchAttentionGroups(nn.Module):
    """Four full-resolution PAGs in sequence (the official ``SubNet3``).

    Args:
        pa (Sequence[tuple[int, int]]): patch grid of each PAB of a group.
        n_feat (int): channels.
        kernel_size (int): conv kernel size.
        reduction (int): squeeze ratio of the patch attentions.
        bias (bool): conv biases.
    """

    def __init__(self, pa: Sequence[PatchGrid], n_feat: int, kernel_size: int, reduction: int, bias: bool) -> None:
        super().__init__()
        self.PAG1 = PAG(n_feat, kernel_size, reduction, bias, pa)
        self.PAG2 = PAG(n_feat, kernel_size, reduction, bias, pa)
        self.PAG3 = PAG(n_feat, kernel_size, reduction, bias, pa)
        self.PAG4 = PAG(n_feat, kernel_size, reduction, bias, pa)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns (B, C, H, W)."""
        return self.PAG4(self.PAG3(self.PAG2(self.PAG1(x))))


def _patch_grids(name: str, value, length: int | None) -> tuple[PatchGrid, ...]:
    """Validate a sequence of (rows, columns) patch grids."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of (rows, columns) pairs, got {value!r}")
    grids = []
    for grid in value:
        pair = as_int_tuple(name, grid, length=2, minimum=1) if hasattr(grid, "__iter__") else None
        if pair is None:
            raise ValueError(f"{name} must contain (rows, columns) pairs of ints >= 1, got {value!r}")
        grids.append(pair)
    if length is not None and len(grids) != length:
        raise ValueError(f"{name} must give {length} (rows, columns) pairs, got {value!r}")
    return tuple(grids)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@ARCH_REGISTRY.register()
class DSRIR(PaddedBackbone):
    """DSRIR: three progressive sub-networks with patch and uncertainty attention.

    Args:
        in_c (int): input image channels. Default 3.
        out_c (int): output channels; must equal ``in_c`` (each stage adds its residual to
            the input image). Default 3.
        sn1_feats (int): width of sub-network 1 at full resolution. Default 32.
        sn2_feats (int): width of sub-network 2. Default 48.
        sn3_feats (int): width of sub-network 3. Default 64.
        feats_step1 (int): channels added per level in sub-network 1. Default 32.
        feats_step2 (int): channels added per level in sub-network 2. Default 16.
        kernel_size (int): kernel size of the PAB/PAG convs and ``ebd`` (odd). Default 3.
        reduction (int): squeeze ratio of the patch attentions and refine units; must not
            exceed the narrowest width. Default 8.
        bias (bool): biases in the convs the official ``bias`` controls. Default False.
        sn1_pab (Sequence[int]): PABs per level of sub-network 1. Default (2, 2, 2).
        sn2_pab (Sequence[int]): PABs per level of sub-network 2. Default (2, 4).
        sn3_pab (int): PABs per group of sub-network 3. Default 4.
        sn1_pa (Sequence[tuple[int, int]]): patch grid per level of sub-network 1.
            Default ((8, 8), (4, 4), (2, 2)).
        sn2_pa (Sequence[tuple[int, int]]): per level of sub-network 2. Default ((4, 4), (2, 2)).
        sn3_pa (Sequence[tuple[int, int]]): per PAB of a sub-network-3 group (``sn3_pab``
            of them). Default ((8, 8), (4, 4), (2, 2), (1, 1)).

    ``forward(x)``: x (B, in_c, H, W) in [0, 1], any H and W; returns the final restored
    image (B, out_c, H, W). ``forward_stages(x)`` returns all stage images and variances.
    """

    def __init__(
        self,
        in_c: int = 3,
        out_c: int = 3,
        sn1_feats: int = 32,
        sn2_feats: int = 48,
        sn3_feats: int = 64,
        feats_step1: int = 32,
        feats_step2: int = 16,
        kernel_size: int = 3,
        reduction: int = 8,
        bias: bool = False,
        sn1_pab: Sequence[int] = (2, 2, 2),
        sn2_pab: Sequence[int] = (2, 4),
        sn3_pab: int = 4,
        sn1_pa: Sequence[PatchGrid] = ((8, 8), (4, 4), (2, 2)),
        sn2_pa: Sequence[PatchGrid] = ((4, 4), (2, 2)),
        sn3_pa: Sequence[PatchGrid] = ((8, 8), (4, 4), (2, 2), (1, 1)),
    ) -> None:
        super().__init__()
        for name, value in (("in_c", in_c), ("out_c", out_c), ("sn1_feats", sn1_feats),
                            ("sn2_feats", sn2_feats), ("sn3_feats", sn3_feats), ("reduction", reduction)):
            _positive_int(name, value)
        _positive_int("feats_step1", feats_step1, minimum=0)
        _positive_int("feats_step2", feats_step2, minimum=0)
        if _positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size convs), got {kernel_size!r}")
        if in_c != out_c:
            raise ValueError(
                f"DSRIR adds every stage's residual to the input image, so out_c must equal in_c; "
                f"got in_c={in_c}, out_c={out_c}"
            )
        sn1_pab = as_int_tuple("sn1_pab", sn1_pab, length=3, minimum=0)
        sn2_pab = as_int_tuple("sn2_pab", sn2_pab, length=2, minimum=0)
        _positive_int("sn3_pab", sn3_pab, minimum=0)
        sn1_pa = _patch_grids("sn1_pa", sn1_pa, 3)
        sn2_pa = _patch_grids("sn2_pa", sn2_pa, 2)
        sn3_pa = _patch_grids("sn3_pa", sn3_pa, sn3_pab)
        narrowest = min(sn1_feats, sn2_feats, sn3_feats)
        if reduction > narrowest:
            raise ValueError(
                f"reduction={reduction} must not exceed the narrowest width {narrowest} "
                f"(sn1_feats={sn1_feats}, sn2_feats={sn2_feats}, sn3_feats={sn3_feats})"
            )

        self.input_channels = in_c
        self.sn1_feats, self.sn2_feats, self.sn3_feats = sn1_feats, sn2_feats, sn3_feats
        self.sn1_widths = tuple(sn1_feats + k * feats_step1 for k in range(3))

        self.ebd = nn.Conv2d(in_c, sn1_feats + sn2_feats + sn3_feats, kernel_size, padding=kernel_size // 2, bias=bias)
        self.SN1 = PatchAttentionUNet(sn1_pab, sn1_pa, sn1_feats, kernel_size, reduction, feats_step1, bias)
        self.PRU1 = PRU(sn1_feats, reduction)
        self.usau_1 = USAU(in_c, sn1_feats, out_c, kernel=3, bias=bias)
        self.channel_comp1 = nn.Conv2d(sn1_feats + sn2_feats, sn2_feats, 1, bias=bias)
        self.SN2 = PatchAttentionUNet(sn2_pab, sn2_pa, sn2_feats, kernel_size, reduction, feats_step2, bias)
        self.PRU2 = PRU(sn2_feats, reduction)
        self.usau_2 = USAU(in_c, sn2_feats, out_c, kernel=3, bias=bias)
        self.channel_comp2 = nn.Conv2d(sn2_feats + sn3_feats, sn3_feats, 1, bias=bias)
        self.SN3 = PatchAttentionGroups(sn3_pa, sn3_feats, kernel_size, reduction, bias)
        self.PRU3 = PRU(sn3_feats, reduction)
        self.usau_3 = USAU(in_c, sn3_feats, out_c, kernel=3, bias=bias)
        # the last USAU's feature branch feeds nothing (its result is dropped): frozen, so
        # distributed training needs no search for unused parameters
        for param in (*self.usau_3.conv2.parameters(), *self.usau_3.att_map.parameters()):
            param.requires_grad_(False)

        # Level k of a U-Net is cut into pa[k] patches at 1/2**k resolution.
        multiples = [p * 2**k for grids in (sn1_pa, sn2_pa) for k, grid in enumerate(grids) for p in grid]
        multiples += [p for grid in sn3_pa for p in grid]
        self.pad_multiple = math.lcm(*multiples)

    def forward_stages(self, x: torch.Tensor) -> DSRIRStages:
        """Every official output: the three stage images and variance maps, final first.

        Args:
            x: (B, in_c, H, W) in [0, 1], any H and W.

        Returns:
            DSRIRStages: ``images`` and ``variances``, each three (B, out_c, H, W) tensors
            ordered stage 3, 2, 1.
        """
        return self.forward(x, stages=True)

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        """The final image for an input whose H and W are multiples of ``pad_multiple``.

        Args:
            inp: (B, in_c, H, W), padded.
            fuse: optional ``fuse(level, x) -> x`` on the features entering the three
                encoder levels of ``SN1`` (see the module doc).

        Returns:
            (B, out_c, H, W).
        """
        return self._forward_stages_padded(inp, fuse).images[0]

    def _forward_stages_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> DSRIRStages:
        """All stage outputs for a padded input (see ``_forward_padded``)."""
        h, w = inp.shape[-2:]
        if h % self.pad_multiple or w % self.pad_multiple:
            raise ValueError(
                f"DSRIR._forward_padded needs H and W divisible by pad_multiple={self.pad_multiple}, "
                f"got {h}x{w} (forward pads for you)"
            )
        x1, x2, x3 = torch.split(self.ebd(inp), [self.sn1_feats, self.sn2_feats, self.sn3_feats], dim=1)

        # the full-resolution refine and attention units are checkpointed blocks too (memory.py)
        x = _block(self, self.PRU1, self.SN1(x1, fuse if fuse is not None else no_fuse))  # (B, sn1, H, W)
        x, img1, var1 = _block(self, self.usau_1, x, inp)
        x = self.channel_comp1(torch.cat([x, x2], dim=1))  # (B, sn2, H, W)
        x = _block(self, self.PRU2, self.SN2(x))
        x, img2, var2 = _block(self, self.usau_2, x, inp)
        x = self.channel_comp2(torch.cat([x, x3], dim=1))  # (B, sn3, H, W)
        x = _block(self, self.PRU3, self.SN3(x))
        _, img3, var3 = _block(self, self.usau_3, x, inp, True)  # last: no feature branch
        return DSRIRStages([img3, img2, img1], [var3, var2, var1])

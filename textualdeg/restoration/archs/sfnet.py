"""SFNet, the dehazing model (RESIDE indoor/outdoor) with its multi-scale outputs.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334, which uses SFNet ("Selective
Frequency Network for Image Restoration", Cui et al., ICLR 2023, published on OpenReview;
we know of no arXiv version) as its dehazing backbone (option files 005/006).

Ported from c-yn/SFNet (MIT license): the blocks from ``Image_dehazing/models/layers.py``
@e5b9ab6 (``BasicConv``, ``Gap``, ``ResBlock``, ``dynamic_filter``, ``SFconv``,
``Patch_ap``, NAFNet's TLC ``AvgPool2d``), the network from ``models/SFNet.py``
(``EBlock``/``DBlock``, ``SCM``, ``FAM``, ``SFNet``). The dehazing ``models/SFNet.py`` is
not in our source snapshot; ``Image_dehazing/main.py`` builds it as ``build_net([phase,
scene])``, the same constructor as ``Motion_deblurring/models/SFNet.py``@e5b9ab6, which we
compared against, and the copy of ``SFNet`` in mrluin/TextualDegRemoval@3cbe6fd
``models/archs/network_sfnet_guided_arch.py`` is identical to it. Attribute names are the
official ones, so the state_dict equals the official one key for key (13,271,209
parameters at ``num_res=16``) and official checkpoints load with ``strict=True``.

``mode`` is the official ``[phase, scene]``: phase ``train`` pools globally (training and
the validation during training); phase ``test`` replaces every global pool of ``Gap``,
``SFconv`` and ``Patch_ap`` with the test-time local pool (TLC, "Improving Image
Restoration by Revisiting Global Information Aggregation", Chu et al., ECCV 2022,
arXiv:2112.04491) of window ``feature_size * base_size // 256``, ``base_size`` 246 for
``Indoor`` and 210 for ``Outdoor``. The pool in ``dynamic_filter`` stays global in both
phases, as in the official code.

Differences from the official code, none of which changes a weight name or an output of
the official test path:

- ``mode`` is checked: a plain string such as ``'train'`` (the authors' option files,
  their defect D36(f) in docs/official_differences.md) made ``mode[0] == 't'``, so no
  pool was ever built and the first forward raised AttributeError; here it raises
  ValueError saying to pass a list.
- The official TLC pool fixes its window at the first forward and keeps it for every later
  input; here the window is computed from each input's own feature size, i.e. every image
  is pooled as the official code pools the first one (SOTS-indoor images share one size,
  so the official evaluation is reproduced). Windows are at least 1 (the official window
  is 0 on 1-pixel maps, where it crashes).
- ``forward(x)`` returns only the full-resolution image, the framework's contract;
  ``forward(x, stages=True)`` returns all three outputs, final first (``SFNetScales``), for
  the multi-scale loss; the official list (1/4, 1/2, 1) is ``forward_all_scales(x)``. Both take any
  H and W: the input is reflect-padded right/bottom to a multiple of 8, as the official
  ``eval.py`` does (and to at least 16, where the official network fails), and the outputs
  are cropped back.
- ``base_channel`` (official: fixed 32) is an argument, so tests can run tiny models.
- ``dynamic_filter.lamb_l``/``lamb_h`` are kept (they are in the checkpoints) but, as in
  the official code, never used: they are frozen (``requires_grad=False``), so distributed
  training needs no search for unused parameters. ``ConvsOut`` (the 1/4 and 1/2 outputs)
  train through the multi-scale loss (``stage_losses.MultiScaleFFTLoss``).
- ``dynamic_filter`` normalises its per-image filter with BatchNorm on (B, C, 1, 1)
  statistics, so training needs a batch of at least 2, as in the official code (where
  BatchNorm fails); a batch of 1 in training mode raises a ValueError saying so.

Hook points for subclasses (the guided model): ``pad_multiple``, ``_pad`` and
``_forward_padded(inp, fuse)`` as in ``restormer.py``. ``fuse(level, x)`` sees the output
of ``feat_extract[0]`` (level 0, ``base_channel`` channels, full resolution), of
``feat_extract[1]`` before ``FAM2`` (level 1, ``2 * base_channel``, 1/2) and of
``feat_extract[2]`` before ``FAM1`` (level 2, ``4 * base_channel``, 1/4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, no_fuse
from textualdeg.restoration.archs.memory import CheckpointedSequential
from textualdeg.restoration.archs.tlc import LocalAvgPool2d

__all__ = [
    "SFNet",
    "SFNetScales",
    "SFNET_SCENE_BASE_SIZES",
    "BasicConv",
    "EBlock",
    "ResBlock",
    "RelativeLocalAvgPool2d",
    "check_sfnet_mode",
]

#: TLC pool window (pixels at the 256-pixel training size) per dehazing scene.
SFNET_SCENE_BASE_SIZES = {"Indoor": 246, "Outdoor": 210}
_PHASES = ("train", "test")
_TRAIN_SIZE = 256  # official ``train_size`` (1, 3, 256, 256): the training crop side


def check_sfnet_mode(mode: Sequence[str]) -> tuple[str, str]:
    """Validate the official ``mode`` argument ``[phase, scene]``.

    Args:
        mode (Sequence[str]): ``[phase, scene]``, phase ``train`` or ``test``, scene
            ``Indoor`` or ``Outdoor`` (YAML ``mode: [train, Indoor]``).

    Returns:
        tuple[str, str]: ``(phase, scene)``.

    Raises:
        ValueError: naming the value and what was expected.
    """
    if isinstance(mode, (str, bytes)):
        raise ValueError(
            f"mode must be a list [phase, scene] such as ['train', 'Indoor'], got the string {mode!r}; "
            "pass a list (a string made the official SFNet read mode[0] as its first letter and "
            "build no pooling layer)"
        )
    if not isinstance(mode, Sequence) or len(mode) != 2:
        raise ValueError(f"mode must be a list [phase, scene] such as ['train', 'Indoor'], got {mode!r}")
    phase, scene = mode
    if phase not in _PHASES:
        raise ValueError(f"mode[0] (phase) must be one of {_PHASES}, got {phase!r}")
    if scene not in SFNET_SCENE_BASE_SIZES:
        raise ValueError(f"mode[1] (scene) must be one of {tuple(SFNET_SCENE_BASE_SIZES)}, got {scene!r}")
    return phase, scene


class RelativeLocalAvgPool2d(nn.Module):
    """TLC pool whose window is a fixed fraction of the map: ``size * base_size // 256``.

    SFNet's test-time pool: a local box average (replicate-padded back to the input size)
    covering ``base_size / 256`` of each side of whatever map it sees.

    Args:
        base_size (int): window side at a 256-pixel map (246 indoor, 210 outdoor).
    """

    def __init__(self, base_size: int) -> None:
        super().__init__()
        self.base_size = base_size

    def extra_repr(self) -> str:
        return f"base_size={self.base_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) local averages."""
        h, w = x.shape[-2:]
        kernel = (max(1, h * self.base_size // _TRAIN_SIZE), max(1, w * self.base_size // _TRAIN_SIZE))
        return LocalAvgPool2d(kernel)(x)


def _make_pool(mode: tuple[str, str]) -> nn.Module:
    """The pool the phase selects: global in ``train``, relative-local in ``test``."""
    phase, scene = mode
    if phase == "train":
        return nn.AdaptiveAvgPool2d(1)
    return RelativeLocalAvgPool2d(SFNET_SCENE_BASE_SIZES[scene])


class BasicConv(nn.Module):
    """Conv (or transposed conv, for 2x upsampling) with optional GELU, as ``main.0``/``main.1``.

    Args:
        in_channel (int): input channels.
        out_channel (int): output channels.
        kernel_size (int): kernel side; padding ``k // 2`` (``k // 2 - 1`` transposed).
        stride (int): stride.
        relu (bool): append a GELU (the official name). Default True.
        transpose (bool): ConvTranspose2d instead of Conv2d. Default False.
    """

    def __init__(
        self, in_channel: int, out_channel: int, kernel_size: int, stride: int, relu: bool = True,
        transpose: bool = False,
    ) -> None:
        super().__init__()
        if transpose:
            conv = nn.ConvTranspose2d(in_channel, out_channel, kernel_size, stride, padding=kernel_size // 2 - 1)
        else:
            conv = nn.Conv2d(in_channel, out_channel, kernel_size, stride, padding=kernel_size // 2)
        self.main = nn.Sequential(conv, nn.GELU()) if relu else nn.Sequential(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channel, H, W) -> (B, out_channel, H', W')."""
        return self.main(x)


class Gap(nn.Module):
    """Global (or TLC) split into low and high frequency, each rescaled by learned weights.

    Args:
        channels (int): channels of the input.
        mode (tuple[str, str]): ``(phase, scene)``, selects the pool.
    """

    def __init__(self, channels: int, mode: tuple[str, str]) -> None:
        super().__init__()
        self.fscale_d = nn.Parameter(torch.zeros(channels))
        self.fscale_h = nn.Parameter(torch.zeros(channels))
        self.gap = _make_pool(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        low = self.gap(x)  # (B, C, 1, 1) global, (B, C, H, W) local
        high = (x - low) * (self.fscale_h[None, :, None, None] + 1.0)
        return low * self.fscale_d[None, :, None, None] + high


class PatchAP(nn.Module):
    """``Gap`` per quadrant: the map is cut into ``p x p`` tiles pooled separately.

    Both scales start at zero, so the block outputs zeros until trained (official init).

    Args:
        mode (tuple[str, str]): ``(phase, scene)``, selects the pool.
        channels (int): channels of the input.
        patch_size (int): tiles per side (2 in SFNet).
    """

    def __init__(self, mode: tuple[str, str], channels: int, patch_size: int) -> None:
        super().__init__()
        self.ap = _make_pool(mode)
        self.patch_size = patch_size
        self.h = nn.Parameter(torch.zeros(channels * patch_size**2))
        self.l = nn.Parameter(torch.zeros(channels * patch_size**2))  # noqa: E741 (official name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); H and W must be multiples of ``patch_size``."""
        b, c, h, w = x.shape
        p = self.patch_size
        tiles = x.view(b, c, p, h // p, p, w // p).permute(0, 1, 2, 4, 3, 5)  # (B, C, p, p, H/p, W/p)
        tiles = tiles.reshape(b, c * p * p, h // p, w // p)  # (B, C*p*p, H/p, W/p)
        low = self.ap(tiles)
        out = (tiles - low) * self.h[None, :, None, None] + low * self.l[None, :, None, None]
        out = out.view(b, c, p, p, h // p, w // p).permute(0, 1, 2, 4, 3, 5)  # (B, C, p, H/p, p, W/p)
        return out.reshape(b, c, h, w)


class SFconv(nn.Module):
    """Selective-frequency fusion: softmax attention between the low and high parts.

    Args:
        features (int): channels of each part.
        mode (tuple[str, str]): ``(phase, scene)``, selects the pool.
        reduction (int): squeeze ratio (official ``r``). Default 2.
        min_hidden (int): smallest squeezed width (official ``L``). Default 32.
    """

    def __init__(self, features: int, mode: tuple[str, str], reduction: int = 2, min_hidden: int = 32) -> None:
        super().__init__()
        hidden = max(features // reduction, min_hidden)
        self.fc = nn.Conv2d(features, hidden, 1)
        self.fcs = nn.ModuleList([nn.Conv2d(hidden, features, 1), nn.Conv2d(hidden, features, 1)])
        self.out = nn.Conv2d(features, features, 1)
        self.gap = _make_pool(mode)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """low, high: (B, C, H, W) -> (B, C, H, W)."""
        z = self.fc(self.gap(low + high))  # (B, hidden, 1, 1) global, (B, hidden, H, W) local
        att = torch.cat([self.fcs[0](z), self.fcs[1](z)], dim=1).softmax(dim=1)  # (B, 2C, ., .)
        high_att, low_att = att.chunk(2, dim=1)
        return self.out(high * high_att + low * low_att)


class DynamicFilter(nn.Module):
    """Per-image, per-group learned low-pass filter; its low and high parts go to ``SFconv``.

    Args:
        channels (int): input channels (a multiple of ``group``).
        mode (tuple[str, str]): ``(phase, scene)``, for ``SFconv``.
        kernel_size (int): filter side (3 or 5 in SFNet). Default 3.
        group (int): channel groups sharing one filter. Default 8.
    """

    def __init__(self, channels: int, mode: tuple[str, str], kernel_size: int = 3, group: int = 8) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.group = group
        # In the official checkpoints, but never used by the official forward: frozen, so
        # distributed training needs no search for unused parameters.
        self.lamb_l = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.lamb_h = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.conv = nn.Conv2d(channels, group * kernel_size**2, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(group * kernel_size**2)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.modulate = SFconv(channels, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        if self.training and b < 2:
            raise ValueError(
                "SFNet normalises its per-image dynamic filters with BatchNorm over the batch: training "
                f"needs a batch of at least 2, got x of shape {tuple(x.shape)}; call eval() for single images"
            )
        k, g = self.kernel_size, self.group
        weights = self.bn(self.conv(F.adaptive_avg_pool2d(x, 1)))  # (B, G*k*k, 1, 1)
        weights = weights.view(b, g, 1, k * k, 1).softmax(dim=3)  # (B, G, 1, k*k, 1)
        patches = F.unfold(F.pad(x, [k // 2] * 4, mode="reflect"), kernel_size=k)  # (B, C*k*k, H*W)
        patches = patches.view(b, g, c // g, k * k, h * w)  # (B, G, C/G, k*k, H*W)
        low = (patches * weights).sum(dim=3).view(b, c, h, w)  # (B, C, H, W)
        return self.modulate(low, x - low)


class ResBlock(nn.Module):
    """SFNet residual block: conv -> [dynamic filters] -> global | quadrant pools -> conv, + x.

    With ``filter`` the two channel halves after ``conv1`` go through 3x3 and 5x5
    ``DynamicFilter``s first. Then one half is rescaled by ``Gap`` and the other by
    ``PatchAP``.

    Args:
        in_channel (int): input channels (a multiple of 2, and of 16 with ``filter``).
        out_channel (int): output channels (equal to ``in_channel``: residual).
        mode (tuple[str, str]): ``(phase, scene)``, selects the pools.
        filter (bool): add the dynamic filters (the last block of every stage). Default False.
    """

    def __init__(
        self, in_channel: int, out_channel: int, mode: tuple[str, str], filter: bool = False  # noqa: A002
    ) -> None:
        super().__init__()
        self.conv1 = BasicConv(in_channel, out_channel, kernel_size=3, stride=1, relu=True)
        self.conv2 = BasicConv(out_channel, out_channel, kernel_size=3, stride=1, relu=False)
        self.filter = filter
        if filter:
            self.dyna = DynamicFilter(in_channel // 2, mode)
            self.dyna_2 = DynamicFilter(in_channel // 2, mode, kernel_size=5)
        self.localap = PatchAP(mode, in_channel // 2, patch_size=2)
        self.global_ap = Gap(in_channel // 2, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); H and W even."""
        out = self.conv1(x)
        if self.filter:
            k3, k5 = out.chunk(2, dim=1)
            out = torch.cat([self.dyna(k3), self.dyna_2(k5)], dim=1)
        non_local, local = out.chunk(2, dim=1)  # (B, C/2, H, W) each
        out = torch.cat([self.global_ap(non_local), self.localap(local)], dim=1)
        return self.conv2(out) + x


class EBlock(nn.Module):
    """A stage of ``num_res`` ResBlocks, the last one with the dynamic filters, as ``layers``.

    The official ``EBlock`` (encoder) and ``DBlock`` (decoder) are this same module.

    Args:
        channels (int): width.
        num_res (int): blocks (>= 1).
        mode (tuple[str, str]): ``(phase, scene)``, selects the pools.
    """

    def __init__(self, channels: int, num_res: int, mode: tuple[str, str]) -> None:
        super().__init__()
        blocks = [ResBlock(channels, channels, mode, filter=i == num_res - 1) for i in range(num_res)]
        self.layers = CheckpointedSequential(*blocks)  # memory.py: optional recomputation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.layers(x)


class SCM(nn.Module):
    """Shallow convolutional module: features of the downscaled input image.

    Args:
        out_plane (int): output channels (a multiple of 4).
    """

    def __init__(self, out_plane: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            BasicConv(3, out_plane // 4, kernel_size=3, stride=1, relu=True),
            BasicConv(out_plane // 4, out_plane // 2, kernel_size=1, stride=1, relu=True),
            BasicConv(out_plane // 2, out_plane // 2, kernel_size=3, stride=1, relu=True),
            BasicConv(out_plane // 2, out_plane, kernel_size=1, stride=1, relu=False),
            nn.InstanceNorm2d(out_plane, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, out_plane, h, w)."""
        return self.main(x)


class FAM(nn.Module):
    """Feature attention module: 3x3 conv merging the encoder feature with the SCM feature.

    Args:
        channel (int): channels of each input and of the output.
    """

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.merge = BasicConv(channel * 2, channel, kernel_size=3, stride=1, relu=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: (B, C, h, w) -> (B, C, h, w)."""
        return self.merge(torch.cat([x1, x2], dim=1))


class SFNetScales(NamedTuple):
    """SFNet's outputs, final first: full, 1/2 and 1/4 resolution, each (B, 3, h_s, w_s)."""

    images: list[torch.Tensor]


@ARCH_REGISTRY.register()
class SFNet(PaddedBackbone):
    """SFNet: a 3-level encoder-decoder of selective-frequency ResBlocks, with image inputs
    (``SCM``) at 1/2 and 1/4 and image outputs at 1/4, 1/2 and 1.

    Args:
        mode (Sequence[str]): ``[phase, scene]``: phase ``train`` (global pooling) or
            ``test`` (TLC local pooling), scene ``Indoor`` (window 246) or ``Outdoor`` (210).
            Default ``("train", "Indoor")``.
        num_res (int): ResBlocks per encoder and decoder stage. Default 16 (dehazing).
        base_channel (int): width at full resolution (multiple of 16); official: 32.

    ``model(x)``: x (B, 3, H, W) in [0, 1], any H and W; returns (B, 3, H, W).
    ``forward_all_scales(x)`` returns the official list of the 1/4, 1/2 and 1 outputs.
    """

    def __init__(
        self,
        mode: Sequence[str] = ("train", "Indoor"),
        num_res: int = 16,
        base_channel: int = 32,
    ) -> None:
        super().__init__()
        mode = check_sfnet_mode(mode)
        if not isinstance(num_res, int) or isinstance(num_res, bool) or num_res < 1:
            raise ValueError(f"num_res must be an int >= 1, got {num_res!r}")
        if isinstance(base_channel, bool) or not isinstance(base_channel, int) or base_channel < 1 or base_channel % 16:
            raise ValueError(
                f"base_channel must be a positive multiple of 16 (the dynamic filters split half "
                f"of it into 8 groups), got {base_channel!r}"
            )
        self.mode = mode
        self.input_channels = 3
        c = base_channel

        self.Encoder = nn.ModuleList([EBlock(c * 2**i, num_res, mode) for i in range(3)])
        self.feat_extract = nn.ModuleList([
            BasicConv(3, c, kernel_size=3, stride=1),
            BasicConv(c, c * 2, kernel_size=3, stride=2),
            BasicConv(c * 2, c * 4, kernel_size=3, stride=2),
            BasicConv(c * 4, c * 2, kernel_size=4, stride=2, transpose=True),
            BasicConv(c * 2, c, kernel_size=4, stride=2, transpose=True),
            BasicConv(c, 3, kernel_size=3, stride=1, relu=False),
        ])
        self.Decoder = nn.ModuleList([EBlock(c * 2**i, num_res, mode) for i in (2, 1, 0)])  # official DBlocks
        self.Convs = nn.ModuleList([
            BasicConv(c * 4, c * 2, kernel_size=1, stride=1),
            BasicConv(c * 2, c, kernel_size=1, stride=1),
        ])
        self.ConvsOut = nn.ModuleList([
            BasicConv(c * 4, 3, kernel_size=3, stride=1, relu=False),
            BasicConv(c * 2, 3, kernel_size=3, stride=1, relu=False),
        ])
        self.FAM1 = FAM(c * 4)
        self.SCM1 = SCM(c * 4)
        self.FAM2 = FAM(c * 2)
        self.SCM2 = SCM(c * 2)

        # three resolutions, and the quadrant pools need even maps at 1/4
        self.pad_multiple = 8

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad right/bottom to a multiple of 8 (the official ``eval.py``), and to at
        least 16: the 5x5 dynamic filter reflect-pads its 1/4-scale map by 2, which needs 3
        rows (the official code fails on 8-pixel inputs). Replicate where reflect cannot."""
        h, w = x.shape[-2:]
        m = self.pad_multiple
        pad_h, pad_w = max(16, -(-h // m) * m) - h, max(16, -(-w // m) * m) - w
        if pad_h == 0 and pad_w == 0:
            return x
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)  # (B, 3, H', W')

    def forward_all_scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The official outputs, in the official order: 1/4, 1/2 and full resolution.

        Args:
            x (Tensor): (B, 3, H, W) in [0, 1], any H and W.

        Returns:
            list[Tensor]: (B, 3, ceil(H/4), ceil(W/4)), (B, 3, ceil(H/2), ceil(W/2)) and
            (B, 3, H, W). Each is the official output for the reflect-padded input,
            cropped. Training uses ``model(x, stages=True)`` (final first) with
            ``stage_losses.MultiScaleFFTLoss``.
        """
        return self.forward(x, stages=True).images[::-1]

    def _forward_stages_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> SFNetScales:
        """The three outputs of a padded input, final (full resolution) first."""
        return SFNetScales(self._all_scales(inp, fuse)[::-1])

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        """Run the network on an input whose H and W are multiples of 8.

        Args:
            inp: (B, 3, H, W), padded.
            fuse: optional ``fuse(level, x) -> x`` (see the module doc).

        Returns:
            (B, 3, H, W), the full-resolution output.
        """
        return self._all_scales(inp, fuse)[-1]

    def _all_scales(self, x: torch.Tensor, fuse: FuseFn | None = None) -> list[torch.Tensor]:
        """The three outputs (1/4, 1/2, 1) of a padded input (B, 3, H, W)."""
        fuse = fuse if fuse is not None else no_fuse
        x_2 = F.interpolate(x, scale_factor=0.5)  # (B, 3, H/2, W/2), nearest
        x_4 = F.interpolate(x_2, scale_factor=0.5)  # (B, 3, H/4, W/4)
        z2 = self.SCM2(x_2)  # (B, 2C, H/2, W/2)
        z4 = self.SCM1(x_4)  # (B, 4C, H/4, W/4)

        res1 = self.Encoder[0](fuse(0, self.feat_extract[0](x)))  # (B, C, H, W)
        z = self.FAM2(fuse(1, self.feat_extract[1](res1)), z2)  # (B, 2C, H/2, W/2)
        res2 = self.Encoder[1](z)
        z = self.FAM1(fuse(2, self.feat_extract[2](res2)), z4)  # (B, 4C, H/4, W/4)
        z = self.Decoder[0](self.Encoder[2](z))
        out_4 = self.ConvsOut[0](z) + x_4  # (B, 3, H/4, W/4)

        z = torch.cat([self.feat_extract[3](z), res2], dim=1)  # (B, 4C, H/2, W/2)
        z = self.Decoder[1](self.Convs[0](z))  # (B, 2C, H/2, W/2)
        out_2 = self.ConvsOut[1](z) + x_2  # (B, 3, H/2, W/2)

        z = torch.cat([self.feat_extract[4](z), res1], dim=1)  # (B, 2C, H, W)
        z = self.Decoder[2](self.Convs[1](z))  # (B, C, H, W)
        out = self.feat_extract[5](z) + x  # (B, 3, H, W)
        return [out_4, out_2, out]

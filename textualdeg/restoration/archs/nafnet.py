"""NAFNet and NAFNetLocal (test-time local converter, TLC).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334, which uses NAFNet
("Simple Baselines for Image Restoration", Chen et al., ECCV 2022, arXiv:2204.04676) as its
motion-deblurring backbone; TLC is from "Improving Image Restoration by Revisiting Global
Information Aggregation" (Chu et al., ECCV 2022, arXiv:2112.04491).

Ported from megvii-research/NAFNet@2b4af71 ``basicsr/models/archs/NAFNet_arch.py`` and
``local_arch.py`` (MIT license): same constructor arguments, attribute names
(``intro``, ``encoders``, ``downs``, ``middle_blks``, ``ups``, ``decoders``, ``ending``) and
registration order, so the state_dict equals the official one key for key (see
``tests/restoration/archs/reference/nafnet_*.keys.tsv``) and official checkpoints load
with ``strict=True``.

Hook points for subclasses (the guided models):
- ``forward(x)`` only checks the input, pads it (``_pad``, zeros on the right/bottom to a
  multiple of ``pad_multiple``, as the official ``check_image_size``), calls
  ``_forward_padded`` and crops back. A subclass with another signature (``forward(x, ref)``)
  reuses ``_pad`` and ``_forward_padded``.
- ``_forward_padded(inp, fuse=None)`` runs the U-Net on a padded input. ``fuse(level, x)``,
  if given, is called on the feature entering encoder level ``level`` (0 = after ``intro``,
  at full resolution, width ``width``; level ``l`` at 1/2**l, width ``width * 2**l``) and, with
  ``level == num_levels``, on the feature entering ``middle_blks``; it must return a tensor of
  the same shape. That is where reference fusion goes ("before each encoder stage and before
  the middle blocks"). The skip connections take the encoder outputs computed from the fused
  features.
- ``pad_multiple`` is a plain attribute (``2 ** num_levels``); a subclass that needs a larger
  multiple sets it after ``super().__init__``.
- ``NAFNetLocal.local_kernel_size(level)`` gives the TLC pool size at a level, and
  ``tlc.replace_global_pools(module, kernel)`` converts extra blocks a subclass adds.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, as_int_tuple
from textualdeg.restoration.archs.memory import CheckpointedSequential
from textualdeg.restoration.archs.nafnet_blocks import NAFBlock
from textualdeg.restoration.archs.tlc import replace_global_pools

__all__ = ["NAFNet", "NAFNetLocal"]


@ARCH_REGISTRY.register()
class NAFNet(PaddedBackbone):
    """NAFNet U-Net: ``intro`` conv, encoder levels of NAFBlocks with stride-2 conv
    downsampling (C -> 2C), middle blocks, 1x1 conv + PixelShuffle upsampling with additive
    skips, ``ending`` conv and a global residual.

    Args:
        img_channel (int): input and output channels. Default 3.
        width (int): channels at full resolution. Default 16.
        middle_blk_num (int): NAFBlocks at the lowest resolution. Default 1.
        enc_blk_nums (tuple[int, ...]): NAFBlocks per encoder level; its length is the number
            of levels L (the input is padded to a multiple of 2**L). Default ().
        dec_blk_nums (tuple[int, ...]): NAFBlocks per decoder level (same length as
            ``enc_blk_nums``, coarsest first). Default ().

    Input (B, img_channel, H, W) in [0, 1], any H and W; output (B, img_channel, H, W).

    Official configs: GoPro width 64 ``enc_blk_nums=(1, 1, 1, 28)``, ``middle_blk_num=1``,
    ``dec_blk_nums=(1, 1, 1, 1)``; SIDD width 32 ``(2, 2, 4, 8)``, 12, ``(2, 2, 2, 2)``.
    """

    pad_mode = "constant"  # zeros on the right/bottom, as the official check_image_size

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
    ) -> None:
        super().__init__()
        for name, value in (("img_channel", img_channel), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(middle_blk_num, int) or isinstance(middle_blk_num, bool) or middle_blk_num < 0:
            raise ValueError(f"middle_blk_num must be an int >= 0, got {middle_blk_num!r}")
        enc_blk_nums = as_int_tuple("enc_blk_nums", enc_blk_nums)
        dec_blk_nums = as_int_tuple("dec_blk_nums", dec_blk_nums)
        if len(dec_blk_nums) != len(enc_blk_nums):
            raise ValueError(
                f"dec_blk_nums must have as many levels as enc_blk_nums={enc_blk_nums}, "
                f"got dec_blk_nums={dec_blk_nums}"
            )
        self.img_channel = img_channel
        self.input_channels = img_channel
        self.width = width

        # Registration order = official state_dict order (intro, ending, encoders, decoders,
        # middle_blks, ups, downs); middle_blks is filled in place below. The levels are
        # CheckpointedSequential stages (memory.py): nn.Sequential keys, optional recomputation.
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, bias=True)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.middle_blks = CheckpointedSequential()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()

        chan = width
        for num in enc_blk_nums:
            self.encoders.append(CheckpointedSequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, kernel_size=2, stride=2))
            chan *= 2
        for _ in range(middle_blk_num):
            self.middle_blks.append(NAFBlock(chan))
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, kernel_size=1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(CheckpointedSequential(*[NAFBlock(chan) for _ in range(num)]))

        self.pad_multiple = 2 ** len(self.encoders)

    @property
    def num_levels(self) -> int:
        """Number of encoder (and decoder) levels L."""
        return len(self.encoders)

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        """Run the U-Net on an input whose H and W are multiples of ``2 ** num_levels``.

        Args:
            inp: (B, img_channel, H, W), padded.
            fuse: optional ``fuse(level, x) -> x`` applied to the feature entering each
                encoder level (0..L-1) and the middle blocks (level L); see the module doc.

        Returns:
            (B, img_channel, H, W): ``ending(...) + inp``.
        """
        x = self.intro(inp)  # (B, width, H, W)
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            if fuse is not None:
                x = fuse(level, x)
            x = encoder(x)  # (B, width * 2**level, H / 2**level, W / 2**level)
            skips.append(x)
            x = down(x)
        if fuse is not None:
            x = fuse(self.num_levels, x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        return self.ending(x) + inp


@ARCH_REGISTRY.register()
class NAFNetLocal(NAFNet):
    """NAFNet with the test-time local converter (TLC): every global average pool of the
    channel attention becomes a local box average whose size is ``base_size / train_size``
    of the feature map at the training resolution (default 1.5x), so statistics at test time
    cover the same image area as in training. Parameters and state_dict equal NAFNet's.

    Inputs no larger than ``base_size`` (after padding) are pooled globally, so the output
    equals NAFNet's there; in particular at the training size.

    Args:
        img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums: as in ``NAFNet``.
        train_size (tuple[int, int, int, int]): (N, C, H, W) of the training crops.
            Default (1, 3, 256, 256).
        base_size (tuple[int, int] | int | None): pooling window in input pixels;
            None gives ``(int(1.5 * H), int(1.5 * W))`` as the official NAFNetLocal.
        fast_imp (bool): the official approximate pool; not supported (must be False).
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        train_size: Sequence[int] = (1, 3, 256, 256),
        base_size: Sequence[int] | int | None = None,
        fast_imp: bool = False,
    ) -> None:
        super().__init__(
            img_channel=img_channel,
            width=width,
            middle_blk_num=middle_blk_num,
            enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums,
        )
        train_size = as_int_tuple("train_size", train_size, length=4, minimum=1)
        if base_size is None:
            base_size = (int(train_size[-2] * 1.5), int(train_size[-1] * 1.5))
        elif isinstance(base_size, int) and not isinstance(base_size, bool):
            base_size = (base_size, base_size)
        base_size = as_int_tuple("base_size", base_size, length=2, minimum=1)
        if fast_imp:
            raise ValueError(
                f"fast_imp={fast_imp!r} is not supported (the official fast path is an "
                "approximation); use fast_imp=False"
            )
        self.train_size = train_size
        self.base_size = base_size
        for level, encoder in enumerate(self.encoders):
            replace_global_pools(encoder, self.local_kernel_size(level))
        replace_global_pools(self.middle_blks, self.local_kernel_size(self.num_levels))
        for i, decoder in enumerate(self.decoders):
            replace_global_pools(decoder, self.local_kernel_size(self.num_levels - 1 - i))

    def local_kernel_size(self, level: int) -> tuple[int, int]:
        """TLC pool size (kh, kw) for a feature at resolution level ``level`` (1/2**level).

        Equals what the official ``Local_Base.convert`` fixes during its calibration forward
        at ``train_size``: ``feature_size * base_size // train_size``.
        """
        th, tw = self.train_size[-2:]
        m = self.pad_multiple
        fh = -(-th // m) * m // 2**level  # padded training height at this level
        fw = -(-tw // m) * m // 2**level
        return (fh * self.base_size[0] // th, fw * self.base_size[1] // tw)

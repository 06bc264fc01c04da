"""GuidedSFNet: SFNet with coarse-to-fine reference fusion (the authors' SFNetRefFusion).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334: the dehazing model of option
files 005 (RESIDE indoor) and 006 (outdoor), on SFNet ("Selective Frequency Network for
Image Restoration", Cui et al., ICLR 2023).

Layout origin: ``mrluin/TextualDegRemoval@3cbe6fd models/archs/network_sfnet_guided_arch.py``
and ``models/archs/sfnet_arch_utils.py`` (no license file upstream). Re-implemented on top
of our ``SFNet``, whose attributes stay untouched (official SFNet checkpoints load with
``strict=False``, exactly the ``masa_*`` keys missing); the reference branch is added
under the authors' names: ``masa_enc`` (a 3-level reference encoder, widths ``nf``,
``2 nf``, ``4 nf``) and ``masa_blk_enc_level1..3`` (one :class:`EBlockResFusion` each).

The authors' model builds but cannot run (their defect D36, whose seven parts are listed
in docs/official_differences.md and below), so no checkpoint of it
exists; this is the model it describes, whose state_dict is
``tests/restoration/archs/reference/textualdeg_sfnet_reffusion_intended.keys.tsv`` (the
authors' names and shapes, except ``masa_enc.conv_L2``/``conv_L3``, whose widths are
repaired):

- one 3-level encoder (their second ``Encoder`` class shadows the first and keeps ``nf``
  channels where its blocks expect ``2 nf``/``4 nf``: D36(a));
- the search runs on level 3 (1/4, ``4 nf`` channels) and the three levels are warped
  (their forward indexes levels 5, 4 and 3 of a 3-level list: D36(b));
- ``EBlockResFusion`` computes ``x + alpha * EBlock(x)`` (theirs multiplies the module
  object: D36(c)); ``alpha`` starts at 0, so a fresh fusion is the identity;
- level 3 uses ``masa_blk_enc_level3`` (theirs calls level 2's stack: D36(d));
- ``forward`` returns the full-resolution image cropped to the input size (theirs slices
  a Python list: D36(e)); ``mode`` must be a list (D36(f), checked by ``SFNet``).
  ``forward(x, ref, stages=True)`` returns the three scales, final first, which
  ``stage_losses.MultiScaleFFTLoss`` compares with the target resized to each scale, as
  the original SFNet trains (theirs compared all three with the full-size target: D36(g)).

Fusion points (the ``fuse`` hook of ``SFNet._forward_padded``): level 1 after
``feat_extract[0]`` (width 64 = concat of 32 backbone and 32 warped channels), level 2
after ``feat_extract[1]``, before ``FAM2`` (128), level 3 after ``feat_extract[2]``,
before ``FAM1`` (256). Each stack is fed ``cat([feature, warped])`` and its first half is
kept (``ReferenceFusion``).
"""

from __future__ import annotations

from collections.abc import Sequence

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.sfnet import EBlock, SFNet
from textualdeg.restoration.reference.fusion import ReferenceFusion, ZeroGatedResidual
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin, fusion_block_counts

__all__ = ["EBlockResFusion", "GuidedSFNet"]


class EBlockResFusion(ZeroGatedResidual, EBlock):
    """SFNet stage gated by a zero-initialised scalar: ``x + alpha * EBlock(x)``.

    Args: as :class:`~textualdeg.restoration.archs.sfnet.EBlock` (channels, num_res,
    mode). Parameters: ``alpha`` (1,) and the stage's ``layers.*`` (the authors' layout).
    """


@ARCH_REGISTRY.register()
class GuidedSFNet(ReferenceGuidedMixin, SFNet):
    """SFNet whose three encoder levels fuse warped reference features.

    A 3-level reference encoder encodes the input and the reference; the 1/4 level is
    matched coarse-to-fine, every level is warped onto the input grid and fused into the
    backbone feature of that level by an :class:`EBlockResFusion` of twice its width. A
    fresh model holding an SFNet checkpoint computes that SFNet on inputs whose size is a
    multiple of ``pad_multiple``.

    Args:
        mode (Sequence[str]): ``[phase, scene]`` as in ``SFNet`` (YAML ``[train, Indoor]``).
        num_res (int): ResBlocks per backbone stage. Default 16.
        base_channel (int): backbone width at full resolution. Default 32.
        nf (int | None): reference-encoder width; must equal ``base_channel``. None:
            ``base_channel``.
        ext_n_blocks (Sequence[int]): residual blocks per reference-encoder level.
            Default (4, 4, 4).
        reffusion_n_blocks (Sequence[int]): ResBlocks of the fusion stage at each of the
            three levels (the last with the dynamic filters; each >= 1). Default (2, 2, 2).
        reffusion_n_blocks_middle (int | None): accepted for the authors' option files;
            unused (SFNet has no middle stage to fuse). Default None.
        scale (int): must be 1. num_nbr (int): must be 1. psize (int): must be 3.
        lr_block_size (int): coarse-search block side at the 1/4 level. Default 8.
        ref_down_block_size (float): search-window scale. Default 1.5.
        dilations (Sequence[int]): coarse-search dilations. Default (1, 2, 3).
        reference_mode, refine_window, ref_scales: the reference path (``masa``, the
            authors', bit-exact, default; or ``refined``, ours), as documented once in
            ``ReferenceGuidedMixin._init_reference`` (``restoration/reference/guided.py``).

    Forward: ``model(x, ref)`` with x (B, 3, H, W) and ref (B, 3, Hr, Wr) in [0, 1], any
    sizes; returns (B, 3, H, W). Both are zero-padded right/bottom to a multiple of
    ``pad_multiple`` = 4 * ``lr_block_size`` (32), as the authors' ``check_image_size``,
    and the output is cropped back. (The plain SFNet reflect-pads to a multiple of 8.)
    """

    def __init__(
        self,
        mode: Sequence[str] = ("train", "Indoor"),
        num_res: int = 16,
        base_channel: int = 32,
        nf: int | None = None,
        ext_n_blocks: Sequence[int] = (4, 4, 4),
        reffusion_n_blocks: Sequence[int] = (2, 2, 2),
        reffusion_n_blocks_middle: int | None = None,
        scale: int = 1,
        num_nbr: int = 1,
        psize: int = 3,
        lr_block_size: int = 8,
        ref_down_block_size: float = 1.5,
        dilations: Sequence[int] = (1, 2, 3),
        reference_mode: str = "masa",
        refine_window: int = 5,
        ref_scales: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__(mode=mode, num_res=num_res, base_channel=base_channel)
        counts = fusion_block_counts(reffusion_n_blocks, 3)
        if min(counts) < 1:
            raise ValueError(
                f"reffusion_n_blocks entries must be >= 1 (an SFNet stage ends with its "
                f"dynamic-filter block), got {reffusion_n_blocks!r}"
            )
        if reffusion_n_blocks_middle is not None and (
            not isinstance(reffusion_n_blocks_middle, int) or reffusion_n_blocks_middle < 0
        ):
            raise ValueError(
                f"reffusion_n_blocks_middle must be an int >= 0 or None, got {reffusion_n_blocks_middle!r}"
            )
        self._init_reference(
            image_channels=3,
            ref_channels=3,
            width=base_channel,
            num_levels=3,
            nf=nf,
            ext_n_blocks=ext_n_blocks,
            scale=scale,
            num_nbr=num_nbr,
            psize=psize,
            lr_block_size=lr_block_size,
            ref_down_block_size=ref_down_block_size,
            dilations=dilations,
            reference_mode=reference_mode,
            refine_window=refine_window,
            ref_scales=ref_scales,
        )
        for level, n in enumerate(counts):
            stack = EBlockResFusion(2 * base_channel * 2**level, n, self.mode)
            self.add_module(f"masa_blk_enc_level{level + 1}", stack)

    def _fusion_stacks(self) -> list[ReferenceFusion]:
        # ReferenceFusion adds the concat and the cut around each gated stage; it is a
        # parameter-free view built per call, so the stages keep the authors' key names.
        stages = (self.masa_blk_enc_level1, self.masa_blk_enc_level2, self.masa_blk_enc_level3)
        return [ReferenceFusion(stage) for stage in stages]


# The authors' option files (005, 006) name it SFNetRefFusion.
ARCH_REGISTRY.register(GuidedSFNet, name="SFNetRefFusion")

"""GuidedDSRIR: DSRIR with coarse-to-fine reference fusion at the three levels of SN1.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334: its reference fusion (the
authors' ``masa_*`` branch, see ``restoration/reference/guided.py``) applied to DSRIR
("DSRIR: Dynamic spatial refinement learning for progressive all-in-one image
restoration", xfwang23/DSRIR@31f8e1f42848cd2a41f0be7c172e506601cdd563 ``model/DSRIR.py``).
The authors released no guided DSRIR; this one follows their pattern for the other
backbones (``guided_restormer.py``):

* the plain ``DSRIR`` attributes are untouched, so official DSRIR checkpoints load with
  ``strict=False`` and exactly the ``masa_*`` keys missing;
* ``masa_enc`` is a 3-level reference encoder (width ``sn1_feats``), one level per fusion
  point: the features entering ``SN1.encoder1``, ``SN1.encoder2`` and ``SN1.encoder3``
  (full, 1/2 and 1/4 resolution; see ``dsrir.py`` for why SN1);
* ``masa_blk_enc_level1..3`` are stacks of DSRIR's own block (a PAB, with that level's
  patch grid) at twice the level's width, each gated by a zero-initialised ``alpha``
  (:class:`PABResFusionBlock`), so a fresh guided model computes the plain one.

One addition the other backbones do not need: the reference encoder doubles its width per
level (``sn1_feats * 2**l``) while SN1 adds ``feats_step1`` per level (32, 64, 96 channels at
the defaults against 32, 64, 128), so a warped level whose width differs from SN1's is
mapped onto it by a 1x1 conv, ``masa_align.<level>`` (levels of equal width keep an
identity, with no weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.dsrir import DSRIR, PAB, DSRIRStages, PatchGrid
from textualdeg.restoration.reference.fusion import ReferenceFusion, ZeroGatedResidual
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin, fusion_block_counts

__all__ = ["GuidedDSRIR", "PABResFusionBlock"]


class PABResFusionBlock(ZeroGatedResidual, PAB):
    """DSRIR's patch attention block gated by a zero-initialised scalar: ``x + alpha * PAB(x)``.

    Args: as :class:`~textualdeg.restoration.archs.dsrir.PAB` (n_feat, kernel_size,
    reduction, bias, pa_size). Parameter names are the block's plus ``alpha``.
    """


@ARCH_REGISTRY.register()
class GuidedDSRIR(ReferenceGuidedMixin, DSRIR):
    """DSRIR fusing warped reference features before each encoder level of SN1.

    Args:
        in_c, out_c, sn1_feats, sn2_feats, sn3_feats, feats_step1, feats_step2,
        kernel_size, reduction, bias, sn1_pab, sn2_pab, sn3_pab, sn1_pa, sn2_pa, sn3_pa:
            the backbone, as :class:`~textualdeg.restoration.archs.dsrir.DSRIR`.
        nf (int | None): reference-encoder width; must equal ``sn1_feats``. None: ``sn1_feats``.
        ext_n_blocks (Sequence[int]): residual blocks per reference-encoder level.
            Default (4, 4, 4).
        reffusion_n_blocks (Sequence[int]): fusion blocks before SN1's levels 1, 2 and 3.
            Default (2, 2, 2).
        scale (int): must be 1. num_nbr (int): must be 1. psize (int): must be 3.
        lr_block_size (int): coarse-search block side at the deepest level. Default 8.
        ref_down_block_size (float): search-window scale. Default 1.5.
        dilations (Sequence[int]): coarse-search dilations. Default (1, 2, 3).
        reference_mode, refine_window, ref_scales: the reference path (``masa``, the
            authors', default; or ``refined``, ours), as documented once in
            ``ReferenceGuidedMixin._init_reference`` (``restoration/reference/guided.py``).

    Forward: ``model(x, ref)`` with x (B, in_c, H, W) and ref (B, out_c, Hr, Wr) in [0, 1],
    any sizes; returns the final image (B, out_c, H, W). ``forward_stages(x, ref)`` returns
    every stage's image and variance. Both inputs are zero-padded right/bottom to
    ``pad_multiple`` (the least common multiple of 4 * ``lr_block_size`` and the plain
    model's 8; 32 at the defaults) and the outputs cropped back. (The plain DSRIR
    reflect-pads instead; the fresh fusion reproduces it exactly on inputs whose size is
    a multiple of ``pad_multiple``.)
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
        nf: int | None = None,
        ext_n_blocks: Sequence[int] = (4, 4, 4),
        reffusion_n_blocks: Sequence[int] = (2, 2, 2),
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
        super().__init__(
            in_c=in_c, out_c=out_c, sn1_feats=sn1_feats, sn2_feats=sn2_feats, sn3_feats=sn3_feats,
            feats_step1=feats_step1, feats_step2=feats_step2, kernel_size=kernel_size, reduction=reduction,
            bias=bias, sn1_pab=sn1_pab, sn2_pab=sn2_pab, sn3_pab=sn3_pab, sn1_pa=sn1_pa, sn2_pa=sn2_pa,
            sn3_pa=sn3_pa,
        )
        backbone_multiple = self.pad_multiple
        counts = fusion_block_counts(reffusion_n_blocks, 3)
        self._init_reference(
            image_channels=in_c,
            ref_channels=out_c,
            width=sn1_feats,
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
        # the search needs multiples of 4 * lr_block_size, the patch grids multiples of 8
        self.pad_multiple = math.lcm(self.pad_multiple, backbone_multiple)
        self.masa_align = nn.ModuleList(
            nn.Identity() if c_ref == c else nn.Conv2d(c_ref, c, 1, bias=False)
            for c_ref, c in zip(self.masa_enc.channels, self.sn1_widths)
        )
        grids = tuple(tuple(g) for g in sn1_pa)
        for level, n in enumerate(counts):
            width = 2 * self.sn1_widths[level]
            blocks = [PABResFusionBlock(width, kernel_size, reduction, bias, grids[level]) for _ in range(n)]
            self.add_module(f"masa_blk_enc_level{level + 1}", ReferenceFusion(*blocks))

    def _fusion_stacks(self) -> list[ReferenceFusion]:
        return [self.masa_blk_enc_level1, self.masa_blk_enc_level2, self.masa_blk_enc_level3]

    def _warp_features(self, feats_lq: list[torch.Tensor], ref: torch.Tensor) -> list[torch.Tensor]:
        """The mixin's warped features, mapped onto SN1's widths (``masa_align``)."""
        warped = super()._warp_features(feats_lq, ref)
        return [align(w) for align, w in zip(self.masa_align, warped)]  # level l: (B, sn1_widths[l], H/2**l, .)

    def forward_stages(self, x: torch.Tensor, ref: torch.Tensor) -> DSRIRStages:  # type: ignore[override]
        """Every stage's image and variance map, final stage first, guided by ``ref``.

        Args:
            x (Tensor): (B, in_c, H, W) degraded input in [0, 1], any size.
            ref (Tensor): (B, out_c, Hr, Wr) guidance image in [0, 1], any size.

        Returns:
            DSRIRStages: three (B, out_c, H, W) images and three variance maps, stage 3 first.
        """
        return self.forward(x, ref, stages=True)

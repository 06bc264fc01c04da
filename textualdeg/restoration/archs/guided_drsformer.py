"""GuidedDRSformer: DRSformer with coarse-to-fine reference fusion at its four levels.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334: the deraining models of the
authors' option files 008-010 (``DRSformerRefFusion``) and 007 (Rain200L,
``DRSformer200L_SPA_RefFusion``), on the DRSformer backbone ("Learning A Sparse
Transformer Network for Effective Image Deraining", Chen et al., CVPR 2023,
arXiv:2303.11950).

Layout origin: ``mrluin/TextualDegRemoval@3cbe6fd models/archs/network_drsformer_guided_arch.py``
and ``network_drsformer_guided_arch_200L_SPA.py`` (no license file upstream). Re-implemented
on top of our ``DRSformer`` / ``DRSformer200LSPA``, whose attributes stay untouched; the
reference branch is added as ``masa_enc`` (a 4-level encoder) and ``masa_blk_enc_level1..4``
(stacks of :class:`SparseTransformerResFusionBlock`: DRSformer's TKSA/MSFN block gated by a
zero-initialised ``alpha``), the authors' names. The key set and shapes equal the authors'
constructors' (``tests/restoration/archs/reference/textualdeg_drsformer*_reffusion_*.keys.tsv``),
so their checkpoints load, and plain DRSformer checkpoints load with only the ``masa_*``
keys missing. The order of the keys differs (theirs interleaves the fusion stacks with the
backbone); loading does not depend on it.

Fusion points: the features entering ``encoder_level1`` (after MEFC ``encoder_level0`` in
the full model, right after ``patch_embed`` in the Rain200L/SPA one), ``encoder_level2``,
``encoder_level3`` and ``latent``, at widths 2*dim * (1, 2, 4, 8) with ``heads``.

This is the 4-level model the method intends. The authors' forward indexes a fifth encoder
level that their 4-level encoder does not build (their D33, see
docs/official_differences.md) and cannot run; here the search
runs on level 4 (1/8, ``8 * dim`` channels). The reference path is ``reference_mode``:
``masa`` (the authors' matching and transfer) or ``refined`` (ours,
``docs/reference_path.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.drsformer import DRSformer, DRSformer200LSPA, SparseTransformerBlock
from textualdeg.restoration.archs.guided_restormer import add_transformer_fusions
from textualdeg.restoration.reference.fusion import ReferenceFusion, ZeroGatedResidual
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin, fusion_block_counts

__all__ = ["GuidedDRSformer", "GuidedDRSformer200LSPA", "SparseTransformerResFusionBlock"]


class SparseTransformerResFusionBlock(ZeroGatedResidual, SparseTransformerBlock):
    """DRSformer block gated by a zero-initialised scalar: ``x + alpha * block(x)``.

    Args: as :class:`~textualdeg.restoration.archs.drsformer.SparseTransformerBlock` (dim,
    num_heads, ffn_expansion_factor, bias, LayerNorm_type). Parameter names are the
    block's plus ``alpha`` (the authors' ``TransformerResFusionBlock`` layout).
    """


@ARCH_REGISTRY.register()
class GuidedDRSformer(ReferenceGuidedMixin, DRSformer):
    """DRSformer fusing warped reference features before each of its four levels.

    Args:
        inp_channels (int): input channels, and channels of the reference. Default 3.
        out_channels (int): output channels (equal to ``inp_channels``). Default 3.
        dim (int): channels at full resolution. Default 48.
        num_blocks (Sequence[int]): transformer blocks per level. Default (4, 6, 6, 8).
        heads (Sequence[int]): attention heads per level (also of the fusion stacks).
            Default (1, 2, 4, 8).
        ffn_expansion_factor (float): MSFN expansion. Default 2.66.
        bias (bool): conv biases in the blocks. Default False.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``. Default ``"WithBias"``.
        nf (int | None): reference-encoder width; must equal ``dim``. None: ``dim``.
        ext_n_blocks (Sequence[int]): residual blocks per reference-encoder level.
            Default (4, 4, 4, 4).
        reffusion_n_blocks (Sequence[int]): fusion blocks before levels 1, 2, 3 and the
            latent. Default (2, 2, 2, 2).
        reffusion_n_blocks_middle (int | None): accepted for the authors' option files;
            unused (the latent's stack is ``reffusion_n_blocks[3]``, as in their
            constructor). Default None.
        scale (int): must be 1. num_nbr (int): must be 1. psize (int): must be 3.
        lr_block_size (int): coarse-search block side at the deepest level. Default 8.
        ref_down_block_size (float): search-window scale. Default 1.5.
        dilations (Sequence[int]): coarse-search dilations. Default (1, 2, 3).
        reference_mode, refine_window, ref_scales: the reference path (``masa``, the
            authors', default; or ``refined``, ours), as documented once in
            ``ReferenceGuidedMixin._init_reference`` (``restoration/reference/guided.py``).

    Forward: ``model(x, ref)`` with x (B, inp_channels, H, W) and ref
    (B, inp_channels, Hr, Wr) in [0, 1], any sizes; returns (B, out_channels, H, W).
    Both are zero-padded right/bottom to a multiple of ``pad_multiple`` = 8 *
    ``lr_block_size`` (64), as the authors do, and the output is cropped back. (The plain
    DRSformer reflect-pads to a multiple of 8, so a fresh fusion reproduces a plain
    checkpoint exactly on inputs whose size is a multiple of ``pad_multiple``.)
    """

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
        nf: int | None = None,
        ext_n_blocks: Sequence[int] = (4, 4, 4, 4),
        reffusion_n_blocks: Sequence[int] = (2, 2, 2, 2),
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
        super().__init__(
            inp_channels=inp_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=num_blocks,
            heads=heads,
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            LayerNorm_type=LayerNorm_type,
        )
        counts = fusion_block_counts(reffusion_n_blocks, 4)
        self._init_reference(
            image_channels=inp_channels,
            ref_channels=inp_channels,
            width=dim,
            num_levels=4,
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
        add_transformer_fusions(
            self, dim, tuple(heads), ffn_expansion_factor, bias, LayerNorm_type, counts,
            block=SparseTransformerResFusionBlock,
        )

    def _fusion_stacks(self) -> list[ReferenceFusion]:
        return [self.masa_blk_enc_level1, self.masa_blk_enc_level2, self.masa_blk_enc_level3, self.masa_blk_enc_level4]


@ARCH_REGISTRY.register()
class GuidedDRSformer200LSPA(GuidedDRSformer, DRSformer200LSPA):
    """:class:`GuidedDRSformer` on the MEFC-free Rain200L/SPA backbone: level 1 fuses
    right after ``patch_embed``. Same arguments, input and output."""


ARCH_REGISTRY.register(GuidedDRSformer, name="DRSformerRefFusion")
ARCH_REGISTRY.register(GuidedDRSformer200LSPA, name="DRSformer200L_SPA_RefFusion")

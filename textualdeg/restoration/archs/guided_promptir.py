"""GuidedPromptIR: PromptIR with coarse-to-fine reference fusion at its four levels.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334 (the authors'
``PromptIRRefFusion``, option file 001, all-in-one).

Layout origin: ``mrluin/TextualDegRemoval@e755c39 models/archs/network_promptir_guided_arch.py``
(no license file upstream). Re-implemented on top of our ``PromptIR``, whose attributes
stay untouched; the reference branch is Restormer's (``masa_enc``,
``masa_blk_enc_level1..4``, see ``guided_restormer.py``). It is the 4-level model the
method intends (their forward indexes a missing fifth level, D33), with the prompt
decoder on by default (their option file's ``decoder: False`` cannot run, D35; IDs as
in docs/official_differences.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.guided_restormer import add_transformer_fusions
from textualdeg.restoration.archs.promptir import PromptIR
from textualdeg.restoration.reference.fusion import ReferenceFusion
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin, fusion_block_counts

__all__ = ["GuidedPromptIR"]


@ARCH_REGISTRY.register()
class GuidedPromptIR(ReferenceGuidedMixin, PromptIR):
    """PromptIR fusing warped reference features before each of its four levels.

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, decoder, prompt_dims, prompt_sizes,
        prompt_len: as :class:`~textualdeg.restoration.archs.promptir.PromptIR`
            (defaults: the official all-in-one model, ``decoder=True``).
        nf (int | None): reference-encoder width; must equal ``dim``. None: ``dim``.
        ext_n_blocks (Sequence[int]): residual blocks per reference-encoder level.
            Default (4, 4, 4, 4).
        reffusion_n_blocks (Sequence[int]): fusion blocks before levels 1, 2, 3 and the
            latent. Default (2, 2, 2, 2).
        reffusion_n_blocks_middle (int | None): accepted for the authors' option files;
            unused (see ``GuidedRestormer``). Default None.
        scale (int): must be 1. num_nbr (int): must be 1. psize (int): must be 3.
        lr_block_size (int): coarse-search block side at the deepest level. Default 8.
        ref_down_block_size (float): search-window scale. Default 1.5.
        dilations (Sequence[int]): coarse-search dilations. Default (1, 2, 3).
        reference_mode, refine_window, ref_scales: the reference path (``masa``, the
            authors', bit-exact, default; or ``refined``, ours), as documented once in
            ``ReferenceGuidedMixin._init_reference`` (``restoration/reference/guided.py``).

    Forward: ``model(x, ref)`` with x and ref (B, inp_channels, ., .) in [0, 1], any
    sizes; returns (B, out_channels, H, W). Both are zero-padded right/bottom to a
    multiple of ``pad_multiple`` = 8 * ``lr_block_size`` and the output is cropped back.
    (The plain PromptIR reflect-pads to a multiple of 8 instead, as the authors' guided
    code does not; so the fresh fusion reproduces a plain PromptIR checkpoint exactly on
    inputs whose size is a multiple of ``pad_multiple``.)
    """

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # noqa: N803
        decoder: bool = True,
        prompt_dims: Sequence[int] = (64, 128, 320),
        prompt_sizes: Sequence[int] = (64, 32, 16),
        prompt_len: int = 5,
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
            num_refinement_blocks=num_refinement_blocks,
            heads=heads,
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            LayerNorm_type=LayerNorm_type,
            decoder=decoder,
            prompt_dims=prompt_dims,
            prompt_sizes=prompt_sizes,
            prompt_len=prompt_len,
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
        add_transformer_fusions(self, dim, tuple(heads), ffn_expansion_factor, bias, LayerNorm_type, counts)

    def _fusion_stacks(self) -> list[ReferenceFusion]:
        return [self.masa_blk_enc_level1, self.masa_blk_enc_level2, self.masa_blk_enc_level3, self.masa_blk_enc_level4]

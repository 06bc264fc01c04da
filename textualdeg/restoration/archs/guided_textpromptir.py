"""GuidedTextPromptIR: TextPromptIR read with an instruction and fused with a guidance image.

Papers: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334 (the guidance image and its
reference fusion), and "Textual Prompt Guided Image Restoration" (Yan et al.),
arXiv:2312.06162 (the instruction-prompted backbone).

Not in either official repository: the authors fuse guidance into plain backbones only
and TextPromptIR reads no image besides its input. Built as ``GuidedPromptIR`` is, on top
of our ``TextPromptIR`` (whose attributes, and official checkpoint keys, stay untouched):
the shared reference branch (``masa_enc``, ``masa_blk_enc_level1..4``, see
``guided_restormer.py`` and ``restoration/reference/guided.py``) fuses the warped guidance
before ``encoder_level1..3`` and ``latent``; every text-modulated block still reads the
instruction (docs/textpromptir.md, "Both: guidance image and instruction").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.guided_restormer import add_transformer_fusions
from textualdeg.restoration.archs.textpromptir import TextPromptIR
from textualdeg.restoration.reference.fusion import ReferenceFusion
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin, fusion_block_counts

__all__ = ["GuidedTextPromptIR"]


@ARCH_REGISTRY.register()
class GuidedTextPromptIR(ReferenceGuidedMixin, TextPromptIR):
    """TextPromptIR fusing warped guidance features before each of its four levels.

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, text_dim, text_hidden_dim, embed_dim,
        keep_dead_weights: as :class:`~textualdeg.restoration.archs.textpromptir.TextPromptIR`
            (defaults: the official network, so its checkpoints load with ``strict=False``,
            exactly the ``masa_*`` keys missing).
        nf (int | None): reference-encoder width; must equal ``dim``. None: ``dim``.
        ext_n_blocks (Sequence[int]): residual blocks per reference-encoder level.
            Default (4, 4, 4, 4).
        reffusion_n_blocks (Sequence[int]): fusion blocks before levels 1, 2, 3 and the
            latent. Default (2, 2, 2, 2).
        scale (int): must be 1. num_nbr (int): must be 1. psize (int): must be 3.
        lr_block_size (int): coarse-search block side at the deepest level. Default 8.
        ref_down_block_size (float): search-window scale. Default 1.5.
        dilations (Sequence[int]): coarse-search dilations. Default (1, 2, 3).
        reference_mode, refine_window, ref_scales: the reference path (``masa``, the
            authors', default; or ``refined``, ours), as documented once in
            ``ReferenceGuidedMixin._init_reference`` (``restoration/reference/guided.py``).

    Forward: ``model(x, ref, text_embedding)`` with x and ref (B, inp_channels, ., .) in
    [0, 1], any sizes, and (B, text_dim) instruction embeddings; returns (B, out_channels,
    H, W). Input and guidance are zero-padded right/bottom to a multiple of
    ``pad_multiple`` = 8 * ``lr_block_size`` (the plain TextPromptIR reflect-pads to 8), so
    the fresh fusion reproduces a plain TextPromptIR exactly on inputs of that multiple.
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
        text_dim: int = 768,
        text_hidden_dim: int = 576,
        embed_dim: int = 384,
        keep_dead_weights: bool = True,
        nf: int | None = None,
        ext_n_blocks: Sequence[int] = (4, 4, 4, 4),
        reffusion_n_blocks: Sequence[int] = (2, 2, 2, 2),
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
            text_dim=text_dim,
            text_hidden_dim=text_hidden_dim,
            embed_dim=embed_dim,
            keep_dead_weights=keep_dead_weights,
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

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, ref: torch.Tensor, text_embedding: torch.Tensor,
        clean: torch.Tensor | None = None, generator: torch.Generator | None = None, stages: bool = False,
    ):
        """Restore ``x`` as the instruction says, guided by ``ref``.

        Args:
            x (Tensor): (B, inp_channels, H, W) degraded input in [0, 1], any H and W.
            ref (Tensor): (B, inp_channels, Hr, Wr) guidance image in [0, 1], any size.
            text_embedding (Tensor): (B, text_dim) instruction embeddings (or (text_dim,), shared).
            clean, generator: the correspondence loss of ``refined`` mode in training, as
                :meth:`ReferenceGuidedMixin.forward`.
            stages (bool): not supported (a single output); raises ``ValueError``.

        Returns:
            Tensor: (B, out_channels, H, W); with ``clean``, also the correspondence loss.
        """
        self._check_pair(x, ref)
        if stages:
            self._forward_stages_padded(x)  # raises: a single output
        text = self._check_text(text_embedding, x.shape[0]).to(x.dtype)
        return self._guided_forward(x, ref, clean, generator, False, text_embedding=text)

    def _fusion_stacks(self) -> list[ReferenceFusion]:
        return [self.masa_blk_enc_level1, self.masa_blk_enc_level2, self.masa_blk_enc_level3, self.masa_blk_enc_level4]

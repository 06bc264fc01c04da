"""GuidedRestormer: Restormer with coarse-to-fine reference fusion at its four levels.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334 (the authors'
``RestormerRefFusion``, option files 003, 004_x, 011-019).

Layout origin: ``mrluin/TextualDegRemoval@e755c39 models/archs/network_restormer_guided_arch.py``
(no license file upstream). Re-implemented on top of our ``Restormer``, whose attributes
stay untouched; the reference branch is added as ``masa_enc`` (a 4-level encoder) and
``masa_blk_enc_level1..4`` (stacks of :class:`TransformerResFusionBlock`), the authors'
names, so their checkpoints and official Restormer checkpoints (``strict=False``) load.

This is the 4-level model the method intends. The authors' forward indexes a fifth
encoder level that their 4-level encoder does not build (their D33, see
docs/official_differences.md) and cannot run; here
the search runs on level 4 (1/8, ``8 * dim`` channels) and levels 1-4 are fused before
``encoder_level1``, ``encoder_level2``, ``encoder_level3`` and ``latent``. In dual-pixel
mode their encoder expected 6-channel references (D38); here the reference has
``out_channels`` channels and the encoder sees the mean of the two input views.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.restormer import Restormer
from textualdeg.restoration.archs.restormer_blocks import TransformerBlock
from textualdeg.restoration.reference.fusion import ReferenceFusion, ZeroGatedResidual
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin, fusion_block_counts

__all__ = ["GuidedRestormer", "TransformerResFusionBlock", "add_transformer_fusions"]


class TransformerResFusionBlock(ZeroGatedResidual, TransformerBlock):
    """Restormer block gated by a zero-initialised scalar: ``x + alpha * block(x)``.

    Args: as :class:`~textualdeg.restoration.archs.restormer_blocks.TransformerBlock` (dim,
    num_heads, ffn_expansion_factor, bias, LayerNorm_type). Parameter names are the
    block's plus ``alpha`` (the authors' layout).
    """


def add_transformer_fusions(
    model: nn.Module,
    dim: int,
    heads: Sequence[int],
    ffn_expansion_factor: float,
    bias: bool,
    LayerNorm_type: str,  # noqa: N803
    counts: Sequence[int],
    block: type[nn.Module] | None = None,
) -> None:
    """Attach ``masa_blk_enc_level1..4`` to a 4-level transformer backbone.

    Level l (1-based) fuses ``dim * 2**(l-1)`` backbone channels with as many warped
    channels through ``counts[l-1]`` blocks of width ``2 * dim * 2**(l-1)`` with
    ``heads[l-1]`` heads. ``block`` is the gated block class, called as
    ``block(width, heads, ffn_expansion_factor, bias, LayerNorm_type)``; None:
    :class:`TransformerResFusionBlock` (DRSformer passes its TKSA/MSFN one).
    """
    block = TransformerResFusionBlock if block is None else block
    for level, n in enumerate(counts):
        width = 2 * dim * 2**level
        blocks = [block(width, heads[level], ffn_expansion_factor, bias, LayerNorm_type) for _ in range(n)]
        stack = ReferenceFusion(*blocks)
        model.add_module(f"masa_blk_enc_level{level + 1}", stack)


@ARCH_REGISTRY.register()
class GuidedRestormer(ReferenceGuidedMixin, Restormer):
    """Restormer fusing warped reference features before each of its four levels.

    Args:
        inp_channels (int): input channels (6 for dual-pixel). Default 3.
        out_channels (int): output channels, and channels of the reference. Default 3.
        dim (int): channels at full resolution. Default 48.
        num_blocks (Sequence[int]): transformer blocks per level. Default (4, 6, 6, 8).
        num_refinement_blocks (int): blocks after the decoder. Default 4.
        heads (Sequence[int]): attention heads per level. Default (1, 2, 4, 8).
        ffn_expansion_factor (float): GDFN expansion. Default 2.66.
        bias (bool): conv biases in the blocks. Default False.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``. Default ``"WithBias"``.
        dual_pixel_task (bool): dual-pixel defocus deblurring (``inp_channels`` must be
            ``2 * out_channels``: left and right views). Default False.
        nf (int | None): reference-encoder width; must equal ``dim``. None: ``dim``.
        ext_n_blocks (Sequence[int]): residual blocks per reference-encoder level.
            Default (4, 4, 4, 4).
        reffusion_n_blocks (Sequence[int]): fusion blocks before levels 1, 2, 3 and the
            latent. Default (2, 2, 2, 2).
        reffusion_n_blocks_middle (int | None): accepted for the authors' option files;
            unused (the latent's stack is ``reffusion_n_blocks[3]``, as in their
            checkpoints). Default None.
        scale (int): must be 1. num_nbr (int): must be 1. psize (int): must be 3.
        lr_block_size (int): coarse-search block side at the deepest level. Default 8.
        ref_down_block_size (float): search-window scale. Default 1.5.
        dilations (Sequence[int]): coarse-search dilations. Default (1, 2, 3).
        reference_mode, refine_window, ref_scales: the reference path (``masa``, the
            authors', bit-exact, default; or ``refined``, ours), as documented once in
            ``ReferenceGuidedMixin._init_reference`` (``restoration/reference/guided.py``).

    Forward: ``model(x, ref)`` with x (B, inp_channels, H, W) and ref
    (B, out_channels, Hr, Wr) in [0, 1], any sizes; returns (B, out_channels, H, W).
    Both are zero-padded right/bottom to a multiple of ``pad_multiple`` = 8 *
    ``lr_block_size`` (64) and the output is cropped back.
    (The plain Restormer reflect-pads to a multiple of 8 instead, as the authors' guided
    code does not; so the fresh fusion reproduces a plain Restormer checkpoint exactly on
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
        dual_pixel_task: bool = False,
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
            dual_pixel_task=dual_pixel_task,
        )
        if self.dual_pixel_task and inp_channels != 2 * out_channels:
            raise ValueError(
                "dual_pixel_task needs inp_channels == 2 * out_channels (left and right views); "
                f"got inp_channels={inp_channels}, out_channels={out_channels}"
            )
        counts = fusion_block_counts(reffusion_n_blocks, 4)
        self._init_reference(
            image_channels=inp_channels,
            ref_channels=out_channels,
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

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Dual-pixel: the mean of the two views, so input and reference share the encoder."""
        if not self.dual_pixel_task:
            return x
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).mean(dim=1)  # (B, 2, C/2, H, W) -> (B, C/2, H, W)

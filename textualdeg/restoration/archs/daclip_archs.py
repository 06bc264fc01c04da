"""DA-CLIP-conditioned NAFNet, Restormer, PromptIR and TextPromptIR, plain and guided.

Each class is its backbone (plain, or guided by a reference image, or reading an
instruction) plus one :class:`~textualdeg.restoration.archs.daclip_conditioning.DAClipBlock`
per fused level (each encoder level's input and the bottleneck; the same levels the
guidance fusion uses, and after it). See ``daclip_conditioning.py`` and
docs/daclip_conditioning.md.

Calling conventions (``e``: (B, 2, daclip_dim), ``e[:, 0]`` content, ``e[:, 1]`` degradation):

* ``DAClipNAFNet``, ``DAClipRestormer``, ``DAClipPromptIR``: ``model(x, daclip=e)``;
* ``DAClipTextPromptIR``: ``model(x, text_embedding, daclip=e)``;
* ``DAClipGuidedNAFNet``, ``DAClipGuidedRestormer``, ``DAClipGuidedPromptIR``:
  ``model(x, ref, daclip=e)`` (plus ``clean=``, ``generator=``, ``stages=`` as the guided
  backbone);
* ``DAClipGuidedTextPromptIR``: ``model(x, ref, text_embedding, daclip=e)``.

Without ``daclip`` they raise ``ValueError``. Parameters added: ``daclip_blocks.*`` only;
a plain or guided checkpoint loads with ``strict=False`` and a fresh conditioned model
holding it computes that backbone exactly (the blocks start as identities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import check_image_input
from textualdeg.restoration.archs.daclip_conditioning import DAClipConditionMixin
from textualdeg.restoration.archs.guided_nafnet import GuidedNAFNet
from textualdeg.restoration.archs.guided_promptir import GuidedPromptIR
from textualdeg.restoration.archs.guided_restormer import GuidedRestormer
from textualdeg.restoration.archs.guided_textpromptir import GuidedTextPromptIR
from textualdeg.restoration.archs.nafnet import NAFNet
from textualdeg.restoration.archs.promptir import PromptIR
from textualdeg.restoration.archs.restormer import Restormer
from textualdeg.restoration.archs.textpromptir import TextPromptIR

__all__ = [
    "DAClipGuidedNAFNet",
    "DAClipGuidedPromptIR",
    "DAClipGuidedRestormer",
    "DAClipGuidedTextPromptIR",
    "DAClipNAFNet",
    "DAClipPromptIR",
    "DAClipRestormer",
    "DAClipTextPromptIR",
]


def _nafnet_widths(width: int, levels: int) -> list[int]:
    """Widths ``fuse`` sees in NAFNet: ``width * 2**l`` for the L encoder levels and the middle."""
    return [width * 2**level for level in range(levels + 1)]


def _transformer_widths(dim: int) -> list[int]:
    """Widths ``fuse`` sees in the Restormer family: levels 1-3 and ``latent``."""
    return [dim, 2 * dim, 4 * dim, 8 * dim]


# ---------------------------------------------------------------------------------------
# plain backbones
# ---------------------------------------------------------------------------------------
@ARCH_REGISTRY.register()
class DAClipNAFNet(DAClipConditionMixin, NAFNet):
    """NAFNet conditioned on DA-CLIP embeddings before each encoder level and the middle blocks.

    Args:
        img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums: as :class:`NAFNet`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level for the content cross-attention. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``width``). Default 1.

    Forward: ``model(x, daclip=e)``, x (B, img_channel, H, W), e (B, 2, daclip_dim);
    ``stages=True`` raises ``ValueError`` (a single output), as NAFNet.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(img_channel=img_channel, width=width, middle_blk_num=middle_blk_num,
                         enc_blk_nums=enc_blk_nums, dec_blk_nums=dec_blk_nums)
        self._init_daclip(_nafnet_widths(width, self.num_levels), daclip_dim, daclip_tokens, daclip_heads)

    def forward(self, x: torch.Tensor, stages: bool = False, *, daclip: torch.Tensor | None = None) -> Any:
        """Restore ``x`` (B, C, H, W) with its DA-CLIP embeddings ``daclip`` (B, 2, D)."""
        return self._daclip_forward(x, daclip, stages)


@ARCH_REGISTRY.register()
class DAClipRestormer(DAClipConditionMixin, Restormer):
    """Restormer conditioned on DA-CLIP embeddings before ``encoder_level1..3`` and ``latent``.

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, dual_pixel_task: as :class:`Restormer`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``dim``). Default 1.

    Forward: ``model(x, daclip=e)``.
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
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks, heads=heads,
                         ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                         dual_pixel_task=dual_pixel_task)
        self._init_daclip(_transformer_widths(dim), daclip_dim, daclip_tokens, daclip_heads)

    def forward(self, x: torch.Tensor, stages: bool = False, *, daclip: torch.Tensor | None = None) -> Any:
        """Restore ``x`` (B, C, H, W) with its DA-CLIP embeddings ``daclip`` (B, 2, D)."""
        return self._daclip_forward(x, daclip, stages)


@ARCH_REGISTRY.register()
class DAClipPromptIR(DAClipConditionMixin, PromptIR):
    """PromptIR conditioned on DA-CLIP embeddings before ``encoder_level1..3`` and ``latent``
    (its prompt blocks before the decoder levels are kept as they are).

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, decoder, prompt_dims, prompt_sizes,
        prompt_len: as :class:`PromptIR`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``dim``). Default 1.

    Forward: ``model(x, daclip=e)``.
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
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks, heads=heads,
                         ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                         decoder=decoder, prompt_dims=prompt_dims, prompt_sizes=prompt_sizes, prompt_len=prompt_len)
        self._init_daclip(_transformer_widths(dim), daclip_dim, daclip_tokens, daclip_heads)

    def forward(self, x: torch.Tensor, stages: bool = False, *, daclip: torch.Tensor | None = None) -> Any:
        """Restore ``x`` (B, C, H, W) with its DA-CLIP embeddings ``daclip`` (B, 2, D)."""
        return self._daclip_forward(x, daclip, stages)


@ARCH_REGISTRY.register()
class DAClipTextPromptIR(DAClipConditionMixin, TextPromptIR):
    """TextPromptIR (instruction-prompted) also conditioned on DA-CLIP embeddings before
    ``encoder_level1..3`` and ``latent``; every text-modulated block still reads the instruction.

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, text_dim, text_hidden_dim, embed_dim,
        keep_dead_weights: as :class:`TextPromptIR`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``dim``). Default 1.

    Forward: ``model(x, text_embedding, daclip=e)``, text_embedding (B, text_dim) or
    (text_dim,); ``stages=True`` raises ``ValueError`` (a single output).
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
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks, heads=heads,
                         ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                         text_dim=text_dim, text_hidden_dim=text_hidden_dim, embed_dim=embed_dim,
                         keep_dead_weights=keep_dead_weights)
        self._init_daclip(_transformer_widths(dim), daclip_dim, daclip_tokens, daclip_heads)

    def forward(self, x: torch.Tensor, text_embedding: torch.Tensor,  # type: ignore[override]
                stages: bool = False, *, daclip: torch.Tensor | None = None) -> Any:
        """Restore ``x`` as the instruction ``text_embedding`` says, with DA-CLIP embeddings ``daclip``."""
        check_image_input(x, self.input_channels)
        e = self._check_daclip(daclip, x.shape[0], x.dtype)
        if stages:
            self._forward_stages_padded(x, daclip=e)  # raises: a single output
        text = self._check_text(text_embedding, x.shape[0]).to(x.dtype)
        return self._daclip_forward(x, e, text_embedding=text)


# ---------------------------------------------------------------------------------------
# guided backbones (reference image of stage 3; guidance fusion first, then DA-CLIP)
# ---------------------------------------------------------------------------------------
def _guided(model: Any, x: torch.Tensor, ref: torch.Tensor, clean: torch.Tensor | None,
            generator: torch.Generator | None, stages: bool, daclip: Any, **backbone_inputs: Any) -> Any:
    model._check_pair(x, ref)
    e = model._check_daclip(daclip, x.shape[0], x.dtype)
    return model._guided_forward(x, ref, clean, generator, stages, daclip=e, **backbone_inputs)


@ARCH_REGISTRY.register()
class DAClipGuidedNAFNet(DAClipConditionMixin, GuidedNAFNet):
    """GuidedNAFNet conditioned on DA-CLIP embeddings after the guidance fusion of each level.

    Args:
        img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums, nf, ext_n_blocks,
        reffusion_n_blocks, reffusion_n_blocks_middle, scale, num_nbr, psize, lr_block_size,
        ref_down_block_size, dilations, reference_mode, refine_window, ref_scales: as
            :class:`GuidedNAFNet`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``width``). Default 1.

    Forward: ``model(x, ref, clean=None, generator=None, stages=False, daclip=e)``.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        nf: int | None = None,
        ext_n_blocks: Sequence[int] = (4, 4, 4, 4),
        reffusion_n_blocks: Sequence[int] = (2, 2, 2, 2),
        reffusion_n_blocks_middle: int = 1,
        scale: int = 1,
        num_nbr: int = 1,
        psize: int = 3,
        lr_block_size: int = 8,
        ref_down_block_size: float = 1.5,
        dilations: Sequence[int] = (1, 2, 3),
        reference_mode: str = "masa",
        refine_window: int = 5,
        ref_scales: Sequence[float] = (1.0,),
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(img_channel=img_channel, width=width, middle_blk_num=middle_blk_num,
                         enc_blk_nums=enc_blk_nums, dec_blk_nums=dec_blk_nums, nf=nf, ext_n_blocks=ext_n_blocks,
                         reffusion_n_blocks=reffusion_n_blocks, reffusion_n_blocks_middle=reffusion_n_blocks_middle,
                         scale=scale, num_nbr=num_nbr, psize=psize, lr_block_size=lr_block_size,
                         ref_down_block_size=ref_down_block_size, dilations=dilations, reference_mode=reference_mode,
                         refine_window=refine_window, ref_scales=ref_scales)
        self._init_daclip(_nafnet_widths(width, self.num_levels), daclip_dim, daclip_tokens, daclip_heads)

    def forward(self, x: torch.Tensor, ref: torch.Tensor, clean: torch.Tensor | None = None,
                generator: torch.Generator | None = None, stages: bool = False, *,
                daclip: torch.Tensor | None = None) -> Any:
        """``GuidedNAFNet.forward`` with the DA-CLIP embeddings ``daclip`` (B, 2, D)."""
        return _guided(self, x, ref, clean, generator, stages, daclip)


@ARCH_REGISTRY.register()
class DAClipGuidedRestormer(DAClipConditionMixin, GuidedRestormer):
    """GuidedRestormer conditioned on DA-CLIP embeddings after the guidance fusion of each level.

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, dual_pixel_task, nf, ext_n_blocks,
        reffusion_n_blocks, reffusion_n_blocks_middle, scale, num_nbr, psize, lr_block_size,
        ref_down_block_size, dilations, reference_mode, refine_window, ref_scales: as
            :class:`GuidedRestormer`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``dim``). Default 1.

    Forward: ``model(x, ref, clean=None, generator=None, stages=False, daclip=e)``.
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
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks, heads=heads,
                         ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                         dual_pixel_task=dual_pixel_task, nf=nf, ext_n_blocks=ext_n_blocks,
                         reffusion_n_blocks=reffusion_n_blocks, reffusion_n_blocks_middle=reffusion_n_blocks_middle,
                         scale=scale, num_nbr=num_nbr, psize=psize, lr_block_size=lr_block_size,
                         ref_down_block_size=ref_down_block_size, dilations=dilations, reference_mode=reference_mode,
                         refine_window=refine_window, ref_scales=ref_scales)
        self._init_daclip(_transformer_widths(dim), daclip_dim, daclip_tokens, daclip_heads)

    def forward(self, x: torch.Tensor, ref: torch.Tensor, clean: torch.Tensor | None = None,
                generator: torch.Generator | None = None, stages: bool = False, *,
                daclip: torch.Tensor | None = None) -> Any:
        """``GuidedRestormer.forward`` with the DA-CLIP embeddings ``daclip`` (B, 2, D)."""
        return _guided(self, x, ref, clean, generator, stages, daclip)


@ARCH_REGISTRY.register()
class DAClipGuidedPromptIR(DAClipConditionMixin, GuidedPromptIR):
    """GuidedPromptIR conditioned on DA-CLIP embeddings after the guidance fusion of each level.

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, decoder, prompt_dims, prompt_sizes,
        prompt_len, nf, ext_n_blocks, reffusion_n_blocks, reffusion_n_blocks_middle, scale,
        num_nbr, psize, lr_block_size, ref_down_block_size, dilations, reference_mode,
        refine_window, ref_scales: as :class:`GuidedPromptIR`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``dim``). Default 1.

    Forward: ``model(x, ref, clean=None, generator=None, stages=False, daclip=e)``.
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
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks, heads=heads,
                         ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                         decoder=decoder, prompt_dims=prompt_dims, prompt_sizes=prompt_sizes, prompt_len=prompt_len,
                         nf=nf, ext_n_blocks=ext_n_blocks, reffusion_n_blocks=reffusion_n_blocks,
                         reffusion_n_blocks_middle=reffusion_n_blocks_middle, scale=scale, num_nbr=num_nbr,
                         psize=psize, lr_block_size=lr_block_size, ref_down_block_size=ref_down_block_size,
                         dilations=dilations, reference_mode=reference_mode, refine_window=refine_window,
                         ref_scales=ref_scales)
        self._init_daclip(_transformer_widths(dim), daclip_dim, daclip_tokens, daclip_heads)

    def forward(self, x: torch.Tensor, ref: torch.Tensor, clean: torch.Tensor | None = None,
                generator: torch.Generator | None = None, stages: bool = False, *,
                daclip: torch.Tensor | None = None) -> Any:
        """``GuidedPromptIR.forward`` with the DA-CLIP embeddings ``daclip`` (B, 2, D)."""
        return _guided(self, x, ref, clean, generator, stages, daclip)


@ARCH_REGISTRY.register()
class DAClipGuidedTextPromptIR(DAClipConditionMixin, GuidedTextPromptIR):
    """GuidedTextPromptIR (guidance image and instruction) also conditioned on DA-CLIP
    embeddings, after the guidance fusion of each level.

    Args:
        inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
        ffn_expansion_factor, bias, LayerNorm_type, text_dim, text_hidden_dim, embed_dim,
        keep_dead_weights, nf, ext_n_blocks, reffusion_n_blocks, scale, num_nbr, psize,
        lr_block_size, ref_down_block_size, dilations, reference_mode, refine_window,
        ref_scales: as :class:`GuidedTextPromptIR`.
        daclip_dim (int): DA-CLIP embedding width D. Default 512.
        daclip_tokens (int): context tokens per level. Default 4.
        daclip_heads (int): cross-attention heads (must divide ``dim``). Default 1.

    Forward: ``model(x, ref, text_embedding, clean=None, generator=None, stages=False,
    daclip=e)``; ``stages=True`` raises ``ValueError`` (a single output).
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
        daclip_dim: int = 512,
        daclip_tokens: int = 4,
        daclip_heads: int = 1,
    ) -> None:
        super().__init__(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=num_blocks,
                         num_refinement_blocks=num_refinement_blocks, heads=heads,
                         ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                         text_dim=text_dim, text_hidden_dim=text_hidden_dim, embed_dim=embed_dim,
                         keep_dead_weights=keep_dead_weights, nf=nf, ext_n_blocks=ext_n_blocks,
                         reffusion_n_blocks=reffusion_n_blocks, scale=scale, num_nbr=num_nbr, psize=psize,
                         lr_block_size=lr_block_size, ref_down_block_size=ref_down_block_size, dilations=dilations,
                         reference_mode=reference_mode, refine_window=refine_window, ref_scales=ref_scales)
        self._init_daclip(_transformer_widths(dim), daclip_dim, daclip_tokens, daclip_heads)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, ref: torch.Tensor, text_embedding: torch.Tensor,
        clean: torch.Tensor | None = None, generator: torch.Generator | None = None, stages: bool = False, *,
        daclip: torch.Tensor | None = None,
    ) -> Any:
        """``GuidedTextPromptIR.forward`` with the DA-CLIP embeddings ``daclip`` (B, 2, D)."""
        self._check_pair(x, ref)
        e = self._check_daclip(daclip, x.shape[0], x.dtype)
        if stages:
            self._forward_stages_padded(x, daclip=e)  # raises: a single output
        text = self._check_text(text_embedding, x.shape[0]).to(x.dtype)
        return self._guided_forward(x, ref, clean, generator, False, text_embedding=text, daclip=e)

"""PromptIR (all-in-one restoration with prompt blocks in the decoder).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334, which uses PromptIR
("PromptIR: Prompting for All-in-One Blind Image Restoration", Potlapalli et al.,
NeurIPS 2023, arXiv:2306.13090) as its all-in-one backbone.

Ported from va1shn9v/PromptIR@106159a ``net/model.py`` (MIT license) with
``decoder=True``, the layout of every official checkpoint: same attribute names and
registration order, so the state_dict equals
``tests/restoration/archs/reference/promptir_default.keys.tsv``
and official checkpoints load with ``strict=True``. That includes six tensors the official
forward never uses (``chnl_reduce1..3.weight``, ``reduce_noise_channel_1..3.weight``); they
are kept, dead and frozen (``requires_grad=False``), only so those checkpoints load.

Differences from the official file:
- ``decoder`` defaults to True. The official default (False) builds ``up4_3`` for 4*dim
  channels while the latent has 8*dim, so it cannot run (D35 in
  docs/official_differences.md). Here ``decoder=False``
  builds a working prompt-free variant (Restormer's decoder path, no prompt or
  ``noise_level*`` modules); no official checkpoint exists for it.
- The official hard-codes the prompt widths for dim=48 (64, 128, 320) and the channel counts
  derived from them. They are arguments here (``prompt_dims``, ``prompt_sizes``,
  ``prompt_len``) and every derived width is written in terms of ``dim`` and them; the
  defaults give the official shapes.
- H and W need not be multiples of 8: ``forward`` reflect-pads right/bottom and crops back.

Hook points for subclasses: ``_pad``, ``pad_multiple`` and ``_forward_padded(inp, fuse)``,
with the same four fusion levels as ``Restormer`` (see ``restormer.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, as_int_tuple, no_fuse
from textualdeg.restoration.archs.memory import active_checkpointing, checkpoint_call
from textualdeg.restoration.archs.restormer import check_restormer_args
from textualdeg.restoration.archs.restormer_blocks import (
    Downsample,
    OverlapPatchEmbed,
    TransformerBlock,
    Upsample,
    transformer_stage,
)

__all__ = ["PromptIR", "PromptGenBlock"]


class PromptGenBlock(nn.Module):
    """Prompt generation: softmax(Linear(GAP(x))) weights a learnable bank of ``prompt_len``
    prompts; the weighted sum is resized bilinearly to the feature size and passed through a
    3x3 conv.

    Args:
        prompt_dim (int): prompt channels D.
        prompt_len (int): prompts in the bank L.
        prompt_size (int): spatial size S of each stored prompt.
        lin_dim (int): channels C of the feature that selects the prompts.
    """

    def __init__(self, prompt_dim: int = 128, prompt_len: int = 5, prompt_size: int = 96, lin_dim: int = 192) -> None:
        super().__init__()
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, lin_dim, H, W) -> prompt (B, prompt_dim, H, W)."""
        b, _, h, w = x.shape
        _, n, d, s, _ = self.prompt_param.shape
        weights = F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # (B, L)
        bank = self.prompt_param.reshape(n, d * s * s)  # (L, D*S*S)
        prompt = (weights @ bank).reshape(b, d, s, s)  # (B, D, S, S)
        prompt = F.interpolate(prompt, (h, w), mode="bilinear", align_corners=False)  # (B, D, H, W)
        return self.conv3x3(prompt)


@ARCH_REGISTRY.register()
class PromptIR(PaddedBackbone):
    """PromptIR: Restormer's 4-level U-Net with prompt blocks before decoder levels 3, 2, 1.

    Args:
        inp_channels (int): input channels. Default 3.
        out_channels (int): output channels (equal to ``inp_channels``: input residual). Default 3.
        dim (int): channels at full resolution. Default 48.
        num_blocks (tuple[int, int, int, int]): transformer blocks per level. Default (4, 6, 6, 8).
        num_refinement_blocks (int): blocks after the decoder. Default 4.
        heads (tuple[int, int, int, int]): attention heads per level. Default (1, 2, 4, 8);
            the three prompt-fusion blocks use ``heads[2]``, as in the official code.
        ffn_expansion_factor (float): GDFN expansion. Default 2.66.
        bias (bool): biases in the attention/FFN/1x1 convs. Default False.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``. Default ``"WithBias"``.
        decoder (bool): build the prompt blocks (the official all-in-one model). Default True.
        prompt_dims (tuple[int, int, int]): prompt channels at levels 1, 2, 3.
            Default (64, 128, 320).
        prompt_sizes (tuple[int, int, int]): stored prompt sizes at levels 1, 2, 3.
            Default (64, 32, 16).
        prompt_len (int): prompts per bank. Default 5.

    Input (B, inp_channels, H, W) in [0, 1], any H and W; output (B, out_channels, H, W).
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
    ) -> None:
        super().__init__()
        num_blocks, heads = check_restormer_args(
            inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
            ffn_expansion_factor, LayerNorm_type,
        )
        if inp_channels != out_channels:
            raise ValueError(
                "the input residual needs inp_channels == out_channels; "
                f"got inp_channels={inp_channels}, out_channels={out_channels}"
            )
        p1, p2, p3 = as_int_tuple("prompt_dims", prompt_dims, length=3, minimum=1)
        s1, s2, s3 = as_int_tuple("prompt_sizes", prompt_sizes, length=3, minimum=1)
        if not isinstance(prompt_len, int) or prompt_len < 1:
            raise ValueError(f"prompt_len must be a positive int, got {prompt_len!r}")
        if decoder:
            for width in (8 * dim + p3, 4 * dim + p2, 2 * dim + p1):
                if width % heads[2]:
                    raise ValueError(
                        f"heads[2]={heads[2]} must divide every prompt-fusion width "
                        f"(8*dim+prompt_dims[2], 4*dim+prompt_dims[1], 2*dim+prompt_dims[0]); "
                        f"got {width} with dim={dim}, prompt_dims={tuple(prompt_dims)}"
                    )
        self.inp_channels = inp_channels
        self.input_channels = inp_channels
        self.out_channels = out_channels
        self.decoder = bool(decoder)
        ffn, ln = ffn_expansion_factor, LayerNorm_type

        # Registration order = official state_dict order.
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        if self.decoder:
            self.prompt1 = PromptGenBlock(p1, prompt_len, s1, lin_dim=2 * dim)
            self.prompt2 = PromptGenBlock(p2, prompt_len, s2, lin_dim=4 * dim)
            self.prompt3 = PromptGenBlock(p3, prompt_len, s3, lin_dim=8 * dim)
        # Dead in the official forward; kept so official checkpoints load strictly.
        self.chnl_reduce1 = nn.Conv2d(p1, p1, kernel_size=1, bias=bias)
        self.chnl_reduce2 = nn.Conv2d(p2, p2, kernel_size=1, bias=bias)
        self.chnl_reduce3 = nn.Conv2d(p3, 2 * p2, kernel_size=1, bias=bias)
        self.reduce_noise_channel_1 = nn.Conv2d(dim + p1, dim, kernel_size=1, bias=bias)  # dead

        self.encoder_level1 = transformer_stage(num_blocks[0], dim, heads[0], ffn, bias, ln)
        self.down1_2 = Downsample(dim)
        self.reduce_noise_channel_2 = nn.Conv2d(2 * dim + p2, 2 * dim, kernel_size=1, bias=bias)  # dead
        self.encoder_level2 = transformer_stage(num_blocks[1], dim * 2, heads[1], ffn, bias, ln)
        self.down2_3 = Downsample(dim * 2)
        self.reduce_noise_channel_3 = nn.Conv2d(4 * dim + 2 * p2, 4 * dim, kernel_size=1, bias=bias)  # dead
        self.encoder_level3 = transformer_stage(num_blocks[2], dim * 4, heads[2], ffn, bias, ln)
        self.down3_4 = Downsample(dim * 4)
        self.latent = transformer_stage(num_blocks[3], dim * 8, heads[3], ffn, bias, ln)
        # the dead tensors get no gradient: frozen, so distributed training needs no search
        # for unused parameters
        for module in (self.chnl_reduce1, self.chnl_reduce2, self.chnl_reduce3, self.reduce_noise_channel_1,
                       self.reduce_noise_channel_2, self.reduce_noise_channel_3):
            module.requires_grad_(False)

        if self.decoder:
            # The prompt block reduces the latent to 4*dim before upsampling.
            self.up4_3 = Upsample(dim * 4)  # (4dim -> 2dim)
            self.reduce_chan_level3 = nn.Conv2d(2 * dim + 4 * dim, 4 * dim, kernel_size=1, bias=bias)
            self.noise_level3 = TransformerBlock(8 * dim + p3, heads[2], ffn, bias, ln)
            self.reduce_noise_level3 = nn.Conv2d(8 * dim + p3, 4 * dim, kernel_size=1, bias=bias)
        else:
            self.up4_3 = Upsample(dim * 8)  # (8dim -> 4dim)
            self.reduce_chan_level3 = nn.Conv2d(8 * dim, 4 * dim, kernel_size=1, bias=bias)
        self.decoder_level3 = transformer_stage(num_blocks[2], dim * 4, heads[2], ffn, bias, ln)

        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, kernel_size=1, bias=bias)
        if self.decoder:
            self.noise_level2 = TransformerBlock(4 * dim + p2, heads[2], ffn, bias, ln)
            self.reduce_noise_level2 = nn.Conv2d(4 * dim + p2, 4 * dim, kernel_size=1, bias=bias)
        self.decoder_level2 = transformer_stage(num_blocks[1], dim * 2, heads[1], ffn, bias, ln)

        self.up2_1 = Upsample(dim * 2)
        if self.decoder:
            self.noise_level1 = TransformerBlock(2 * dim + p1, heads[2], ffn, bias, ln)
            self.reduce_noise_level1 = nn.Conv2d(2 * dim + p1, 2 * dim, kernel_size=1, bias=bias)
        self.decoder_level1 = transformer_stage(num_blocks[0], dim * 2, heads[0], ffn, bias, ln)
        self.refinement = transformer_stage(num_refinement_blocks, dim * 2, heads[0], ffn, bias, ln)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, padding=1, bias=bias)

        self.pad_multiple = 8

    def _prompt(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the level's prompt, fuse with a transformer block, reduce channels.

        One checkpointed region in either checkpointing mode (memory.py): the step is a
        single block outside the stages.
        """
        if active_checkpointing(self) != "none":
            return checkpoint_call(self, self._prompt_step, level, x)
        return self._prompt_step(level, x)

    def _prompt_step(self, level: int, x: torch.Tensor) -> torch.Tensor:
        prompt = getattr(self, f"prompt{level}")
        x = torch.cat([x, prompt(x)], 1)  # (B, C + prompt_dim, h, w)
        x = getattr(self, f"noise_level{level}")(x)
        return getattr(self, f"reduce_noise_level{level}")(x)

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        """Run the network on an input whose H and W are multiples of 8.

        Args:
            inp: (B, inp_channels, H, W), padded.
            fuse: optional ``fuse(level, x) -> x`` on the features entering each encoder
                level and ``latent`` (levels 0..3, as in ``Restormer``).

        Returns:
            (B, out_channels, H, W).
        """
        fuse = fuse if fuse is not None else no_fuse
        out_enc1 = self.encoder_level1(fuse(0, self.patch_embed(inp)))  # (B, dim, H, W)
        out_enc2 = self.encoder_level2(fuse(1, self.down1_2(out_enc1)))  # (B, 2dim, H/2, W/2)
        out_enc3 = self.encoder_level3(fuse(2, self.down2_3(out_enc2)))  # (B, 4dim, H/4, W/4)
        x = self.latent(fuse(3, self.down3_4(out_enc3)))  # (B, 8dim, H/8, W/8)
        if self.decoder:
            x = self._prompt(3, x)  # (B, 4dim, H/8, W/8)

        x = torch.cat([self.up4_3(x), out_enc3], 1)
        x = self.decoder_level3(self.reduce_chan_level3(x))  # (B, 4dim, H/4, W/4)
        if self.decoder:
            x = self._prompt(2, x)  # (B, 4dim, H/4, W/4)

        x = torch.cat([self.up3_2(x), out_enc2], 1)  # (B, 4dim, H/2, W/2)
        x = self.decoder_level2(self.reduce_chan_level2(x))  # (B, 2dim, H/2, W/2)
        if self.decoder:
            x = self._prompt(1, x)  # (B, 2dim, H/2, W/2)

        x = torch.cat([self.up2_1(x), out_enc1], 1)  # (B, 2dim, H, W)
        x = self.refinement(self.decoder_level1(x))
        return self.output(x) + inp

"""TextPromptIR: a Restormer-style U-Net prompted by an instruction's sentence embedding.

Paper: "Textual Prompt Guided Image Restoration" (Yan et al., TextPromptIR),
arXiv:2312.06162; the text source beside "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Ported from MoTong-AI-studio/TextPromptIR@069a91c ``net/model.py`` (no license file found
in the repository; research use): same attribute names, so official state_dicts load with
``strict=True`` (``tests/restoration/archs/reference/textpromptir_default.keys.tsv``).
Every transformer block is Restormer's MDTA + GDFN with the text modulation in front of
each: the sentence embedding (B, 768) goes through ``linear1`` -> LeakyReLU -> ``linear2``
-> LeakyReLU to (B, 384); in each attention / feed-forward, ``linear<n>`` maps it to the
level's width, a 1-D conv channel gate of the image feature (``fusion``, ECA-style)
scales it, and ``linear<n>_1`` / ``linear<n>_2`` give a per-channel scale and shift of
the normalised feature before the MDTA / GDFN. ``n`` is 1, 2, 3, 7 at levels 0..3 (the
official numbering); decoder level 1 and the refinement use level 1's (n = 2).

Differences from the official file (docs/textpromptir.md):
- The official hard-codes the widths for dim=48 (the block linears 384 -> 48/96/192/384,
  the text MLP 768 -> 576 -> 384). Here they are ``dim * 2**level``, ``embed_dim``,
  ``text_dim`` and ``text_hidden_dim``; the defaults give the official shapes.
- The official builds tensors its forward never uses: six prompt banks, six text blocks,
  three plain blocks and eleven 1x1 convs (``prompt*``, ``noise_level*``, ``reduce_noise*``,
  ``chnl_reduce*``), and in every block the linears of the three levels the block is not
  on: 83.8M of its 123.6M parameters. ``keep_dead_weights=True`` (default) builds them,
  frozen (``requires_grad=False``, so DDP needs no unused-parameter search), only so official
  checkpoints load; ``False`` leaves them out (no official checkpoint fits then).
- Inside each attention the channel gate ``fusion`` is registered after MDTA's convs
  (the official registers it before ``qkv``): the state_dict order differs, the keys
  and shapes do not (``load_state_dict`` matches by key).
- H and W need not be multiples of 8: ``forward`` reflect-pads right/bottom and crops back.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, check_image_input, no_fuse
from textualdeg.restoration.archs.memory import active_checkpointing, checkpoint_call
from textualdeg.restoration.archs.promptir import PromptGenBlock
from textualdeg.restoration.archs.restormer import check_restormer_args
from textualdeg.restoration.archs.restormer_blocks import (
    GDFN,
    MDTA,
    Downsample,
    OverlapPatchEmbed,
    TransformerBlock,
    Upsample,
)
from textualdeg.restoration.archs.norms import RestormerLayerNorm

__all__ = ["TextPromptIR", "TextChannelGate", "TextMDTA", "TextGDFN", "TextTransformerBlock"]

#: the official linear numbering of levels 0..3 (``linear1``, ``linear2``, ``linear3``, ``linear7``)
LEVEL_IDS: tuple[int, ...] = (1, 2, 3, 7)

# The official dead modules, as data (their shapes are fixed in the official file, not derived
# from dim): (name, prompt_dim, prompt_size, lin_dim), (name, width), (name, in, out).
_DEAD_PROMPTS = (("prompt1_1", 32, 128, 48), ("prompt1_2", 64, 64, 96), ("prompt2_1", 64, 32, 96),
                 ("prompt2_2", 64, 32, 96), ("prompt3_1", 128, 64, 192), ("prompt3_2", 128, 128, 192))
_DEAD_TEXT_BLOCKS = (("noise_level1_1", 80), ("noise_level1_2", 160), ("noise_level2_1", 160),
                     ("noise_level2_2", 160), ("noise_level3_1", 320), ("noise_level3_2", 320))
_DEAD_REDUCE = (("reduce_noise_level1_1", 80, 48), ("reduce_noise_level1_2", 160, 96),
                ("reduce_noise_level2_1", 160, 96), ("reduce_noise_level2_2", 160, 96),
                ("reduce_noise_level3_1", 320, 192), ("reduce_noise_level3_2", 320, 192),
                ("chnl_reduce1", 64, 64), ("chnl_reduce2", 128, 128), ("chnl_reduce3", 320, 256))


class TextChannelGate(nn.Module):
    """The official ``Channel_attention``: ECA gate of the image feature applied to the text.

    ``sigmoid(conv1d(GAP(x)))`` over channels (kernel ``k`` from the width, as ECA-Net),
    multiplied into the level's text vector.

    Args:
        dim (int): channels C of the image feature (and of the text vector).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        t = int(abs((math.log(dim, 2) + 1) / 2))
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), text (B, C) -> gated text (B, C)."""
        y = x.mean(dim=(-2, -1))[:, None, :]  # (B, 1, C)
        y = torch.sigmoid(self.conv(y))[:, 0, :]  # (B, C)
        return text * y


def _add_text_linears(module: nn.Module, embed_dim: int, level_widths: Sequence[int], level: int,
                      all_levels: bool) -> None:
    """Register ``linear<n>``, ``linear<n>_1``, ``linear<n>_2`` on ``module`` (official names).

    The block uses the set of ``level``; with ``all_levels`` the other three sets are built
    too, frozen (the official builds all four in every block).
    """
    for index, (n, width) in enumerate(zip(LEVEL_IDS, level_widths)):
        if index != level and not all_levels:
            continue
        layers = (nn.Linear(embed_dim, width), nn.Linear(width, width), nn.Linear(width, width))
        for suffix, layer in zip(("", "_1", "_2"), layers):
            layer.requires_grad_(index == level)
            module.add_module(f"linear{n}{suffix}", layer)
    module.text_level_id = LEVEL_IDS[level]


def _modulate(module: nn.Module, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``x * s + t`` with (s, t) from the text vector: the official prompt step of a block."""
    n = module.text_level_id
    text = module.fusion(x, getattr(module, f"linear{n}")(text))  # (B, C)
    scale = getattr(module, f"linear{n}_1")(text)[:, :, None, None]  # (B, C, 1, 1)
    shift = getattr(module, f"linear{n}_2")(text)[:, :, None, None]  # (B, C, 1, 1)
    return x * scale + shift


class TextMDTA(MDTA):
    """MDTA on the text-modulated feature (the official ``Attention``).

    Args:
        dim (int): channels C.
        num_heads (int): heads.
        bias (bool): conv biases.
        embed_dim (int): width of the projected text vector. Default 384.
        level_widths (tuple[int, int, int, int]): widths of levels 0..3. Default (48, 96, 192, 384).
        level (int): the level this block is on (0..3).
        all_levels (bool): build the (frozen) linears of the other levels too.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False, embed_dim: int = 384,
                 level_widths: Sequence[int] = (48, 96, 192, 384), level: int = 0, all_levels: bool = True) -> None:
        super().__init__(dim, num_heads, bias)
        self.fusion = TextChannelGate(dim)
        _add_text_linears(self, embed_dim, level_widths, level, all_levels)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B, C, H, W), text (B, embed_dim) -> (B, C, H, W)."""
        return super().forward(_modulate(self, x, text))


class TextGDFN(GDFN):
    """GDFN on the text-modulated feature (the official ``FeedForward``); arguments as :class:`TextMDTA`
    with ``ffn_expansion_factor`` in place of ``num_heads``."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool = False, embed_dim: int = 384,
                 level_widths: Sequence[int] = (48, 96, 192, 384), level: int = 0, all_levels: bool = True) -> None:
        super().__init__(dim, ffn_expansion_factor, bias)
        self.fusion = TextChannelGate(dim)
        _add_text_linears(self, embed_dim, level_widths, level, all_levels)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B, C, H, W), text (B, embed_dim) -> (B, C, H, W)."""
        return super().forward(_modulate(self, x, text))


class TextTransformerBlock(nn.Module):
    """``x + TextMDTA(LN(x), t)`` then ``+ TextGDFN(LN(.), t)`` (the official ``TransformerBlock``).

    Args:
        dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type: as Restormer's block.
        embed_dim, level_widths, level, all_levels: as :class:`TextMDTA`.
    """

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float = 2.66, bias: bool = False,
                 LayerNorm_type: str = "WithBias", embed_dim: int = 384,  # noqa: N803
                 level_widths: Sequence[int] = (48, 96, 192, 384), level: int = 0, all_levels: bool = True) -> None:
        super().__init__()
        text = dict(embed_dim=embed_dim, level_widths=level_widths, level=level, all_levels=all_levels)
        self.norm1 = RestormerLayerNorm(dim, LayerNorm_type)
        self.attn = TextMDTA(dim, num_heads, bias, **text)
        self.norm2 = RestormerLayerNorm(dim, LayerNorm_type)
        self.ffn = TextGDFN(dim, ffn_expansion_factor, bias, **text)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), text (B, embed_dim) -> (B, C, H, W)."""
        x = x + self.attn(self.norm1(x), text)
        return x + self.ffn(self.norm2(x), text)


class _TextStage(nn.ModuleList):
    """Blocks applied in turn with the same text vector (keys ``<stage>.<i>.<...>``).

    A stage for activation checkpointing (memory.py): ``block`` recomputes each block in
    backward, ``level`` the whole stage.
    """

    checkpointing: str = "none"

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mode = active_checkpointing(self) if len(self) else "none"
        if mode == "level":
            return checkpoint_call(self, self._blocks, x, text, False)
        return self._blocks(x, text, mode == "block")

    def _blocks(self, x: torch.Tensor, text: torch.Tensor, per_block: bool) -> torch.Tensor:
        for block in self:
            x = checkpoint_call(block, block, x, text) if per_block else block(x, text)
        return x


@ARCH_REGISTRY.register()
class TextPromptIR(PaddedBackbone):
    """TextPromptIR: Restormer's 4-level U-Net with text-modulated attention and feed-forward.

    Called as ``model(x, text_embedding)``; ``text_embedding`` is the instruction's sentence
    embedding (``textualdeg.instruction.InstructionEncoder``).

    Args:
        inp_channels (int): input channels. Default 3.
        out_channels (int): output channels (equal to ``inp_channels``: input residual). Default 3.
        dim (int): channels at full resolution. Default 48.
        num_blocks (tuple[int, int, int, int]): blocks per level. Default (4, 6, 6, 8).
        num_refinement_blocks (int): blocks after the decoder. Default 4.
        heads (tuple[int, int, int, int]): heads per level. Default (1, 2, 4, 8); decoder
            level 3 uses ``heads[1]``, as the official code does.
        ffn_expansion_factor (float): GDFN expansion. Default 2.66.
        bias (bool): biases in the attention/FFN/1x1 convs. Default False.
        LayerNorm_type (str): ``"WithBias"`` or ``"BiasFree"``. Default ``"WithBias"``.
        text_dim (int): width of the sentence embedding (BERT-base: 768). Default 768.
        text_hidden_dim (int): hidden width of the text MLP. Default 576.
        embed_dim (int): width of the projected text vector fed to every block. Default 384.
        keep_dead_weights (bool): build (frozen) the tensors the official forward never
            uses, so official checkpoints load strictly. Default True.

    Input (B, inp_channels, H, W) in [0, 1], any H and W, and (B, text_dim) embeddings;
    output (B, out_channels, H, W).
    """

    #: the network reads an instruction embedding (``model(x, text_embedding)``)
    takes_instruction = True

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
    ) -> None:
        super().__init__()
        num_blocks, heads = check_restormer_args(
            inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
            ffn_expansion_factor, LayerNorm_type,
        )
        if inp_channels != out_channels:
            raise ValueError("the input residual needs inp_channels == out_channels; "
                             f"got inp_channels={inp_channels}, out_channels={out_channels}")
        for name, value in (("text_dim", text_dim), ("text_hidden_dim", text_hidden_dim), ("embed_dim", embed_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (4 * dim) % heads[1]:
            raise ValueError(f"heads[1]={heads[1]} must divide 4*dim={4 * dim} (decoder level 3 uses heads[1])")
        self.input_channels = inp_channels
        self.text_dim = text_dim
        self.keep_dead_weights = bool(keep_dead_weights)
        self.pad_multiple = 8
        widths = (dim, 2 * dim, 4 * dim, 8 * dim)
        dead = self.keep_dead_weights
        ffn, ln = ffn_expansion_factor, LayerNorm_type

        def stage(num: int, width: int, num_heads: int, level: int) -> _TextStage:
            return _TextStage([TextTransformerBlock(width, num_heads, ffn, bias, ln, embed_dim, widths, level, dead)
                               for _ in range(num)])

        def frozen(module: nn.Module) -> nn.Module:
            return module.requires_grad_(False)

        # Registration order = official state_dict order (dead modules where the official has them).
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        if dead:
            for name, p_dim, p_size, lin_dim in _DEAD_PROMPTS:
                self.add_module(name, frozen(PromptGenBlock(p_dim, 5, p_size, lin_dim)))
            for name, width in _DEAD_TEXT_BLOCKS:
                self.add_module(name, frozen(TextTransformerBlock(width, heads[2], ffn, bias, ln, embed_dim, widths,
                                                                  0, True)))
            for name, c_in, c_out in _DEAD_REDUCE:
                self.add_module(name, frozen(nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias)))
            self.reduce_noise_channel_1 = frozen(nn.Conv2d(dim + 64, dim, kernel_size=1, bias=bias))
        self.encoder_level1 = stage(num_blocks[0], dim, heads[0], 0)
        self.down1_2 = Downsample(dim)
        if dead:
            self.reduce_noise_channel_2 = frozen(nn.Conv2d(2 * dim + 128, 2 * dim, kernel_size=1, bias=bias))
        self.encoder_level2 = stage(num_blocks[1], 2 * dim, heads[1], 1)
        self.down2_3 = Downsample(2 * dim)
        if dead:
            self.reduce_noise_channel_3 = frozen(nn.Conv2d(4 * dim + 256, 4 * dim, kernel_size=1, bias=bias))
        self.encoder_level3 = stage(num_blocks[2], 4 * dim, heads[2], 2)
        self.down3_4 = Downsample(4 * dim)
        self.latent = stage(num_blocks[3], 8 * dim, heads[3], 3)

        self.up4_3 = Upsample(8 * dim)  # (8dim -> 4dim)
        self.reduce_chan_level3 = nn.Conv2d(8 * dim, 4 * dim, kernel_size=1, bias=bias)
        if dead:
            self.noise_level3 = frozen(TransformerBlock(4 * dim + 512, heads[2], ffn, bias, ln))
        self.decoder_level3 = stage(num_blocks[2], 4 * dim, heads[1], 2)
        if dead:
            self.reduce_noise_level3 = frozen(nn.Conv2d(4 * dim + 512, 4 * dim, kernel_size=1, bias=bias))
        self.up3_2 = Upsample(4 * dim)
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, kernel_size=1, bias=bias)
        if dead:
            self.noise_level2 = frozen(TransformerBlock(2 * dim + 224, heads[2], ffn, bias, ln))
            self.reduce_noise_level2 = frozen(nn.Conv2d(2 * dim + 224, 4 * dim, kernel_size=1, bias=bias))
        self.decoder_level2 = stage(num_blocks[1], 2 * dim, heads[1], 1)
        self.up2_1 = Upsample(2 * dim)
        if dead:
            self.noise_level1 = frozen(TransformerBlock(2 * dim + 64, heads[2], ffn, bias, ln))
            self.reduce_noise_level1 = frozen(nn.Conv2d(2 * dim + 64, 2 * dim, kernel_size=1, bias=bias))
        # Decoder level 1 and the refinement run at 2*dim but use level 1's text linears (n = 2).
        self.decoder_level1 = stage(num_blocks[0], 2 * dim, heads[0], 1)
        self.refinement = stage(num_refinement_blocks, 2 * dim, heads[0], 1)
        self.output = nn.Conv2d(2 * dim, out_channels, kernel_size=3, padding=1, bias=bias)
        self.linear1 = nn.Linear(text_dim, text_hidden_dim)
        self.LReLU1 = nn.LeakyReLU(0.2)
        self.linear2 = nn.Linear(text_hidden_dim, embed_dim)
        self.LReLU2 = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, text_embedding: torch.Tensor,  # type: ignore[override]
                stages: bool = False) -> torch.Tensor:
        """Restore a batch as its instructions say.

        Args:
            x: (B, inp_channels, H, W) in [0, 1], any H and W.
            text_embedding: (B, text_dim) sentence embeddings (or (text_dim,), shared).
            stages: not supported (a single output); raises ``ValueError`` as every
                single-output backbone does.

        Returns:
            (B, out_channels, H, W).
        """
        check_image_input(x, self.input_channels)
        if stages:
            self._forward_stages_padded(x)
        text = self._check_text(text_embedding, x.shape[0]).to(x.dtype)
        return super().forward(x, text_embedding=text)

    def _check_text(self, text: torch.Tensor, batch: int) -> torch.Tensor:
        if text.ndim == 1:
            text = text[None].expand(batch, -1)
        if text.ndim != 2 or text.shape[0] != batch or text.shape[1] != self.text_dim:
            raise ValueError(f"text_embedding must have shape ({batch}, {self.text_dim}); got {tuple(text.shape)}")
        return text

    def _forward_padded(self, inp: torch.Tensor, text_embedding: torch.Tensor,  # type: ignore[override]
                        fuse: FuseFn | None = None) -> torch.Tensor:
        """Run the network on an input whose H and W are multiples of 8.

        Args:
            inp: (B, inp_channels, H, W), padded.
            text_embedding: (B, text_dim).
            fuse: optional ``fuse(level, x) -> x`` on the features entering each encoder
                level and ``latent`` (levels 0..3, as in ``Restormer``).

        Returns:
            (B, out_channels, H, W).
        """
        fuse = fuse if fuse is not None else no_fuse
        t = self.LReLU2(self.linear2(self.LReLU1(self.linear1(text_embedding))))  # (B, embed_dim)
        out_enc1 = self.encoder_level1(fuse(0, self.patch_embed(inp)), t)  # (B, dim, H, W)
        out_enc2 = self.encoder_level2(fuse(1, self.down1_2(out_enc1)), t)  # (B, 2dim, H/2, W/2)
        out_enc3 = self.encoder_level3(fuse(2, self.down2_3(out_enc2)), t)  # (B, 4dim, H/4, W/4)
        x = self.latent(fuse(3, self.down3_4(out_enc3)), t)  # (B, 8dim, H/8, W/8)

        x = torch.cat([self.up4_3(x), out_enc3], 1)  # (B, 8dim, H/4, W/4)
        x = self.decoder_level3(self.reduce_chan_level3(x), t)  # (B, 4dim, H/4, W/4)
        x = torch.cat([self.up3_2(x), out_enc2], 1)  # (B, 4dim, H/2, W/2)
        x = self.decoder_level2(self.reduce_chan_level2(x), t)  # (B, 2dim, H/2, W/2)
        x = torch.cat([self.up2_1(x), out_enc1], 1)  # (B, 2dim, H, W)
        x = self.refinement(self.decoder_level1(x, t), t)
        return self.output(x) + inp

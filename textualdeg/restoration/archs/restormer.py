"""Restormer.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334, which uses Restormer
("Restormer: Efficient Transformer for High-Resolution Image Restoration", Zamir et al.,
CVPR 2022, arXiv:2111.09881) as a backbone.

Ported from swz30/Restormer@df766d5 ``basicsr/models/archs/restormer_arch.py`` (Restormer
license, academic research use): same constructor arguments and attribute names, so the
state_dict equals ``tests/restoration/archs/reference/restormer_default.keys.tsv`` and
official checkpoints
load with ``strict=True``. The blocks live in ``restormer_blocks.py``.

The official network needs H and W divisible by 8 (three PixelUnshuffle(2)); its test
scripts reflect-pad right/bottom. ``forward`` does the same and crops back.

Hook points for subclasses: ``_pad``, ``pad_multiple`` and ``_forward_padded(inp, fuse)``
as in ``nafnet.py``. ``fuse(level, x)`` sees the feature entering ``encoder_level1``
(level 0, ``dim`` channels, full resolution), ``encoder_level2`` (1, 2*dim, 1/2),
``encoder_level3`` (2, 4*dim, 1/4) and ``latent`` (3, 8*dim, 1/8). In dual-pixel mode the
``skip_conv`` branch takes the (fused) level-0 feature.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, as_int_tuple, no_fuse
from textualdeg.restoration.archs.memory import CheckpointedSequential
from textualdeg.restoration.archs.norms import LAYER_NORM_TYPES
from textualdeg.restoration.archs.restormer_blocks import Downsample, OverlapPatchEmbed, Upsample, transformer_stage

__all__ = ["Restormer", "add_transformer_unet", "check_restormer_args", "transformer_unet_forward"]


def check_restormer_args(
    inp_channels: int,
    out_channels: int,
    dim: int,
    num_blocks: Sequence[int],
    num_refinement_blocks: int,
    heads: Sequence[int],
    ffn_expansion_factor: float,
    LayerNorm_type: str,  # noqa: N803
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate the Restormer/PromptIR constructor arguments.

    Returns:
        ``(num_blocks, heads)`` as tuples.

    Raises:
        ValueError: naming the argument and its value.
    """
    for name, value in (("inp_channels", inp_channels), ("out_channels", out_channels), ("dim", dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(num_refinement_blocks, int) or num_refinement_blocks < 0:
        raise ValueError(f"num_refinement_blocks must be an int >= 0, got {num_refinement_blocks!r}")
    num_blocks = as_int_tuple("num_blocks", num_blocks, length=4, minimum=0)
    heads = as_int_tuple("heads", heads, length=4, minimum=1)
    if LayerNorm_type not in LAYER_NORM_TYPES:
        raise ValueError(f"LayerNorm_type must be one of {LAYER_NORM_TYPES}, got {LayerNorm_type!r}")
    if not ffn_expansion_factor > 0:
        raise ValueError(f"ffn_expansion_factor must be > 0, got {ffn_expansion_factor!r}")
    # Level l has dim * 2**l channels; decoder level 1 and refinement have 2*dim with heads[0].
    for level, width in ((0, dim), (1, 2 * dim), (2, 4 * dim), (3, 8 * dim), (0, 2 * dim)):
        if width % heads[level]:
            raise ValueError(
                f"heads[{level}]={heads[level]} must divide the width {width} of that level "
                f"(dim={dim}, heads={heads})"
            )
    return num_blocks, heads


def add_transformer_unet(
    model: nn.Module,
    dim: int,
    num_blocks: Sequence[int],
    heads: Sequence[int],
    ffn_expansion_factor: float,
    bias: bool,
    LayerNorm_type: str,  # noqa: N803
    block: type[nn.Module] | None = None,
) -> None:
    """Register Restormer's 4-level U-Net, ``encoder_level1`` to ``decoder_level1``, on ``model``.

    Official names and registration order (so official state_dicts keep their key order);
    ``block`` is the transformer block class (default Restormer's; DRSformer passes its
    sparse block). The patch embedding before and the refinement after are the caller's.
    """
    def stage(level: int, width: int) -> CheckpointedSequential:
        return transformer_stage(num_blocks[level], width, heads[level], ffn_expansion_factor, bias,
                                 LayerNorm_type, block=block)

    model.encoder_level1 = stage(0, dim)
    model.down1_2 = Downsample(dim)
    model.encoder_level2 = stage(1, dim * 2)
    model.down2_3 = Downsample(dim * 2)
    model.encoder_level3 = stage(2, dim * 4)
    model.down3_4 = Downsample(dim * 4)
    model.latent = stage(3, dim * 8)

    model.up4_3 = Upsample(dim * 8)
    model.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
    model.decoder_level3 = stage(2, dim * 4)
    model.up3_2 = Upsample(dim * 4)
    model.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
    model.decoder_level2 = stage(1, dim * 2)
    model.up2_1 = Upsample(dim * 2)  # no channel reduction at level 1: it stays 2*dim
    model.decoder_level1 = stage(0, dim * 2)


def transformer_unet_forward(model: nn.Module, inp_enc1: torch.Tensor, fuse: FuseFn) -> torch.Tensor:
    """The U-Net of :func:`add_transformer_unet`: levels 2-4 fused by ``fuse(1..3, x)``.

    Args:
        model: a module built with :func:`add_transformer_unet`.
        inp_enc1: (B, dim, H, W) the (already fused) feature entering ``encoder_level1``.
        fuse: ``fuse(level, x) -> x`` on the features entering levels 2, 3 and ``latent``.

    Returns:
        (B, 2dim, H, W), the output of ``decoder_level1``.
    """
    out_enc1 = model.encoder_level1(inp_enc1)
    out_enc2 = model.encoder_level2(fuse(1, model.down1_2(out_enc1)))  # (B, 2dim, H/2, W/2)
    out_enc3 = model.encoder_level3(fuse(2, model.down2_3(out_enc2)))  # (B, 4dim, H/4, W/4)
    latent = model.latent(fuse(3, model.down3_4(out_enc3)))  # (B, 8dim, H/8, W/8)

    x = torch.cat([model.up4_3(latent), out_enc3], 1)  # (B, 8dim, H/4, W/4)
    x = model.decoder_level3(model.reduce_chan_level3(x))  # (B, 4dim, H/4, W/4)
    x = torch.cat([model.up3_2(x), out_enc2], 1)  # (B, 4dim, H/2, W/2)
    x = model.decoder_level2(model.reduce_chan_level2(x))  # (B, 2dim, H/2, W/2)
    x = torch.cat([model.up2_1(x), out_enc1], 1)  # (B, 2dim, H, W)
    return model.decoder_level1(x)


@ARCH_REGISTRY.register()
class Restormer(PaddedBackbone):
    """Restormer: a 4-level U-Net of MDTA/GDFN transformer blocks.

    Args:
        inp_channels (int): input channels (6 for dual-pixel). Default 3.
        out_channels (int): output channels. Default 3.
        dim (int): channels at full resolution. Default 48.
        num_blocks (tuple[int, int, int, int]): blocks per level (level 4 = ``latent``).
            Default (4, 6, 6, 8).
        num_refinement_blocks (int): blocks after the decoder. Default 4.
        heads (tuple[int, int, int, int]): attention heads per level. Default (1, 2, 4, 8).
        ffn_expansion_factor (float): GDFN expansion. Default 2.66.
        bias (bool): biases in the attention/FFN convs. Default False.
        LayerNorm_type (str): ``"WithBias"`` (deblurring) or ``"BiasFree"`` (denoising).
        dual_pixel_task (bool): dual-pixel defocus deblurring: adds ``skip_conv`` and drops
            the input residual. Default False.

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
        dual_pixel_task: bool = False,
    ) -> None:
        super().__init__()
        num_blocks, heads = check_restormer_args(
            inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
            ffn_expansion_factor, LayerNorm_type,
        )
        if not dual_pixel_task and inp_channels != out_channels:
            raise ValueError(
                "the input residual needs inp_channels == out_channels unless dual_pixel_task; "
                f"got inp_channels={inp_channels}, out_channels={out_channels}"
            )
        self.inp_channels = inp_channels
        self.input_channels = inp_channels
        self.out_channels = out_channels
        ffn, ln = ffn_expansion_factor, LayerNorm_type

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        add_transformer_unet(self, dim, num_blocks, heads, ffn, bias, ln)
        self.refinement = transformer_stage(num_refinement_blocks, dim * 2, heads[0], ffn, bias, ln)

        self.dual_pixel_task = bool(dual_pixel_task)
        if self.dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, padding=1, bias=bias)

        self.pad_multiple = 8

    def _forward_padded(self, inp: torch.Tensor, fuse: FuseFn | None = None) -> torch.Tensor:
        """Run the network on an input whose H and W are multiples of 8.

        Args:
            inp: (B, inp_channels, H, W), padded.
            fuse: optional ``fuse(level, x) -> x`` on the features entering each encoder
                level and ``latent`` (see the module doc).

        Returns:
            (B, out_channels, H, W).
        """
        fuse = fuse if fuse is not None else no_fuse
        inp_enc1 = fuse(0, self.patch_embed(inp))  # (B, dim, H, W)
        x = self.refinement(transformer_unet_forward(self, inp_enc1, fuse))  # (B, 2dim, H, W)
        if self.dual_pixel_task:
            return self.output(x + self.skip_conv(inp_enc1))
        return self.output(x) + inp

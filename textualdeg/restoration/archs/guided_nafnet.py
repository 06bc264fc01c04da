"""GuidedNAFNet: NAFNet with coarse-to-fine reference fusion (the authors' NAFNetRefFusion).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334: the motion-deblurring model
of the authors' option file 002.

Layout origin: ``mrluin/TextualDegRemoval@e755c39 models/archs/network_nafnet_guided_arch.py``
(``NAFNetRefFusion``; no license file upstream). Re-implemented on top of our ``NAFNet``:
the backbone attributes are NAFNet's, untouched, and the reference branch is added under
``masa_*`` names (``masa_enc``, ``masa_blk_enc``, ``masa_blk_middle``), so the state_dict
is the official backbone's plus the authors' ``masa_*`` entries
(``tests/restoration/archs/reference/textualdeg_nafnet_reffusion_gopro.keys.tsv``) and
both the authors'
checkpoints and plain NAFNet checkpoints (``strict=False``) load.

Fixed relative to the authors' code (IDs as in docs/official_differences.md): the
middle fusion stack is sized by
``reffusion_n_blocks_middle`` (their D34/D56), non-square input/reference pairs work (D54),
search windows stay inside small references (D55), and ``forward`` needs no ref-less call
path (D37).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.nafnet import NAFNet
from textualdeg.restoration.archs.nafnet_blocks import NAFBlock
from textualdeg.restoration.reference.fusion import ReferenceFusion
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin, fusion_block_counts

__all__ = ["GuidedNAFNet"]


@ARCH_REGISTRY.register()
class GuidedNAFNet(ReferenceGuidedMixin, NAFNet):
    """NAFNet whose encoder levels and middle blocks fuse warped reference features.

    A reference encoder of ``L + 1`` levels (L = ``len(enc_blk_nums)``) encodes the input
    and the reference; the deepest level (1/2**L) is matched coarse-to-fine, every level
    is warped, and before encoder level l (and before the middle blocks, l = L) the
    backbone feature (``width * 2**l`` channels) is concatenated with the warped level,
    passed through NAFBlocks of twice that width and cut back to its channels. The
    fusion NAFBlocks start as identities, so a fresh model holding a NAFNet checkpoint
    computes that NAFNet on inputs whose size is a multiple of ``pad_multiple``.

    Args:
        img_channel (int): input, output and reference channels. Default 3.
        width (int): backbone channels at full resolution. Default 16.
        middle_blk_num (int): NAFBlocks at the lowest resolution. Default 1.
        enc_blk_nums (Sequence[int]): NAFBlocks per encoder level. Default ().
        dec_blk_nums (Sequence[int]): NAFBlocks per decoder level. Default ().
        nf (int | None): reference-encoder width; must equal ``width``. None: ``width``.
        ext_n_blocks (Sequence[int]): residual blocks per reference-encoder level (the
            last entry repeats for deeper levels). Default (4, 4, 4, 4).
        reffusion_n_blocks (Sequence[int]): fusion NAFBlocks before each encoder level,
            one entry per level. A list with one more entry (the authors' code reads a
            5th entry for the middle stack) is accepted when that entry equals
            ``reffusion_n_blocks_middle``. Default (2, 2, 2, 2).
        reffusion_n_blocks_middle (int): fusion NAFBlocks before the middle blocks.
            Default 1.
        scale (int): unused by the method; must be 1. Default 1.
        num_nbr (int): matches per position; must be 1. Default 1.
        psize (int): matched patch size; must be 3. Default 3.
        lr_block_size (int): coarse-search block side at the deepest level. Default 8.
        ref_down_block_size (float): search-window scale. Default 1.5.
        dilations (Sequence[int]): coarse-search dilations. Default (1, 2, 3).
        reference_mode, refine_window, ref_scales: the reference path (``masa``, the
            authors', bit-exact, default; or ``refined``, ours), as documented once in
            ``ReferenceGuidedMixin._init_reference`` (``restoration/reference/guided.py``).

    Forward: ``model(x, ref)`` with x (B, img_channel, H, W) and ref
    (B, img_channel, Hr, Wr) in [0, 1], any sizes; returns (B, img_channel, H, W). Both
    are zero-padded right/bottom to a multiple of ``pad_multiple`` = 2**L *
    ``lr_block_size`` (128 for the GoPro model) and the output is cropped back.
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
    ) -> None:
        super().__init__(
            img_channel=img_channel,
            width=width,
            middle_blk_num=middle_blk_num,
            enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums,
        )
        levels = self.num_levels
        if not isinstance(reffusion_n_blocks_middle, int) or reffusion_n_blocks_middle < 0:
            raise ValueError(f"reffusion_n_blocks_middle must be an int >= 0, got {reffusion_n_blocks_middle!r}")
        counts = reffusion_n_blocks
        if isinstance(counts, Sequence) and not isinstance(counts, str) and len(counts) == levels + 1:
            # the authors' constructor sizes the middle stack with a 5th entry (D34)
            if counts[-1] != reffusion_n_blocks_middle:
                raise ValueError(
                    f"reffusion_n_blocks={reffusion_n_blocks!r} has a middle entry ({counts[-1]!r}) that "
                    f"differs from reffusion_n_blocks_middle={reffusion_n_blocks_middle}; give "
                    f"{levels} per-level counts and set reffusion_n_blocks_middle"
                )
            counts = counts[:-1]
        counts = fusion_block_counts(counts, levels)

        self._init_reference(
            image_channels=img_channel,
            ref_channels=img_channel,
            width=width,
            num_levels=levels + 1,
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
        self.masa_blk_enc = nn.ModuleList(
            ReferenceFusion(*[NAFBlock(2 * width * 2**level) for _ in range(n)]) for level, n in enumerate(counts)
        )
        # A list of one stack: the authors' checkpoint keys are masa_blk_middle.0.<block>.
        self.masa_blk_middle = nn.ModuleList(
            [ReferenceFusion(*[NAFBlock(2 * width * 2**levels) for _ in range(reffusion_n_blocks_middle)])]
        )

    def _fusion_stacks(self) -> list[ReferenceFusion]:
        return [*self.masa_blk_enc, self.masa_blk_middle[0]]


# The authors' option files name it NAFNetRefFusion (option file 002).
ARCH_REGISTRY.register(GuidedNAFNet, name="NAFNetRefFusion")

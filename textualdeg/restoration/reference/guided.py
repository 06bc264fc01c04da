"""The reference branch every guided backbone shares: checks, padding, warping, fusion.

Part of "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024, arXiv:2312.17334), stage 4 (shared/spec/method.md
§4.4): the input and the guidance image are encoded by one :class:`ReferenceEncoder`,
matched coarse-to-fine at the deepest level (:class:`CoarseToFineMatcher`), the
reference pyramid is warped onto the input grid (:class:`PatchTransfer`) and each warped
level is fused into the backbone's encoder (:class:`ReferenceFusion`).

:class:`ReferenceGuidedMixin` holds that glue once for the guided NAFNet, Restormer and
PromptIR. A guided class lists the mixin first and its plain backbone second, builds the
reference branch with :meth:`ReferenceGuidedMixin._init_reference` and returns its
fusion stacks from ``_fusion_stacks``; the backbone's ``_forward_padded(inp, fuse)`` hook
does the rest, so the backbone's own attributes (and checkpoint keys) stay untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textualdeg.restoration.reference.encoder import ReferenceEncoder
from textualdeg.restoration.reference.fusion import ReferenceFusion
from textualdeg.restoration.reference.matching import CoarseToFineMatcher
from textualdeg.restoration.reference.transfer import PatchTransfer

__all__ = ["ReferenceGuidedMixin", "fusion_block_counts"]


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def fusion_block_counts(reffusion_n_blocks: Sequence[int], num_levels: int) -> tuple[int, ...]:
    """Validate ``reffusion_n_blocks``: one block count per fusion level.

    Args:
        reffusion_n_blocks (Sequence[int]): block counts, finest level first.
        num_levels (int): number of fusion levels expected.

    Returns:
        tuple[int, ...]: the counts.
    """
    if isinstance(reffusion_n_blocks, (str, bytes)) or not hasattr(reffusion_n_blocks, "__iter__"):
        raise ValueError(f"reffusion_n_blocks must be a sequence of ints, got {reffusion_n_blocks!r}")
    counts = tuple(reffusion_n_blocks)
    if len(counts) != num_levels or any(
        not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts
    ):
        raise ValueError(
            f"reffusion_n_blocks must give {num_levels} block counts (ints >= 0), got {reffusion_n_blocks!r}"
        )
    return counts


class ReferenceGuidedMixin:
    """Reference guidance for a backbone exposing ``_forward_padded(inp, fuse)``.

    Subclasses (``class GuidedX(ReferenceGuidedMixin, X)``) call :meth:`_init_reference`
    after the backbone's constructor and implement ``_fusion_stacks``. They get
    ``forward(x, ref)``: check, zero-pad input and reference (right/bottom) to a
    multiple of ``pad_multiple``, warp, run the backbone with one fusion per level,
    crop back.

    Attributes set by :meth:`_init_reference`:
        masa_enc (ReferenceEncoder): the encoder shared by input and reference.
        masa_matcher (CoarseToFineMatcher): coarse-to-fine search (no parameters).
        masa_transfer (PatchTransfer): multi-scale transfer (no parameters).
        image_channels (int): channels of ``x``.
        ref_channels (int): channels of ``ref``.
        pad_multiple (int): ``2**(levels-1) * lr_block_size``.
    """

    masa_enc: ReferenceEncoder
    masa_matcher: CoarseToFineMatcher
    masa_transfer: PatchTransfer

    def _init_reference(
        self,
        *,
        image_channels: int,
        ref_channels: int,
        width: int,
        num_levels: int,
        nf: int | None,
        ext_n_blocks: Sequence[int],
        scale: int,
        num_nbr: int,
        psize: int,
        lr_block_size: int,
        ref_down_block_size: float,
        dilations: Sequence[int],
    ) -> None:
        """Validate the authors' ``network_g`` reference arguments and build the branch.

        Args:
            image_channels (int): channels of the input ``x``.
            ref_channels (int): channels of the reference (and of the encoder input).
            width (int): backbone width at full resolution.
            num_levels (int): fusion levels (= encoder levels of the reference encoder).
            nf (int | None): reference-encoder width; must equal ``width`` (the warped
                features are fused with backbone features of that width). None: ``width``.
            ext_n_blocks (Sequence[int]): residual blocks per encoder level.
            scale (int): the authors' unused ``scale``; only 1 is accepted.
            num_nbr (int): matches kept per position; only 1 (top-1) is implemented,
                as in the authors' code, which uses only the first.
            psize (int): matched patch size; only 3 is implemented (the authors' code
                assumes it).
            lr_block_size (int): coarse block side at the deepest level (>= 3).
            ref_down_block_size (float): search-window scale.
            dilations (Sequence[int]): coarse-search dilations.
        """
        nf = width if nf is None else nf
        if nf != width:
            raise ValueError(
                f"nf must equal the backbone width {width} (warped features are fused with "
                f"backbone features of that width), got nf={nf!r}"
            )
        if scale != 1:
            raise ValueError(f"scale must be 1 (the authors' code never uses it), got {scale!r}")
        if num_nbr != 1:
            raise ValueError(f"num_nbr must be 1 (only the top-1 match is used), got {num_nbr!r}")
        if psize != 3:
            raise ValueError(f"psize must be 3 (3x3 patches are what the matcher compares), got {psize!r}")
        _positive_int("lr_block_size", lr_block_size, minimum=3)
        self.masa_enc = ReferenceEncoder(
            in_channels=ref_channels, nf=nf, num_levels=num_levels, num_blocks=tuple(ext_n_blocks)
        )
        self.masa_matcher = CoarseToFineMatcher(
            block_size=lr_block_size, window_scale=ref_down_block_size, dilations=tuple(dilations)
        )
        self.masa_transfer = PatchTransfer()
        self.image_channels = image_channels
        self.ref_channels = ref_channels
        self.lr_block_size = lr_block_size
        self.ref_down_block_size = float(ref_down_block_size)
        self.dilations = tuple(dilations)
        self.pad_multiple = self.masa_enc.downsample_factor * lr_block_size

    def _fusion_stacks(self) -> Sequence[ReferenceFusion]:
        """The fusion applied at each level, finest first (one per reference level)."""
        raise NotImplementedError

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """The image the reference encoder sees for the input (``x`` itself by default)."""
        return x

    def _check_pair(self, x: torch.Tensor, ref: torch.Tensor) -> None:
        name = type(self).__name__
        if (
            not isinstance(x, torch.Tensor)
            or not isinstance(ref, torch.Tensor)
            or x.ndim != 4
            or ref.ndim != 4
            or x.shape[1] != self.image_channels
            or ref.shape[1] != self.ref_channels
            or x.shape[0] != ref.shape[0]
        ):
            xs = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            rs = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise ValueError(
                f"{name} expects x of shape (B, {self.image_channels}, H, W) and ref of shape "
                f"(B, {self.ref_channels}, Hr, Wr) with the same B; got x {xs} and ref {rs}"
            )

    def reference_features(self, x: torch.Tensor, ref: torch.Tensor) -> list[torch.Tensor]:
        """Warped reference features for padded inputs.

        Args:
            x (Tensor): (B, C, H, W) input in [0, 1], H and W multiples of ``pad_multiple``.
            ref (Tensor): (B, C_ref, Hr, Wr) reference in [0, 1], same constraint.

        Returns:
            list[Tensor]: one per level, finest first; level l is
            (B, nf * 2**l, H / 2**l, W / 2**l).
        """
        feats_lq = self.masa_enc(self._encoder_input(x))
        feats_ref = self.masa_enc(ref)
        match = self.masa_matcher(feats_lq[-1], feats_ref[-1])
        return self.masa_transfer(feats_ref, match)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Restore ``x`` guided by ``ref``.

        Args:
            x (Tensor): (B, C, H, W) degraded input in [0, 1], any H and W.
            ref (Tensor): (B, C_ref, Hr, Wr) guidance image in [0, 1], any Hr and Wr
                (e.g. a 512x512 generated reference for a 720x1280 input).

        Returns:
            Tensor: (B, C_out, H, W) restored image.
        """
        from textualdeg.restoration.archs.layers import pad_to_multiple

        self._check_pair(x, ref)
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple, mode="constant")
        ref = pad_to_multiple(ref, self.pad_multiple, mode="constant")
        warped = self.reference_features(x, ref)
        stacks = self._fusion_stacks()

        def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
            return stacks[level](feat, warped[level])

        out = self._forward_padded(x, fuse=fuse)  # type: ignore[attr-defined]
        return out[:, :, :h, :w]

"""The reference branch every guided backbone shares: checks, padding, warping, fusion.

Part of "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024, arXiv:2312.17334), stage 4: the input and the
guidance image are encoded by one :class:`ReferenceEncoder`,
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

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from textualdeg.restoration.archs.backbone_base import crop_stages, pad_to_multiple
from textualdeg.restoration.archs.memory import active_checkpointing, checkpoint_call
from textualdeg.restoration.reference.encoder import ReferenceEncoder
from textualdeg.restoration.reference.fusion import ReferenceFusion
from textualdeg.restoration.reference.matching import CoarseToFineMatcher
from textualdeg.restoration.reference.refined import (
    CORRESPONDENCE_ZOOM,
    Correspondence,
    MatchGate,
    Move,
    RefinedMatcher,
    correspondence_loss,
    warp,
)
from textualdeg.restoration.reference.transfer import PatchTransfer

__all__ = ["REFERENCE_MODES", "ReferenceGuidedMixin", "fusion_block_counts"]

#: ``masa``: the authors' transfer, bit-exact; ``refined``: ours (``refined.py``).
REFERENCE_MODES = ("masa", "refined")


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


def _best_scale(per_scale: list[tuple[list[torch.Tensor], list[Correspondence]]]):
    """At every level and position, the warped feature of the scale whose match is most similar.

    Args:
        per_scale: per reference scale, (warped features per level (N, C_l, H_l, W_l),
            correspondences per level).

    Returns:
        (warped features per level, per-level correspondences carrying the chosen
        similarity, which is all the gate reads; their coordinates are those of the first
        scale); a single scale unchanged.
    """
    if len(per_scale) == 1:
        return per_scale[0]
    warped, matches = [], []
    for level in range(len(per_scale[0][0])):
        sims = torch.stack([m[level].similarity for _, m in per_scale])  # (S, N, 1, H, W)
        feats = torch.stack([w[level] for w, _ in per_scale])  # (S, N, C, H, W)
        best_sim, best = sims.max(dim=0, keepdim=True)  # (1, N, 1, H, W)
        warped.append(feats.gather(0, best.expand(1, *feats.shape[1:]))[0])  # (N, C, H, W)
        matches.append(Correspondence(per_scale[0][1][level].coords, best_sim[0]))
    return warped, matches


class ReferenceGuidedMixin:
    """Reference guidance for a backbone exposing ``_forward_padded(inp, fuse)``.

    Subclasses (``class GuidedX(ReferenceGuidedMixin, X)``) call :meth:`_init_reference`
    after the backbone's constructor and implement ``_fusion_stacks``. They get
    ``forward(x, ref)``: check, zero-pad input and reference (right/bottom) to a
    multiple of ``pad_multiple``, warp, run the backbone with one fusion per level,
    crop back.

    Attributes set by :meth:`_init_reference`:
        masa_enc (ReferenceEncoder): the encoder shared by input and reference.
        masa_matcher (CoarseToFineMatcher | RefinedMatcher): the search (no parameters).
        masa_transfer (PatchTransfer): multi-scale transfer (``masa`` mode; no parameters).
        masa_gate (MatchGate): per-level gate (``refined`` mode; two scalars per level).
        masa_ref_pixels (nn.Conv2d): warped guidance pixels into the finest warped
            feature (``refined`` mode; zero at initialisation).
        reference_mode (str): ``masa`` or ``refined``.
        image_channels (int): channels of ``x``.
        ref_channels (int): channels of ``ref``.
        pad_multiple (int): ``2**(levels-1) * lr_block_size``.
    """

    masa_enc: ReferenceEncoder
    masa_matcher: CoarseToFineMatcher | RefinedMatcher
    masa_transfer: PatchTransfer
    masa_gate: MatchGate

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
        reference_mode: str = "masa",
        refine_window: int = 5,
        ref_scales: Sequence[float] = (1.0,),
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
            reference_mode (str): ``masa``, the authors' path, bit-exact, or
                ``refined``, ours (``refined.py``: border margin, centred features,
                pixel-precise refinement, detached gate ``masa_gate``).
            refine_window (int): cost-aggregation box of the refined path (odd).
            ref_scales (Sequence[float]): refined path: the reference is matched at each of
                these scales and every position of every level takes the warp of the scale
                it matches best (e.g. ``[0.667, 1, 1.5]`` for guidance whose scale differs
                from the input's). Default ``(1.0,)``.
        """
        if reference_mode not in REFERENCE_MODES:
            raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, got {reference_mode!r}")
        scales = tuple(ref_scales) if not isinstance(ref_scales, (str, bytes)) else ()
        if not scales or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in scales):
            raise ValueError(f"ref_scales must be a non-empty list of numbers > 0, got {ref_scales!r}")
        if reference_mode == "masa" and scales != (1.0,):
            raise ValueError(f"ref_scales={list(scales)} needs reference_mode='refined' (the authors' path matches "
                             f"at one scale)")
        self.ref_scales = tuple(float(v) for v in scales)
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
        self.reference_mode = reference_mode
        if reference_mode == "masa":
            self.masa_matcher = CoarseToFineMatcher(
                block_size=lr_block_size, window_scale=ref_down_block_size, dilations=tuple(dilations)
            )
            self.masa_transfer = PatchTransfer()
        else:
            self.masa_matcher = RefinedMatcher(
                block_size=lr_block_size, window_scale=ref_down_block_size, dilations=tuple(dilations),
                refine_window=refine_window,
            )
            self.masa_gate = MatchGate(num_levels)
            # the warped guidance pixels, added to the finest warped feature (zero at init)
            self.masa_ref_pixels = torch.nn.Conv2d(ref_channels, nf, 3, padding=1)
            torch.nn.init.zeros_(self.masa_ref_pixels.weight)
            torch.nn.init.zeros_(self.masa_ref_pixels.bias)
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
        return self._warp_features(self.masa_enc(self._encoder_input(x)), ref)

    def _warp_features(self, feats_lq: list[torch.Tensor], ref: torch.Tensor) -> list[torch.Tensor]:
        """Warped (and, refined, gated) reference features for an input pyramid."""
        if self.reference_mode == "masa":
            feats_ref = self.masa_enc(ref)
            match = self.masa_matcher(feats_lq[-1], feats_ref[-1])
            return self.masa_transfer(feats_ref, match)
        per_scale = []
        for feats_ref, ref_scaled, matches in self._refined_matches(feats_lq, ref):
            warped = [warp(feat, m.coords) for feat, m in zip(feats_ref, matches)]
            # pixel-precise correspondences can carry the guidance pixels themselves
            warped[0] = warped[0] + self.masa_ref_pixels(warp(ref_scaled, matches[0].coords))  # (B, nf, H, W)
            per_scale.append((warped, matches))
        warped, matches = _best_scale(per_scale)
        return self.masa_gate(warped, matches)

    def _warp_checkpointed(self, ref: torch.Tensor, *feats_lq: torch.Tensor) -> list[torch.Tensor]:
        """``_warp_features`` with the pyramid as separate arguments, so checkpointing keeps
        (and counts) each level as an input of the region."""
        return self._warp_features(list(feats_lq), ref)

    def _refined_matches(self, feats_lq: list[torch.Tensor], ref: torch.Tensor) -> list[tuple]:
        """Per reference scale: (reference pyramid, reference image, correspondences)."""
        out = []
        for scale in self.ref_scales:
            if scale != 1.0:
                size = (max(1, round(ref.shape[-2] * scale)), max(1, round(ref.shape[-1] * scale)))
                ref_scaled = F.interpolate(ref, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
                ref_scaled = self._zero_pad(ref_scaled)
            else:
                ref_scaled = ref
            feats_ref = self.masa_enc(ref_scaled)
            out.append((feats_ref, ref_scaled, self.masa_matcher(feats_lq, feats_ref)))
        return out

    @torch.no_grad()
    def warp_reference_image(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The reference image carried onto the input grid by this model's matching.

        A diagnostic of alignment: the correspondences the network uses for its finest
        level applied to the reference pixels, without confidence or gate.

        Args:
            x (Tensor): (B, C, H, W) input in [0, 1], any size.
            ref (Tensor): (B, C_ref, Hr, Wr) reference in [0, 1], any size.

        Returns:
            Tensor: (B, C_ref, H, W).
        """
        self._check_pair(x, ref)
        h, w = x.shape[-2:]
        x, ref = self._pad_pair(x, ref)
        feats_lq = self.masa_enc(self._encoder_input(x))
        if self.reference_mode == "masa":
            match = self.masa_matcher(feats_lq[-1], self.masa_enc(ref)[-1])
            match = dataclasses.replace(match, confidence=torch.ones_like(match.confidence))
            warped = self.masa_transfer.transfer_level(ref, match, self.masa_enc.downsample_factor)
        else:
            per_scale = [([warp(ref_scaled, matches[0].coords)], matches[:1])
                         for _, ref_scaled, matches in self._refined_matches(feats_lq, ref)]
            warped = _best_scale(per_scale)[0][0]
        return warped[:, :, :h, :w]

    def _zero_pad(self, image: torch.Tensor) -> torch.Tensor:
        """Zero-pad right/bottom to a multiple of ``pad_multiple`` (as the authors do)."""
        return pad_to_multiple(image, self.pad_multiple, mode="constant")

    def _pad_pair(self, x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pad input and reference right/bottom to a multiple of ``pad_multiple``."""
        return self._zero_pad(x), self._zero_pad(ref)

    def forward(
        self, x: torch.Tensor, ref: torch.Tensor, clean: torch.Tensor | None = None,
        generator: torch.Generator | None = None, stages: bool = False,
    ) -> Any:
        """Restore ``x`` guided by ``ref``.

        Args:
            x (Tensor): (B, C, H, W) degraded input in [0, 1], any H and W.
            ref (Tensor): (B, C_ref, Hr, Wr) guidance image in [0, 1], any Hr and Wr
                (e.g. a 512x512 generated reference for a 720x1280 input).
            clean (Tensor | None): (B, C_ref, H, W) the clean target, aligned with ``x``,
                in training only (``refined`` mode): the correspondence loss is then
                computed from it and returned too.
            generator (torch.Generator | None): draws the random move of the clean image
                in that loss (CPU generator; None: the global RNG). The training loop
                seeds one per step, so a resumed run draws the same moves.
            stages (bool): return every output of a multi-stage backbone (its
                ``_forward_stages_padded``, cropped), for the stage losses.

        Returns:
            Tensor: (B, C_out, H, W) restored image (with ``stages``, the backbone's stage
            outputs); with ``clean``, also the scalar correspondence loss
            (``refined.correspondence_loss``).
        """
        return self._guided_forward(x, ref, clean, generator, stages)

    def _guided_forward(
        self, x: torch.Tensor, ref: torch.Tensor, clean: torch.Tensor | None, generator: torch.Generator | None,
        stages: bool, **backbone_inputs: Any,
    ) -> Any:
        """The body of :meth:`forward`; ``backbone_inputs`` go to the backbone's
        ``_forward_padded`` / ``_forward_stages_padded`` as keywords (``GuidedTextPromptIR``'s
        ``text_embedding``)."""
        self._check_pair(x, ref)
        h, w = x.shape[-2:]
        x, ref = self._pad_pair(x, ref)
        feats_lq = self.masa_enc(self._encoder_input(x))
        if active_checkpointing(self) != "none":  # archs/memory.py
            # keep only the input pyramid and ref: the reference encoding, matching and
            # transfer are recomputed in backward (the fusion stacks keep no warped feature)
            warped = checkpoint_call(self, self._warp_checkpointed, ref, *feats_lq)
        else:
            warped = self._warp_features(feats_lq, ref)
        stacks = self._fusion_stacks()

        def fuse(level: int, feat: torch.Tensor) -> torch.Tensor:
            return stacks[level](feat, warped[level])

        if stages:
            outs = self._forward_stages_padded(x, fuse=fuse, **backbone_inputs)  # type: ignore[attr-defined]
            out = crop_stages(outs, x.shape[-2:], (h, w))
        else:
            out = self._forward_padded(x, fuse=fuse, **backbone_inputs)[:, :, :h, :w]  # type: ignore[attr-defined]
        if clean is None:
            return out
        return out, self._correspondence_loss(feats_lq, clean, generator)

    def _correspondence_loss(
        self, feats_lq: list[torch.Tensor], clean: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        if self.reference_mode != "refined":
            raise ValueError(
                f"{type(self).__name__}: the correspondence loss needs reference_mode='refined' "
                f"(got {self.reference_mode!r}); set train.correspondence_opt.loss_weight to 0"
            )
        if clean.ndim != 4 or clean.shape[1] != self.ref_channels:
            raise ValueError(f"clean must be (B, {self.ref_channels}, H, W), got {tuple(clean.shape)}")
        clean = self._zero_pad(clean)
        if clean.shape[-2:] != feats_lq[0].shape[-2:]:
            raise ValueError(
                f"clean {tuple(clean.shape)} must have the input's size {tuple(feats_lq[0].shape[-2:])}"
            )
        # a random move: a shift of up to one deepest cell and a zoom of up to CORRESPONDENCE_ZOOM
        move = Move.draw(self.masa_enc.downsample_factor, CORRESPONDENCE_ZOOM, generator)
        return correspondence_loss(feats_lq, self.masa_enc(move.apply(clean)), self.masa_matcher.refine_window, move)

"""DINOv2 reference-window selection: which part of the guidance image matches an LQ crop.

During training the authors crop a p x p patch from the LQ image, but the guidance image
is generated from the whole LQ image (512 x 512) and its layout need not follow the
input's. ``RefGuidedImageCleanModel.optimize_parameters`` therefore cuts candidate
windows out of the reference, embeds the LQ patch and each candidate with a frozen
DINOv2 ViT-B/14 (layer-normed patch tokens), and keeps the candidate whose flattened
token map has the highest cosine similarity with the LQ's. This module holds that
selection, vectorised over the batch and the candidates, with the authors' defects fixed
(D24 in docs/official_differences.md):

- candidate offsets take stride ``window // 4`` as the authors do, **plus the last
  offset** of each axis, so the right and bottom borders of the reference can be chosen
  (D24: for p = 384 on a 512 reference the authors only try offsets 0 and 96);
- inputs are ImageNet-normalised, as DINOv2 was trained (the authors feed raw [0, 1];
  ``normalize=False`` reproduces that);
- a reference smaller than the window is enlarged to fit instead of failing.

As the authors do, the selection runs in the training step on the training device
(``select_reference_windows``, called by ``textualdeg.restoration.train``), once per
batch, after the progressive crop: a ``ref_crop: dino`` training item carries the whole
reference plus the flips/rotation applied to its LQ crop and the window rule
(``textualdeg.data.guided_base.DINO_KEYS``). The LQ crop is turned back to the
reference's orientation, the window chosen, and the flips/rotation applied to it, so the
window is the one the crop would get without augmentation, in the crop's orientation.

DINOv2 itself is loaded by ``textualdeg.pretrained.dinov2`` (transformers folder or
torch-hub file); importing this module does not import transformers.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from textualdeg.data.guided_base import DINO_KEYS
from textualdeg.data.transforms import Dihedral
from textualdeg.pretrained.dinov2 import DinoFeatureExtractor, load_dinov2


def window_offsets(length: int, window: int, stride: int, cover_edge: bool = True) -> torch.Tensor:
    """Start offsets of windows along one axis.

    Args:
        length (int): axis length of the reference.
        window (int): window length (<= ``length``).
        stride (int): step between offsets.
        cover_edge (bool): append ``length - window`` if the stride misses it (fixes D24).

    Returns:
        (n,) int64 tensor of offsets.
    """
    if window > length:
        raise ValueError(f"window {window} is longer than the axis {length}")
    offsets = list(range(0, length - window + 1, max(1, stride)))
    if cover_edge and offsets[-1] != length - window:
        offsets.append(length - window)
    return torch.tensor(offsets, dtype=torch.long)


class DinoWindowSelector:
    """Pick the reference window whose DINOv2 patch tokens best match each LQ crop.

    Candidates are the windows of size ``window`` (default: the LQ crop size) at stride
    ``window // stride_divisor`` (plus the last offset per axis when ``cover_edges``).
    The LQ crop and every candidate are resized bilinearly to the next multiple of the
    patch size, embedded, flattened to one vector each, and compared by cosine
    similarity; the best window is returned at the LQ crop size.

    Args:
        extractor (Callable): maps (N, 3, S_h, S_w) in [0, 1] to (N, P, D) tokens, e.g.
            a ``DinoFeatureExtractor`` (any callable works: tests use a stub).
        patch_size (int | None): side the inputs are rounded up to a multiple of
            (default: ``extractor.patch_size``, else 14).
        stride_divisor (int): stride = window // stride_divisor (4 as the authors).
        cover_edges (bool): also try the last offset of each axis.
        chunk_size (int): images per extractor call (bounds memory).
    """

    def __init__(
        self,
        extractor: Callable[[torch.Tensor], torch.Tensor],
        patch_size: int | None = None,
        stride_divisor: int = 4,
        cover_edges: bool = True,
        chunk_size: int = 64,
    ) -> None:
        if stride_divisor < 1:
            raise ValueError(f"stride_divisor must be >= 1, got {stride_divisor}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.extractor = extractor
        self.patch_size = int(patch_size or getattr(extractor, "patch_size", 14))
        self.stride_divisor = stride_divisor
        self.cover_edges = cover_edges
        self.chunk_size = chunk_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        normalize: bool = True,
        num_attention_heads: int | None = None,
        stride_divisor: int = 4,
        cover_edges: bool = True,
        chunk_size: int = 64,
    ) -> "DinoWindowSelector":
        """Build a selector around DINOv2 from ``textualdeg.pretrained.dinov2.load_dinov2``.

        Args:
            path (str | Path): DINOv2 folder or torch-hub checkpoint file.
            device (str | torch.device): where DINOv2 runs (the training device).
            dtype (torch.dtype): DINOv2's parameter dtype (float32; bf16/fp16 on a GPU).
            normalize, num_attention_heads, stride_divisor, cover_edges, chunk_size:
                as ``DinoFeatureExtractor``, ``load_dinov2`` and the constructor.
        """
        model = load_dinov2(path, num_attention_heads=num_attention_heads, device=device, dtype=dtype)
        extractor = DinoFeatureExtractor(model, normalize=normalize).to(device)
        return cls(extractor, stride_divisor=stride_divisor, cover_edges=cover_edges, chunk_size=chunk_size)

    def _embed(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Resize to ``size``, embed in chunks and L2-normalise: (N, P*D)."""
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        feats = [self.extractor(chunk).flatten(1) for chunk in images.split(self.chunk_size)]  # (n, P*D) each
        return F.normalize(torch.cat(feats), dim=1)

    @torch.no_grad()
    def select(
        self, lq: torch.Tensor, ref: torch.Tensor, window: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Select, for each sample, the reference window most similar to its LQ crop.

        Args:
            lq (torch.Tensor): (B, C, h, w) LQ crops in [0, 1]; C is 3, or 1 (repeated).
            ref (torch.Tensor): (B, C, Hr, Wr) reference images in [0, 1].
            window (tuple[int, int] | None): candidate (height, width) in reference
                pixels; default (h, w) as the authors. A reference smaller than the
                window is first enlarged (aspect kept) until it fits.

        Returns:
            crops (B, C, h, w): the chosen windows resized to the LQ crop size;
            offsets (B, 2): their (top, left) in the (possibly enlarged) reference;
            scores (B, N): cosine similarity of every candidate.
        """
        if lq.ndim != 4 or ref.ndim != 4 or lq.shape[0] != ref.shape[0]:
            raise ValueError(f"lq and ref must be (B, C, H, W) with one B, got {tuple(lq.shape)} and {tuple(ref.shape)}")
        b, c, h, w = lq.shape
        if c not in (1, 3) or ref.shape[1] != c:
            raise ValueError(f"lq and ref need 1 or 3 matching channels, got {c} and {ref.shape[1]}")
        wh, ww = window if window is not None else (h, w)
        hr, wr = ref.shape[-2:]
        if wh > hr or ww > wr:
            scale = max(wh / hr, ww / wr)
            ref = F.interpolate(ref, size=(math.ceil(hr * scale), math.ceil(wr * scale)),
                                mode="bilinear", align_corners=False)
            hr, wr = ref.shape[-2:]
        ys = window_offsets(hr, wh, wh // self.stride_divisor, self.cover_edges).to(ref.device)
        xs = window_offsets(wr, ww, ww // self.stride_divisor, self.cover_edges).to(ref.device)
        rows = (ys[:, None] + torch.arange(wh, device=ref.device))[:, None, :, None]  # (ny, 1, wh, 1)
        cols = (xs[:, None] + torch.arange(ww, device=ref.device))[None, :, None, :]  # (1, nx, 1, ww)
        cands = ref[:, :, rows, cols]  # (B, C, ny, nx, wh, ww)
        ny, nx = len(ys), len(xs)
        cands = cands.permute(0, 2, 3, 1, 4, 5).reshape(b * ny * nx, c, wh, ww)  # (B*N, C, wh, ww)

        size = (math.ceil(h / self.patch_size) * self.patch_size, math.ceil(w / self.patch_size) * self.patch_size)
        rgb = (lambda x: x.expand(-1, 3, -1, -1)) if c == 1 else (lambda x: x)
        lq_feat = self._embed(rgb(lq), size)  # (B, P*D)
        cand_feat = self._embed(rgb(cands), size).view(b, ny * nx, -1)  # (B, N, P*D)
        scores = torch.einsum("bd,bnd->bn", lq_feat, cand_feat)  # (B, N)
        best = scores.argmax(dim=1)  # (B,)

        chosen = cands.view(b, ny * nx, c, wh, ww)[torch.arange(b, device=ref.device), best]  # (B, C, wh, ww)
        if (wh, ww) != (h, w):
            chosen = F.interpolate(chosen, size=(h, w), mode="bilinear", align_corners=False)
        offsets = torch.stack([ys[best // nx], xs[best % nx]], dim=1)  # (B, 2)
        return chosen.clamp(0.0, 1.0), offsets, scores

    def __call__(
        self, lq: torch.Tensor, ref: torch.Tensor, window: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``select(lq, ref, window)[0]``: the chosen windows, (B, C, h, w)."""
        return self.select(lq, ref, window)[0]


def _guide_view(lq: torch.Tensor, ref_channels: int) -> torch.Tensor:
    """The part of an LQ batch that DINOv2 compares with the reference.

    All of it when it has the reference's channels; with twice as many (dual-pixel
    ``[L, R]`` stacked by ``PairedDualPixelRefDataset``) the mean of the two views.
    """
    c = lq.shape[1]
    if c == ref_channels:
        return lq
    if c == 2 * ref_channels:
        return 0.5 * (lq[:, :ref_channels] + lq[:, ref_channels:])  # (B, C_ref, h, w)
    raise ValueError(f"an LQ batch of {c} channels cannot be compared with {ref_channels}-channel references")


def select_reference_windows(
    selector: DinoWindowSelector, batch: Mapping[str, Any]
) -> dict[str, Any]:
    """Replace each whole reference of a ``ref_crop: dino`` training batch by its window.

    For sample i: the LQ crop (after any progressive crop) is turned back by the inverse
    of ``dihedral[i]``; the window size is ``round(side * num / den)`` per axis from
    ``window_ratio[i]`` (the crop size for ``dino_window: crop``, scaled by reference size
    / image size for ``relative``); ``selector`` picks the window of ``ref[i]``; and
    ``ref_dihedral[i]`` is applied to it (the LQ/GT flips/rotation, or none when the
    dataset has ``augment_ref: false``). Samples with the same reference size, crop size
    and window go through DINOv2 together, on the device of the batch.

    Args:
        selector (DinoWindowSelector): built once per run, on the training device.
        batch: collated items with ``lq`` (B, C, h, w), ``ref`` (B, C_ref, Hr, Wr) or a
            list of B (C_ref, Hr_i, Wr_i) tensors (references of different sizes),
            ``dihedral`` and ``ref_dihedral`` (B, 3) bool, ``window_ratio`` (B, 4) int64
            (see ``textualdeg.data.guided_base.DINO_KEYS``).

    Returns:
        A new dict without the ``DINO_KEYS``, ``ref`` (B, C_ref, h, w) in [0, 1].
    """
    lq, refs = batch["lq"], batch["ref"]
    b, _, h, w = lq.shape
    if len(refs) != b:
        raise ValueError(f"{len(refs)} references for {b} LQ crops")
    guide = _guide_view(lq, refs[0].shape[0])
    dihedrals = [Dihedral(*flags) for flags in batch["dihedral"].tolist()]
    ref_dihedrals = [Dihedral(*flags) for flags in batch["ref_dihedral"].tolist()]
    guides = [d.apply_chw(g, inverse=True) for d, g in zip(dihedrals, guide)]  # (C, h_i, w_i) each
    groups: dict[tuple, list[int]] = {}
    for i, (ratio, g) in enumerate(zip(batch["window_ratio"].tolist(), guides)):
        gh, gw = g.shape[-2:]
        window = (max(1, round(gh * ratio[0] / ratio[1])), max(1, round(gw * ratio[2] / ratio[3])))
        groups.setdefault((tuple(refs[i].shape), tuple(g.shape), window), []).append(i)
    chosen: list[torch.Tensor | None] = [None] * b
    for (_, _, window), index in groups.items():
        if isinstance(refs, torch.Tensor):
            ref_group = refs[torch.tensor(index, device=refs.device)]  # (n, C, Hr, Wr)
        else:
            ref_group = torch.stack([refs[i] for i in index])  # (n, C, Hr, Wr)
        crops = selector(torch.stack([guides[i] for i in index]), ref_group, window)  # (n, C, h_i, w_i)
        for i, crop in zip(index, crops):
            chosen[i] = ref_dihedrals[i].apply_chw(crop)
    out = {k: v for k, v in batch.items() if k not in DINO_KEYS}
    out["ref"] = torch.stack(chosen)  # (B, C_ref, h, w)
    return out


__all__ = [
    "DinoWindowSelector",
    "select_reference_windows",
    "window_offsets",
]

"""Restormer-style progressive training: patch and batch sizes that change with the iteration.

Restormer (and the authors' driver) train in stages: stage j lasts ``iters[j]``
iterations with patches of ``gt_sizes[j]`` and ``batch_sizes[j]`` samples per process.
The loader always yields the largest batch and patch; each iteration takes a random
subset of the samples and one random window of the smaller size, the same window for the
whole batch. Unlike the authors' driver, the guidance is subset with the LQ and GT (D20
in docs/official_differences.md), and cropped with them when asked (``crop_ref``: a
reference aligned pixel for pixel with the LQ crop). With ``ref_crop: dino`` the batch
holds whole references and the training step chooses their windows after this crop, so
the window follows the final LQ crop.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import bisect
from itertools import accumulate
from typing import Any, Mapping, Sequence

import torch


class ProgressiveSchedule:
    """Map an iteration to its (patch size, batch size).

    Args:
        iters (Sequence[int]): length of each stage in iterations.
        gt_sizes (Sequence[int]): patch side of each stage.
        batch_sizes (Sequence[int]): samples per process of each stage (Restormer's
            ``mini_batch_sizes``).

    Iterations count from 1 as in BasicSR: stage j covers
    ``sum(iters[:j]) < iteration <= sum(iters[:j + 1])``; later iterations stay in the
    last stage.
    """

    def __init__(self, iters: Sequence[int], gt_sizes: Sequence[int], batch_sizes: Sequence[int]) -> None:
        if not iters:
            raise ValueError("iters must not be empty")
        if not len(iters) == len(gt_sizes) == len(batch_sizes):
            raise ValueError(f"iters, gt_sizes and batch_sizes need equal lengths, got "
                             f"{list(iters)}, {list(gt_sizes)}, {list(batch_sizes)}")
        for name, values in (("iters", iters), ("gt_sizes", gt_sizes), ("batch_sizes", batch_sizes)):
            if any(int(v) < 1 for v in values):
                raise ValueError(f"{name} must be positive integers, got {list(values)}")
        self.iters = tuple(int(v) for v in iters)
        self.gt_sizes = tuple(int(v) for v in gt_sizes)
        self.batch_sizes = tuple(int(v) for v in batch_sizes)
        self.boundaries = tuple(accumulate(self.iters))

    @property
    def max_gt_size(self) -> int:
        """The patch size the dataset must produce."""
        return max(self.gt_sizes)

    @property
    def max_batch_size(self) -> int:
        """The batch size the loader must produce."""
        return max(self.batch_sizes)

    def stage(self, iteration: int) -> int:
        """Index of the stage that ``iteration`` (from 1) belongs to."""
        return min(bisect.bisect_left(self.boundaries, int(iteration)), len(self.iters) - 1)

    def __call__(self, iteration: int) -> tuple[int, int]:
        """(gt_size, batch_size) for ``iteration``."""
        j = self.stage(iteration)
        return self.gt_sizes[j], self.batch_sizes[j]


def crop_batch(
    batch: Mapping[str, Any],
    gt_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    crop_ref: bool = False,
) -> dict[str, Any]:
    """Take a random subset of a batch and one random ``gt_size`` window of it.

    Args:
        batch: collated items; ``lq`` and ``gt`` are (B, C, H, W). ``ref`` (a tensor
            or a list of B references) and every other tensor or list with B entries
            (paths, tasks, ``DINO_KEYS``) are subset with them.
        gt_size (int): window side (<= H and W); equal to H and W means no crop.
        batch_size (int): samples to keep (<= B).
        generator (torch.Generator | None): source of randomness (CPU generator).
        crop_ref (bool): crop ``ref`` with the same window; only meaningful when the
            reference is aligned pixel for pixel with the LQ crop, not a whole (resized)
            reference (``ref_crop: dino`` batches hold whole references: their windows
            are chosen after this crop).

    Returns:
        A new dict; tensors are views or index copies of the input.
    """
    lq, gt = batch["lq"], batch["gt"]
    b, _, h, w = gt.shape
    if lq.shape[0] != b or lq.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"lq {tuple(lq.shape)} and gt {tuple(gt.shape)} must share batch and size")
    if not 1 <= batch_size <= b:
        raise ValueError(f"batch_size must be in [1, {b}], got {batch_size}")
    if not 1 <= gt_size <= min(h, w):
        raise ValueError(f"gt_size must be in [1, {min(h, w)}], got {gt_size}")
    out: dict[str, Any] = dict(batch)
    if batch_size < b:
        keep = torch.randperm(b, generator=generator)[:batch_size].sort().values  # (batch_size,)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == b:
                out[key] = value[keep.to(value.device)]
            elif isinstance(value, (list, tuple)) and len(value) == b:
                out[key] = [value[i] for i in keep.tolist()]
    if gt_size < h or gt_size < w:
        top = int(torch.randint(0, h - gt_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - gt_size + 1, (1,), generator=generator))
        window = (Ellipsis, slice(top, top + gt_size), slice(left, left + gt_size))
        for key in ("lq", "gt"):
            out[key] = out[key][window]
        if crop_ref:
            ref = out.get("ref")
            if not isinstance(ref, torch.Tensor) or ref.shape[-2:] != (h, w):
                shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else None
                raise ValueError(f"crop_ref=True needs a ref tensor of size {(h, w)}, got {shape}")
            out["ref"] = ref[window]
    return out


__all__ = ["ProgressiveSchedule", "crop_batch"]

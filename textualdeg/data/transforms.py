"""Paired image transforms for restoration datasets: seeds, padding, aligned crops, flips.

Everything here works on numpy HWC float32 images in [0, 1] (the I/O boundary format)
and is vectorised numpy (views plus one copy), so importing it does not import basicsr.
The crops and the dihedral augmentation follow BasicSR's ``paired_random_crop`` and
``augment`` (hflip, then vflip, then transpose; each drawn with probability 1/2), with
the randomness drawn from an explicit ``numpy.random.Generator`` so that an item is a
pure function of (seed, epoch, index) and a resumed run sees the same data.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np


def make_rng(seed: int, *keys: int) -> np.random.Generator:
    """Return a numpy Generator that depends only on ``seed`` and ``keys``.

    Args:
        seed (int): base seed (``manual_seed`` of the option file), >= 0.
        *keys (int): further non-negative integers, e.g. ``epoch, index``.

    Returns:
        A fresh ``np.random.Generator`` (PCG64) seeded from ``SeedSequence([seed, *keys])``.
    """
    entropy = [int(seed), *(int(k) for k in keys)]
    if any(k < 0 for k in entropy):
        raise ValueError(f"make_rng: seed and keys must be >= 0, got {entropy}")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def as_hwc(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as (H, W, C); a 2-D array gets a channel axis of 1."""
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be HW or HWC, got shape {image.shape}")
    return image


def pad_to_size(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Reflect-pad ``image`` at the bottom and right up to at least ``size``.

    Matches the authors' ``cv2.copyMakeBorder(..., cv2.BORDER_REFLECT)`` (the edge pixel
    is repeated, numpy's ``symmetric`` mode). Images already large enough are returned
    unchanged.

    Args:
        image (np.ndarray): (H, W, C).
        size (int | tuple[int, int]): minimum (height, width).

    Returns:
        (max(H, h), max(W, w), C) array.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    pad_h, pad_w = max(0, th - h), max(0, tw - w)
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def random_crop_box(
    image_hw: tuple[int, int], size: int | tuple[int, int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Draw a crop box of ``size`` inside an image of ``image_hw``.

    Args:
        image_hw (tuple[int, int]): (H, W) of the image.
        size (int | tuple[int, int]): crop (h, w); must fit inside the image.
        rng (np.random.Generator): source of randomness.

    Returns:
        (top, left, h, w).
    """
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = image_hw
    if ch > h or cw > w:
        raise ValueError(f"crop size {(ch, cw)} is larger than the image {(h, w)}; pad first")
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return top, left, ch, cw


def paired_random_crop(
    images: Sequence[np.ndarray], size: int | tuple[int, int], rng: np.random.Generator
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Crop the same random window from images of one size (scale 1, e.g. LQ and GT).

    Args:
        images (Sequence[np.ndarray]): (H, W, C) arrays of equal H and W.
        size (int | tuple[int, int]): crop (h, w).
        rng (np.random.Generator): source of randomness (one draw for all images).

    Returns:
        The crops (views) and the (top, left) corner.
    """
    shapes = {im.shape[:2] for im in images}
    if len(shapes) != 1:
        raise ValueError(f"paired_random_crop needs images of one size, got {sorted(shapes)}")
    top, left, ch, cw = random_crop_box(images[0].shape[:2], size, rng)
    return [im[top : top + ch, left : left + cw] for im in images], (top, left)


@dataclass(frozen=True)
class Dihedral:
    """One of BasicSR's geometric augmentations: hflip, then vflip, then transpose."""

    hflip: bool = False
    vflip: bool = False
    transpose: bool = False

    @classmethod
    def draw(cls, rng: np.random.Generator, use_hflip: bool = True, use_rot: bool = True) -> "Dihedral":
        """Draw a transform as BasicSR's ``augment(hflip=use_hflip, rotation=use_rot)`` does.

        Three draws are always taken (so the random stream does not depend on the flags).
        """
        u = rng.random(3)
        return cls(bool(use_hflip and u[0] < 0.5), bool(use_rot and u[1] < 0.5), bool(use_rot and u[2] < 0.5))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Apply the transform to an (H, W, C) array; returns a contiguous copy."""
        if self.hflip:
            image = image[:, ::-1]
        if self.vflip:
            image = image[::-1]
        if self.transpose:
            image = image.transpose(1, 0, 2)  # (W, H, C)
        return np.ascontiguousarray(image)

    @property
    def flags(self) -> tuple[bool, bool, bool]:
        """``(hflip, vflip, transpose)``, the order ``Dihedral(*flags)`` takes."""
        return self.hflip, self.vflip, self.transpose

    def apply_chw(self, image: Any, inverse: bool = False) -> Any:
        """Apply the transform (or its inverse) to a (..., C, H, W) torch tensor.

        The same geometry as ``__call__`` on an (H, W, C) array; the inverse undoes it
        (transpose, then vflip, then hflip).
        """
        steps = [(self.hflip, lambda t: t.flip(-1)), (self.vflip, lambda t: t.flip(-2)),
                 (self.transpose, lambda t: t.transpose(-2, -1))]  # transpose: (..., C, W, H)
        for active, op in reversed(steps) if inverse else steps:
            if active:
                image = op(image)
        return image


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) float image to ``size`` = (h, w).

    Area interpolation when shrinking (no aliasing), bilinear when enlarging; values are
    clipped back to [0, 1].

    Returns:
        (h, w, C) float32 array.
    """
    th, tw = int(size[0]), int(size[1])
    if th <= 0 or tw <= 0:
        raise ValueError(f"resize_image: size must be positive, got {size}")
    h, w, c = image.shape
    if (h, w) == (th, tw):
        return image
    interpolation = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (tw, th), interpolation=interpolation)
    out = out.reshape(th, tw, c)  # cv2 drops a single channel axis: back to (h, w, C)
    return np.clip(out, 0.0, 1.0)


__all__ = [
    "Dihedral",
    "as_hwc",
    "make_rng",
    "pad_to_size",
    "paired_random_crop",
    "random_crop_box",
    "resize_image",
]

"""``GuidedDatasetBase``: what every stage-4 dataset shares once its files are paired.

Crop, augmentation, guidance crop, seeding and bad-image handling, with the authors'
data defects fixed (IDs as in docs/official_differences.md):

- 8- and 16-bit files are read by ``textualdeg.imageio`` (D28); an LQ/GT size mismatch
  is an error naming both files; a corrupt file is an error naming it, or with
  ``skip_bad_images`` a logged skip to the next readable item (never zeros, D12);
- the guidance crop follows ``ref_crop``: ``resize`` resizes the whole reference to
  ``ref_size`` squared, ``full`` passes it untouched, and the same flip/rotation as
  LQ/GT is applied to it (``augment_ref``) so that its layout stays aligned. ``dino``
  (training only) passes the whole, unaugmented reference plus what the window choice
  needs (``DINO_KEYS``): the training step picks, batched on the training device, the
  window that matches the final LQ crop by DINOv2 patch-token similarity
  (``textualdeg.restoration.dino_window.select_reference_windows``), as the authors do
  in their model step (D24). No model lives in a dataset or a data-loader worker.

Items are dicts ``{"lq": (C, h, w), "gt": (C, h, w), "ref": (C, hr, wr), "lq_path",
"gt_path", "ref_path"}``, float32 tensors in [0, 1]; ``ref_crop: dino`` training items
add ``dihedral`` and ``ref_dihedral`` (3,) bool and ``window_ratio`` (4,) int64.
Randomness comes from a numpy Generator derived from (``seed``, epoch, index): call
``set_epoch`` each epoch and a resumed run sees the same crops. ``collate_guided``
batches items whose references differ in size (``ref_crop: dino``) as a list.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from textualdeg.data.pairing import ImageTriple
from textualdeg.data.transforms import (
    Dihedral,
    make_rng,
    pad_to_size,
    paired_random_crop,
    resize_image,
)
from textualdeg.imageio import ImageReadError, image_to_tensor, read_image
from textualdeg.log import get_logger

logger = get_logger(__name__)

__all__ = [
    "DINO_KEYS",
    "DINO_WINDOWS",
    "GuidedDatasetBase",
    "PHASES",
    "REF_CROPS",
    "collate_guided",
]

REF_CROPS = ("dino", "resize", "full")
DINO_WINDOWS = ("crop", "relative")
PHASES = ("train", "val", "test")
# What a ``ref_crop: dino`` training item adds for the window choice in the training step:
#   dihedral      (3,) bool   (hflip, vflip, transpose) applied to LQ/GT (``Dihedral.flags``)
#   ref_dihedral  (3,) bool   the same, to apply to the chosen window (none: augment_ref false)
#   window_ratio  (4,) int64  (num_h, den_h, num_w, den_w): window side = round(crop side * num / den)
#                             in reference pixels; (1, 1, 1, 1) for ``dino_window: crop``,
#                             (ref H, image H, ref W, image W) for ``relative``
DINO_KEYS = ("dihedral", "ref_dihedral", "window_ratio")


class GuidedDatasetBase(Dataset):
    """Shared crop, augmentation, guidance-crop, seeding and bad-image handling.

    Subclasses implement ``__len__`` and ``_load(index, rng)``.

    Args:
        dataroot_ref (str | None): guidance folder (None: no ``ref`` in the items).
        phase (str): ``train`` (crop + augment) or ``val``/``test`` (whole images).
        gt_size (int): training patch side; smaller images are reflect-padded first.
        use_hflip (bool): random horizontal flips in training.
        use_rot (bool): random vertical flips and transposes (rot90) in training.
        geometric_augs (bool | None): the authors' key; if set, overrides both flags.
        ref_crop (str): ``dino``, ``resize`` or ``full`` (see the module docstring);
            outside training ``dino`` passes the whole reference as the authors do.
        ref_size (int): side of the square reference for ``ref_crop="resize"``.
        augment_ref (bool): apply the LQ/GT flip/rotation to the reference too (a
            non-square ``full`` reference then changes orientation: batch such
            references with ``resize`` or ``dino``); with ``dino``, to the chosen window.
        dino_window (str): ``crop`` (window = LQ crop size in reference pixels, the
            authors') or ``relative`` (LQ crop size scaled by reference size / image size).
        in_ch (int): 3 (RGB) or 1: gray, read with BT.601 weights, cropped and degraded
            as one channel; the item is (1, H, W) for a 1-channel network (the official
            Restormer gray models), or (3, H, W) with ``gray_to_rgb``.
        gray_to_rgb (bool): with ``in_ch: 1``, replicate the gray channel to 3 in the item,
            for a 3-channel network fed gray data (the authors' gray models, D31).
            Default False.
        seed (int): base seed; items depend on (seed, epoch, index).
        skip_bad_images (bool): replace an unreadable item by the next readable one
            (logged) instead of raising.
        name (str): dataset name for logs.
        scale (int): must be 1 (same-size restoration).
        io_backend (Mapping | None): BasicSR key; only ``{"type": "disk"}`` is supported.
    """

    def __init__(
        self,
        dataroot_ref: str | None = None,
        phase: str = "train",
        gt_size: int = 256,
        use_hflip: bool = True,
        use_rot: bool = True,
        geometric_augs: bool | None = None,
        ref_crop: str = "full",
        ref_size: int = 512,
        augment_ref: bool = True,
        dino_window: str = "crop",
        in_ch: int = 3,
        gray_to_rgb: bool = False,
        seed: int = 0,
        skip_bad_images: bool = False,
        name: str = "",
        scale: int = 1,
        io_backend: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if ref_crop not in REF_CROPS:
            raise ValueError(f"ref_crop must be one of {REF_CROPS}, got {ref_crop!r}")
        if dino_window not in DINO_WINDOWS:
            raise ValueError(f"dino_window must be one of {DINO_WINDOWS}, got {dino_window!r}")
        if gt_size < 1 or ref_size < 1:
            raise ValueError(f"gt_size and ref_size must be >= 1, got {gt_size} and {ref_size}")
        if in_ch not in (1, 3):
            raise ValueError(f"in_ch must be 1 or 3, got {in_ch}")
        if scale != 1:
            raise ValueError(f"scale must be 1 (same-size restoration), got {scale}")
        if io_backend is not None and dict(io_backend).get("type", "disk") != "disk":
            raise ValueError(f"io_backend must be {{'type': 'disk'}}, got {dict(io_backend)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataroot_ref = dataroot_ref
        self.phase = phase
        self.gt_size = gt_size
        if geometric_augs is not None:
            use_hflip = use_rot = bool(geometric_augs)
        self.use_hflip, self.use_rot = use_hflip, use_rot
        self.ref_crop, self.ref_size, self.augment_ref = ref_crop, ref_size, augment_ref
        self.dino_window = dino_window
        self.in_ch = in_ch
        self.gray_to_rgb = bool(gray_to_rgb) and in_ch == 1
        self.channels = "rgb" if in_ch == 3 else "gray"
        self.seed = seed
        self.skip_bad_images = skip_bad_images
        self.name = name or type(self).__name__
        self.epoch = 0
        self._bad: set[int] = set()

    # -- seeding ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the index, determines each item."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load(index, make_rng(self.seed, self.epoch, index))

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Item ``index`` with randomness from ``rng`` (used by mixtures).

        With ``skip_bad_images`` an unreadable item is replaced by the next readable one
        (index + 1, + 2, ...), logged once per item.
        """
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} items")
        for step in range(n):
            current = (index + step) % n
            if current in self._bad:
                continue
            try:
                return self._load(current, rng)
            except ImageReadError as err:
                if not self.skip_bad_images:
                    raise
                self._bad.add(current)
                logger.warning("%s: skipping item %d: %s", self.name, current, err)
        raise RuntimeError(f"{self.name}: no readable item left ({len(self._bad)} unreadable)")

    # -- reading ---------------------------------------------------------------------
    def _read(self, path: Path) -> np.ndarray:
        return read_image(path, channels=self.channels)

    @staticmethod
    def _check_same_size(lq: np.ndarray, gt: np.ndarray, lq_path: Path | str, gt_path: Path) -> None:
        if lq.shape[:2] != gt.shape[:2]:
            raise ValueError(
                f"LQ/GT size mismatch: {lq_path} is {lq.shape[1]}x{lq.shape[0]} but "
                f"{gt_path} is {gt.shape[1]}x{gt.shape[0]} (width x height)"
            )

    # -- transforms ------------------------------------------------------------------
    def _crop(self, lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Pad to ``gt_size`` and take the same random window of LQ and GT."""
        lq, gt = pad_to_size(lq, self.gt_size), pad_to_size(gt, self.gt_size)
        (lq, gt), _ = paired_random_crop([lq, gt], self.gt_size, rng)
        return lq, gt

    def _select_ref(self, ref: np.ndarray) -> np.ndarray:
        """The guidance for a training item (or any ``resize`` item), as ``ref_crop`` says."""
        if self.ref_crop == "resize":
            return resize_image(ref, (self.ref_size, self.ref_size))
        return ref  # full, or dino: the window is chosen in the training step

    def _finish(
        self,
        lq: np.ndarray,
        gt: np.ndarray,
        ref: np.ndarray | None,
        rng: np.random.Generator,
        paths: ImageTriple,
        image_hw: tuple[int, int],
        lq_path: str | None = None,
    ) -> dict[str, Any]:
        """Guidance crop, shared augmentation and conversion to the item dict."""
        dino = ref is not None and self.phase == "train" and self.ref_crop == "dino"
        if ref is not None:
            if self.phase == "train" or self.ref_crop == "resize":
                ref = self._select_ref(ref)
        if self.phase == "train":
            aug = Dihedral.draw(rng, self.use_hflip, self.use_rot)
            lq, gt = aug(lq), aug(gt)
            if ref is not None and self.augment_ref and not dino:  # dino: applied to the window
                ref = aug(ref)
        if self.gray_to_rgb:
            lq, gt = np.repeat(lq, 3, axis=2), np.repeat(gt, 3, axis=2)  # (h, w, 1) -> (h, w, 3)
            ref = np.repeat(ref, 3, axis=2) if ref is not None else None
        item: dict[str, Any] = {
            "lq": image_to_tensor(lq),
            "gt": image_to_tensor(gt),
            "lq_path": lq_path if lq_path is not None else str(paths.lq),
            "gt_path": str(paths.gt),
        }
        if ref is not None:
            item["ref"] = image_to_tensor(ref)
            item["ref_path"] = str(paths.ref)
        if dino:
            item.update(self._dino_geometry(aug, ref.shape[:2], image_hw))
        return item

    def _dino_geometry(self, aug: Dihedral, ref_hw: tuple[int, int], image_hw: tuple[int, int]) -> dict[str, Any]:
        """The ``DINO_KEYS`` of a ``ref_crop: dino`` training item."""
        if self.dino_window == "relative":
            ratio = (ref_hw[0], image_hw[0], ref_hw[1], image_hw[1])
        else:
            ratio = (1, 1, 1, 1)
        return {
            "dihedral": torch.tensor(aug.flags),
            "ref_dihedral": torch.tensor(aug.flags if self.augment_ref else (False, False, False)),
            "window_ratio": torch.tensor(ratio, dtype=torch.int64),
        }


def collate_guided(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``default_collate``, except that references of different sizes become a list.

    ``ref_crop: dino`` items carry whole references, which may differ in size (several
    datasets in a mixture, guidance images of several sizes): their ``ref`` is then a
    list of B (C, Hr_i, Wr_i) tensors, and the training step chooses the windows per
    size (``textualdeg.restoration.dino_window.select_reference_windows``), so nothing
    is resized on the way. Other items must have references of one size.

    Args:
        items: dataset items (``lq``, ``gt``, optionally ``ref``, ...).

    Returns:
        The batch: tensors stacked to (B, ...), strings as lists, ``ref`` stacked or a list.

    Raises:
        ValueError: references of different sizes without ``ref_crop: dino``.
    """
    refs = [item.get("ref") for item in items]
    if any(r is None for r in refs) or len({tuple(r.shape) for r in refs}) == 1:
        return default_collate(list(items))
    if not all(DINO_KEYS[0] in item for item in items):
        sizes = sorted({tuple(r.shape[-2:]) for r in refs})
        raise ValueError(f"guidance images of different sizes {sizes} in one batch "
                         f"({[item.get('ref_path') for item in items]}): use ref_crop: resize or dino")
    batch = default_collate([{k: v for k, v in item.items() if k != "ref"} for item in items])
    batch["ref"] = list(refs)
    return batch

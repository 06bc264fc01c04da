"""``GuidedDatasetBase``: what every stage-4 dataset shares once its files are paired.

Crop, augmentation, guidance crop, seeding and bad-image handling, with the authors'
data defects fixed (IDs as in docs/official_differences.md):

- 8- and 16-bit files are read by ``textualdeg.imageio`` (D28); an LQ/GT size mismatch
  is an error naming both files; a corrupt file is an error naming it, or with
  ``skip_bad_images`` a logged skip to the next readable item (never zeros, D12);
- the guidance crop follows ``ref_crop``: ``dino`` picks the reference window that
  matches the LQ crop by DINOv2 patch-token similarity (the authors do this in the
  model, on the unaugmented reference, D24), ``resize`` resizes the whole reference to
  ``ref_size`` squared, ``full`` passes it untouched. The same flip/rotation as LQ/GT is
  applied to the reference (``augment_ref``) so that its layout stays aligned.

Items are dicts ``{"lq": (C, h, w), "gt": (C, h, w), "ref": (C, hr, wr), "lq_path",
"gt_path", "ref_path"}``, float32 tensors in [0, 1]. Randomness comes from a numpy
Generator derived from (``seed``, epoch, index): call ``set_epoch`` each epoch and a
resumed run sees the same crops.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from torch.utils.data import Dataset

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
    "DINO_WINDOWS",
    "GuidedDatasetBase",
    "PHASES",
    "REF_CROPS",
]

REF_CROPS = ("dino", "resize", "full")
DINO_WINDOWS = ("crop", "relative")
PHASES = ("train", "val", "test")


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
            references with ``resize`` or ``dino``).
        pretrain_dino (str | None): DINOv2 folder or hub file, needed for ``dino``.
        dino_window (str): ``crop`` (window = LQ crop size in reference pixels, the
            authors') or ``relative`` (LQ crop size scaled by reference size / image size).
        dino_selector (object | None): a ready ``DinoWindowSelector`` (overrides
            ``pretrain_dino``; for tests and for sharing one model).
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
        pretrain_dino: str | None = None,
        dino_window: str = "crop",
        dino_selector: Any = None,
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
        if ref_crop == "dino" and phase == "train" and dataroot_ref is not None:
            if pretrain_dino is None and dino_selector is None:
                raise ValueError("ref_crop='dino' needs pretrain_dino (a DINOv2 folder or hub checkpoint)")
        self.dataroot_ref = dataroot_ref
        self.phase = phase
        self.gt_size = gt_size
        if geometric_augs is not None:
            use_hflip = use_rot = bool(geometric_augs)
        self.use_hflip, self.use_rot = use_hflip, use_rot
        self.ref_crop, self.ref_size, self.augment_ref = ref_crop, ref_size, augment_ref
        self.pretrain_dino, self.dino_window, self._selector = pretrain_dino, dino_window, dino_selector
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

    def _guide_view(self, lq: np.ndarray) -> np.ndarray:
        """The part of the LQ crop that DINOv2 compares with the reference (all of it)."""
        return lq

    def _select_ref(self, ref: np.ndarray, lq_crop: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """The guidance for a training crop, as ``ref_crop`` says."""
        if self.ref_crop == "resize":
            return resize_image(ref, (self.ref_size, self.ref_size))
        if self.ref_crop == "full" or self.phase != "train":
            return ref
        selector = self._selector
        if selector is None:
            # imported here: data/ sits below restoration/ in the package
            from textualdeg.restoration.dino_window import shared_selector

            selector = shared_selector(self.pretrain_dino)
        h, w = lq_crop.shape[:2]
        if self.dino_window == "relative":
            window = (max(1, round(h * ref.shape[0] / image_hw[0])), max(1, round(w * ref.shape[1] / image_hw[1])))
        else:
            window = (h, w)
        if lq_crop.shape[2] == 1:  # DINOv2 compares RGB images: gray as three equal channels
            lq_crop, ref = np.repeat(lq_crop, 3, axis=2), np.repeat(ref, 3, axis=2)
        crop = selector(image_to_tensor(lq_crop)[None], image_to_tensor(ref)[None], window)  # (1, C, h, w)
        crop = crop[:, : self.in_ch]  # gray: one of the equal channels
        return np.ascontiguousarray(crop[0].permute(1, 2, 0).numpy())  # (h, w, C)

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
        if ref is not None:
            if self.phase == "train" or self.ref_crop == "resize":
                ref = self._select_ref(ref, self._guide_view(lq), image_hw)
        if self.phase == "train":
            aug = Dihedral.draw(rng, self.use_hflip, self.use_rot)
            lq, gt = aug(lq), aug(gt)
            if ref is not None and self.augment_ref:
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
        return item

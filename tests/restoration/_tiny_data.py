"""Tiny photograph folders for the restoration training tests (crops of scikit-image photos).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data

from textualdeg.imageio import write_image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _photo(name: str) -> np.ndarray:
    image = getattr(data, name)().astype(np.float32) / 255.0  # (H, W, 3) in [0, 1]
    return cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _guidance(clean: np.ndarray, size: int) -> np.ndarray:
    """A plausible guidance image: the clean crop, blurred and resized to size x size."""
    blurred = cv2.GaussianBlur(clean, (0, 0), 1.5)
    return np.clip(cv2.resize(blurred, (size, size), interpolation=cv2.INTER_AREA), 0.0, 1.0)


def make_tiny_folders(root: Path, crop: int = 64, per_photo: int = 3, val_crop: int = 48,
                      ref_size: int = 48) -> dict[str, Path]:
    """Write train/{gt,ref} and val/{gt,ref} crops; returns the four folders.

    Training crops come from the top rows of each (half-size) photograph, validation crops
    from the bottom-right corner, so the two never overlap.
    """
    folders = {k: root / k.replace("_", "/") for k in ("train_gt", "train_ref", "val_gt", "val_ref")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        photo = _photo(name)
        h, w = photo.shape[:2]
        for i in range(per_photo):
            left = i * (w - crop) // max(1, per_photo - 1) if per_photo > 1 else 0
            clean = photo[:crop, left : left + crop]
            write_image(folders["train_gt"] / f"{name}_{i}.png", clean)
            write_image(folders["train_ref"] / f"{name}_{i}.png", _guidance(clean, ref_size))
        clean = photo[h - val_crop :, w - val_crop :]
        write_image(folders["val_gt"] / f"{name}.png", clean)
        write_image(folders["val_ref"] / f"{name}.png", _guidance(clean, ref_size))
    return folders


def tiny_overrides(folders: dict[str, Path], exp: Path) -> list[str]:
    """``--set`` overrides pointing tiny_cpu.yml at ``folders`` and the run folder ``exp``."""
    return [
        f"datasets.train.dataroot_gt={folders['train_gt']}",
        f"datasets.train.dataroot_ref={folders['train_ref']}",
        f"datasets.val.dataroot_gt={folders['val_gt']}",
        f"datasets.val.dataroot_ref={folders['val_ref']}",
        f"path.experiments_root={exp}",
    ]

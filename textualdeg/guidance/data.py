"""Datasets of the guidance stages: clean images (stage 1), task pairs (stage 2), LQ inputs (stage 3).

Items are dicts of float RGB tensors in [0, 1] (CHW):

* ``target``: the diffusion target, a crop resized to ``resolution`` (the conversion to
  [-1, 1] happens at the VAE boundary, in ``pipeline.encode_latents``);
* ``clip_input``: the image CLIP sees, the same crop resized to ``clip_size`` (224) with
  the bicubic, antialiased resize ``models.clip_preprocess`` uses; the CLIP mean/std
  normalisation is applied in one place only, ``models.clip_preprocess`` (called by
  ``models.clip_image_features``);
* stage 2 also ``input`` (the LQ crop at ``resolution``, for validation pictures) and
  ``task``; every item has ``path`` (and stage 3 ``stem``).

Crops follow what the authors meant (D8, D9 fixed; IDs as in
docs/official_differences.md): an image
whose short side is below ``crop_size`` gives its central square; otherwise a random
``crop_size`` window, with rows drawn from the height and columns from the width. Stage 2
samples the task uniformly per item (D10 fixed); its pairs are matched by file stem, and
denoising pairs are synthesised from the clean image with sigma ~ U(0, 50)/255, clipped
and rounded to 8 bit as the authors do. An unreadable image raises
``textualdeg.imageio.ImageReadError`` naming the file (the authors returned zeros, D12).

Randomness: an item is a pure function of (seed, epoch, index) (``__getitem__`` takes an
``(epoch, index)`` pair from :class:`EpochSampler`), so a resumed run or a run on another
number of processes sees the same data.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from textualdeg.data.degradations import add_gaussian_noise
from textualdeg.data.pairing import pair_folders
from textualdeg.data.sampling import DataPosition, EpochSampler
from textualdeg.data.transforms import make_rng
from textualdeg.imageio import image_to_tensor, list_images, read_image
from textualdeg.log import get_logger

logger = get_logger(__name__)

DENOISE = "denoise"


def resize_bicubic(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (C, H, W) [0, 1] image to (C, size, size), bicubic with antialiasing, clamped.

    The same resize ``models.clip_preprocess`` applies (PIL-like), so a 224 px item passes
    through it unchanged before normalisation.
    """
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)  # (C, size, size)


def crop_window(height: int, width: int, crop_size: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """The authors' crop, corrected (D9): (top, left, side).

    Central square of side min(H, W) when the image is smaller than ``crop_size`` on
    either side, else a uniformly random ``crop_size`` window (the rng is drawn twice
    either way, so the stream does not depend on the image size).
    """
    u_top, u_left = rng.random(2)
    if height < crop_size or width < crop_size:
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side
    return int(u_top * (height - crop_size + 1)), int(u_left * (width - crop_size + 1)), crop_size


def _check_sizes(crop_size: int, resolution: int, clip_size: int) -> None:
    for name, value in (("crop_size", crop_size), ("resolution", resolution), ("clip_size", clip_size)):
        if value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value}")
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (the VAE factor); got {resolution}")


def _key(key: int | tuple[int, int]) -> tuple[int, int]:
    """``(epoch, index)`` from a sampler pair or a plain index (epoch 0)."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return 0, int(key)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return image_to_tensor(np.ascontiguousarray(image))  # (H, W, 3) -> (3, H, W)


class CleanImageDataset(Dataset):
    """Stage-1 images: a random crop as the diffusion target and its CLIP view.

    Args:
        dataroot_gt: one folder or several; every image file in them is used (the authors
            mixed HQ and degraded sets so the mapper learns degradation words too).
        crop_size: crop side (512); images smaller than that give their central square.
        resolution: side of ``target`` (512; multiple of 8).
        clip_size: side of ``clip_input`` (224).
        seed: base seed of the crops.
    """

    def __init__(
        self,
        dataroot_gt: str | Path | Sequence[str | Path] = (),
        crop_size: int = 512,
        resolution: int = 512,
        clip_size: int = 224,
        seed: int = 0,
    ):
        super().__init__()
        _check_sizes(crop_size, resolution, clip_size)
        roots = [dataroot_gt] if isinstance(dataroot_gt, (str, Path)) else list(dataroot_gt)
        if not roots:
            raise ValueError("dataroot_gt is empty; give one folder or a list of folders")
        self.paths = [path for root in roots for path in list_images(root)]
        if not self.paths:
            raise ValueError(f"dataroot_gt={[str(r) for r in roots]} holds no images")
        self.crop_size, self.resolution, self.clip_size, self.seed = crop_size, resolution, clip_size, int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = _key(key)
        rng = make_rng(self.seed, epoch, index)
        path = self.paths[index]
        image = read_image(path)  # (H, W, 3) in [0, 1]
        top, left, side = crop_window(*image.shape[:2], self.crop_size, rng)
        crop = _to_tensor(image[top : top + side, left : left + side])  # (3, side, side)
        return {
            "target": resize_bicubic(crop, self.resolution),
            "clip_input": resize_bicubic(crop, self.clip_size),
            "path": str(path),
        }


class TaskPairDataset(Dataset):
    """Stage-2 pairs: CLIP sees the degraded crop, the diffusion target is the clean one.

    Args:
        task_list: one task name per folder pair (``denoise``, ``deblur``, ``derain``,
            ``dehaze``...); the same name may appear twice (its folders are pooled).
        dataroot_gt: clean folder per task.
        dataroot_lq: degraded folder per task (None for ``denoise``: LQ is synthesised);
            LQ and HQ are paired by file stem.
        noise_sigma_range: (low, high) of the denoising sigma, in 0..255 units.
        crop_size: crop side (the same window on LQ and HQ).
        resolution: side of ``target`` and ``input``.
        clip_size: side of ``clip_input``.
        seed: base seed of tasks, crops and noise.

    Length: the number of clean images over all tasks (as the authors'). Item ``i`` picks
    its task uniformly at random, then that task's pair ``i mod n_task``.
    """

    def __init__(
        self,
        task_list: Sequence[str] = (),
        dataroot_gt: Sequence[str | Path] = (),
        dataroot_lq: Sequence[str | Path | None] | None = None,
        noise_sigma_range: tuple[float, float] = (0.0, 50.0),
        crop_size: int = 512,
        resolution: int = 512,
        clip_size: int = 224,
        seed: int = 0,
    ):
        super().__init__()
        _check_sizes(crop_size, resolution, clip_size)
        task_list = list(task_list)
        dataroot_lq = [None] * len(task_list) if dataroot_lq is None else list(dataroot_lq)
        if not task_list or len(dataroot_gt) != len(task_list) or len(dataroot_lq) != len(task_list):
            raise ValueError(
                f"task_list ({len(task_list)}), dataroot_gt ({len(dataroot_gt)}) and dataroot_lq "
                f"({len(dataroot_lq)}) must be non-empty lists of the same length"
            )
        if len(noise_sigma_range) != 2 or not 0 <= noise_sigma_range[0] <= noise_sigma_range[1]:
            raise ValueError(f"noise_sigma_range must be [low, high] with 0 <= low <= high; got {noise_sigma_range}")
        pairs: dict[str, list[tuple[Path | None, Path]]] = {}
        for task, gt_root, lq_root in zip(task_list, dataroot_gt, dataroot_lq):
            if task == DENOISE:
                if lq_root is not None:
                    raise ValueError(
                        f"dataroot_lq for task 'denoise' must be null (noise is synthesised); got {lq_root}"
                    )
                found = [(None, path) for path in list_images(gt_root)]
            else:
                if lq_root is None:
                    raise ValueError(f"dataroot_lq for task {task!r} is null; only 'denoise' synthesises its LQ")
                found = [(triple.lq, triple.gt) for triple in pair_folders(gt_root, lq_root)]
            if not found:
                raise ValueError(f"task {task!r}: no images in {gt_root}")
            pairs.setdefault(task, []).extend(found)
        self.tasks = list(pairs)  # first-appearance order, fixed (the authors used a set, D10)
        self.pairs = pairs
        self.sigma_range = (float(noise_sigma_range[0]), float(noise_sigma_range[1]))
        self.crop_size, self.resolution, self.clip_size, self.seed = crop_size, resolution, clip_size, int(seed)

    def __len__(self) -> int:
        return sum(len(items) for items in self.pairs.values())

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = _key(key)
        rng = make_rng(self.seed, epoch, index)
        task = self.tasks[int(rng.integers(len(self.tasks)))]
        lq_path, gt_path = self.pairs[task][index % len(self.pairs[task])]
        hq = read_image(gt_path)
        lq = hq if lq_path is None else read_image(lq_path)
        if lq.shape != hq.shape:
            raise ValueError(f"LQ {lq_path} is {lq.shape[:2]} but HQ {gt_path} is {hq.shape[:2]}; pairs must match")
        top, left, side = crop_window(*hq.shape[:2], self.crop_size, rng)
        hq_crop = hq[top : top + side, left : left + side]
        lq_crop = lq[top : top + side, left : left + side]
        if lq_path is None:
            sigma = float(rng.uniform(*self.sigma_range))
            lq_crop = add_gaussian_noise(hq_crop, sigma, rng, clip=True)
            lq_crop = np.round(lq_crop * 255.0) / 255.0  # 8-bit, as the authors' tensor2uint
        lq_t, hq_t = _to_tensor(lq_crop), _to_tensor(hq_crop)
        return {
            "target": resize_bicubic(hq_t, self.resolution),
            "input": resize_bicubic(lq_t, self.resolution),
            "clip_input": resize_bicubic(lq_t, self.clip_size),
            "task": task,
            "path": str(lq_path if lq_path is not None else gt_path),
        }


class GuidanceInputDataset(Dataset):
    """Stage-3 inputs: the central square of each LQ image, resized for CLIP.

    Args:
        paths: the LQ image files.
        clip_size: side of ``clip_input`` (224).
    """

    def __init__(self, paths: Sequence[str | Path] = (), clip_size: int = 224):
        super().__init__()
        if clip_size <= 0:
            raise ValueError(f"clip_size must be a positive integer; got {clip_size}")
        self.paths = [Path(p) for p in paths]
        self.clip_size = clip_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        image = read_image(path)  # (H, W, 3)
        height, width = image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        crop = _to_tensor(image[top : top + side, left : left + side])  # (3, side, side)
        return {"clip_input": resize_bicubic(crop, self.clip_size), "stem": path.stem, "path": str(path)}


__all__ = [
    "CleanImageDataset",
    "DataPosition",
    "EpochSampler",
    "GuidanceInputDataset",
    "TaskPairDataset",
    "crop_window",
    "resize_bicubic",
]

"""On-the-fly Gaussian denoising datasets: clean images + guidance, noise added per item.

``GaussianDenoisingRefDataset`` replaces the authors' ``Dataset_GaussianDenoisingWithRef``
(the authors' option files 011-018; IDs as in docs/official_differences.md):

- training: a clean ``gt_size`` patch (reflect-padded if needed), LQ = patch + white
  Gaussian noise of sigma/255, sigma ``constant``, ``random`` in [low, high] (blind) or
  ``choice`` of a list; not clipped unless ``clip_noise`` (the authors do not clip);
- validation/test: the whole image with fixed noise of ``sigma_test``, made by
  ``textualdeg.data.degradations.add_seeded_noise`` as stage-5 evaluation makes it, so
  validation and test numbers of the same images and weights are equal. By default
  (``val_noise_seed_mode="stem"``, the evaluation default) the noise is seeded from
  (``val_noise_seed``, file stem, sigma); ``"fixed"`` is the authors' protocol,
  ``np.random.seed(val_noise_seed)`` then ``np.random.normal(0, sigma_test/255)`` for
  every image;
- the guidance image is matched to the clean image by stem (the reference for synthetic
  noise is generated from the noisy image named after its clean source; D50) and cropped
  as ``ref_crop`` says (see ``textualdeg.data.guided_base``).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from textualdeg.data.degradations import (NOISE_SEED_MODES, SIGMA_TYPES, add_gaussian_noise, add_seeded_noise,
                                           sample_sigma)
from textualdeg.data.guided_base import GuidedDatasetBase
from textualdeg.data.pairing import format_unmatched, match_ref
from textualdeg.data.transforms import pad_to_size, random_crop_box
from textualdeg.imageio import list_images
from textualdeg.log import get_logger
from textualdeg.registry import DATASET_REGISTRY

logger = get_logger(__name__)


@DATASET_REGISTRY.register()
class GaussianDenoisingRefDataset(GuidedDatasetBase):
    """Clean images with guidance; Gaussian noise synthesised on the fly.

    Args:
        dataroot_gt (str): folder of clean images.
        dataroot_ref (str | None): guidance folder, files named after the clean images.
        sigma_type (str): ``constant``, ``random`` (blind) or ``choice``.
        sigma_range (float | Sequence[float]): sigma in [0, 255] units: one value
            (constant), [low, high] (random) or a list (choice).
        sigma_test (float): sigma of the fixed validation/test noise.
        clip_noise (bool): clip noisy images to [0, 1] (False as the authors).
        val_noise_seed (int): base seed of the validation noise (0, as the authors and
            the evaluation default).
        val_noise_seed_mode (str): ``stem`` (seeded per file stem, as stage-5
            evaluation by default) or ``fixed`` (the authors' ``np.random.seed`` before
            every image); see ``textualdeg.data.degradations.seeded_noise``.
        **kwargs: the shared options of ``GuidedDatasetBase`` (``phase``, ``gt_size``,
            ``use_hflip``, ``use_rot``, ``ref_crop``, ``in_ch``, ``seed``, ...).
    """

    def __init__(
        self,
        dataroot_gt: str,
        dataroot_ref: str | None = None,
        sigma_type: str = "constant",
        sigma_range: float | Sequence[float] = (25.0,),
        sigma_test: float = 25.0,
        clip_noise: bool = False,
        val_noise_seed: int = 0,
        val_noise_seed_mode: str = "stem",
        **kwargs: Any,
    ) -> None:
        super().__init__(dataroot_ref=dataroot_ref, **kwargs)
        if sigma_type not in SIGMA_TYPES:
            raise ValueError(f"sigma_type must be one of {SIGMA_TYPES}, got {sigma_type!r}")
        sample_sigma(np.random.default_rng(0), sigma_type, sigma_range)  # validates sigma_range
        if sigma_test < 0:
            raise ValueError(f"sigma_test must be >= 0, got {sigma_test}")
        if val_noise_seed_mode not in NOISE_SEED_MODES:
            raise ValueError(f"val_noise_seed_mode must be one of {NOISE_SEED_MODES}, got {val_noise_seed_mode!r}")
        self.sigma_type, self.sigma_range, self.sigma_test = sigma_type, sigma_range, float(sigma_test)
        self.clip_noise, self.val_noise_seed, self.val_noise_seed_mode = clip_noise, val_noise_seed, val_noise_seed_mode
        gts = list_images(dataroot_gt)
        if not gts:
            raise ValueError(f"no images found in {dataroot_gt}")
        self.items, missing = match_ref([(None, gt) for gt in gts], dataroot_ref)
        if missing:
            raise ValueError(
                "unmatched files:\n" + format_unmatched(f"clean images in {dataroot_gt} without a guidance image "
                                                f"(same stem) in {dataroot_ref}", missing)
            )
        logger.info("%s: %d clean %s images from %s (sigma %s %s)", self.name, len(self.items), self.phase,
                    dataroot_gt, sigma_type, sigma_range)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        paths = self.items[index]
        gt = self._read(paths.gt)
        ref = self._read(paths.ref) if paths.ref is not None else None
        image_hw = gt.shape[:2]
        if self.phase == "train":
            gt = pad_to_size(gt, self.gt_size)
            top, left, h, w = random_crop_box(gt.shape[:2], self.gt_size, rng)
            gt = gt[top : top + h, left : left + w]
            sigma = sample_sigma(rng, self.sigma_type, self.sigma_range)
            lq = add_gaussian_noise(gt, sigma, rng, clip=self.clip_noise)
        else:
            lq = add_seeded_noise(gt, self.sigma_test, stem=paths.gt.stem, seed=self.val_noise_seed,
                                  seed_mode=self.val_noise_seed_mode, clip=self.clip_noise)
        return self._finish(lq, gt, ref, rng, paths, image_hw, lq_path=str(paths.gt))


DATASET_REGISTRY.register(GaussianDenoisingRefDataset, name="Dataset_GaussianDenoisingWithRef")


__all__ = ["GaussianDenoisingRefDataset"]

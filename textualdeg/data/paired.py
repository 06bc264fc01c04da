"""Stage-4 paired datasets: LQ / HQ / guidance folders matched by file stem.

``PairedImageRefDataset`` replaces the authors' ``Dataset_PairedImageWithRef`` and
``Dataset_PairedDehazeWithRef`` and fixes their data defects (IDs as in
docs/official_differences.md): the files are paired by stem in ``pairing.py`` (D30, D32,
D45), and reading, cropping, the guidance crop and seeding are those of
``guided_base.GuidedDatasetBase`` (D12, D24, D28); those modules' docstrings give
the details.

``PairedDualPixelRefDataset`` stacks the left and right dual-pixel views (DPDD, 16-bit)
into a 6-channel LQ.

Items are dicts ``{"lq": (C, h, w), "gt": (C, h, w), "ref": (C, hr, wr), "lq_path",
"gt_path", "ref_path"}``, float32 tensors in [0, 1]. Pairing by stem lives in
``data/pairing.py``, the shared base class in ``data/guided_base.py``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from textualdeg.data.guided_base import GuidedDatasetBase
from textualdeg.data.pairing import pair_folders
from textualdeg.log import get_logger
from textualdeg.registry import DATASET_REGISTRY

logger = get_logger(__name__)


@DATASET_REGISTRY.register()
class PairedImageRefDataset(GuidedDatasetBase):
    """LQ/GT pairs with a guidance image each, matched by stem (Dataset_PairedImageWithRef).

    Args:
        dataroot_gt (str): ground-truth folder.
        dataroot_lq (str): degraded-image folder.
        dataroot_ref (str | None): guidance folder (file stem = LQ stem, or GT stem).
        filename_tmpl (str): LQ stem = ``filename_tmpl.format(GT stem)``.
        gt_stem_separator (str | None): many-to-one naming (dehazing): GT stem = LQ stem
            up to the first separator.
        meta_info_file (str | None): restrict to the LQ stems listed in this file.
        **kwargs: the shared options of ``GuidedDatasetBase`` (``phase``, ``gt_size``,
            ``use_hflip``, ``use_rot``, ``ref_crop``, ``seed``, ...).
    """

    def __init__(
        self,
        dataroot_gt: str,
        dataroot_lq: str,
        dataroot_ref: str | None = None,
        filename_tmpl: str = "{}",
        gt_stem_separator: str | None = None,
        meta_info_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataroot_ref=dataroot_ref, **kwargs)
        self.items = pair_folders(dataroot_gt, dataroot_lq, dataroot_ref, filename_tmpl,
                                  gt_stem_separator, meta_info_file)
        logger.info("%s: %d %s items from %s", self.name, len(self.items), self.phase, dataroot_lq)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        paths = self.items[index]
        gt = self._read(paths.gt)
        lq = self._read(paths.lq)
        self._check_same_size(lq, gt, paths.lq, paths.gt)
        ref = self._read(paths.ref) if paths.ref is not None else None
        image_hw = gt.shape[:2]
        if self.phase == "train":
            lq, gt = self._crop(lq, gt, rng)
        return self._finish(lq, gt, ref, rng, paths, image_hw)


@DATASET_REGISTRY.register()
class PairedDehazeRefDataset(PairedImageRefDataset):
    """Dehazing pairs: many hazy images per clear one (Dataset_PairedDehazeWithRef).

    ``gt_stem_separator`` defaults to ``"_"``: ``0001_0.8_0.2.jpg`` pairs with ``0001.*``.
    """

    def __init__(self, dataroot_gt: str, dataroot_lq: str, gt_stem_separator: str | None = "_", **kwargs: Any) -> None:
        super().__init__(dataroot_gt=dataroot_gt, dataroot_lq=dataroot_lq, gt_stem_separator=gt_stem_separator, **kwargs)


@DATASET_REGISTRY.register()
class PairedDualPixelRefDataset(GuidedDatasetBase):
    """Dual-pixel defocus deblurring (DPDD): left and right views stacked as a 6-channel LQ.

    Replaces ``Dataset_PairedImageWithRef_DualPixel_16bit``, which read the right view
    from the left path and decoded the 16-bit files as 8-bit (D28). The LQ item is
    ``[L, R]`` (6, h, w); with ``ref_crop: dino`` the training step compares the mean of
    the two views with the reference.

    Args:
        dataroot_gt (str): all-in-focus targets.
        dataroot_lq_l (str): left views (same stems as the targets).
        dataroot_lq_r (str): right views (same stems as the targets).
        dataroot_ref (str | None): guidance images.
        **kwargs: the shared options of ``GuidedDatasetBase`` (``in_ch`` must stay 3).
    """

    def __init__(
        self,
        dataroot_gt: str,
        dataroot_lq_l: str,
        dataroot_lq_r: str,
        dataroot_ref: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataroot_ref=dataroot_ref, **kwargs)
        if self.in_ch != 3:
            raise ValueError(f"in_ch must be 3 for dual-pixel data, got {self.in_ch}")
        self.items = pair_folders(dataroot_gt, dataroot_lq_l, dataroot_ref)
        rights = {p.gt: p.lq for p in pair_folders(dataroot_gt, dataroot_lq_r)}
        self.rights = [rights[p.gt] for p in self.items]
        logger.info("%s: %d %s dual-pixel items from %s", self.name, len(self.items), self.phase, dataroot_lq_l)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        paths, right_path = self.items[index], self.rights[index]
        gt = self._read(paths.gt)
        left, right = self._read(paths.lq), self._read(right_path)
        self._check_same_size(left, gt, paths.lq, paths.gt)
        self._check_same_size(right, gt, right_path, paths.gt)
        lq = np.concatenate([left, right], axis=2)  # (H, W, 6)
        ref = self._read(paths.ref) if paths.ref is not None else None
        image_hw = gt.shape[:2]
        if self.phase == "train":
            lq, gt = self._crop(lq, gt, rng)
        return self._finish(lq, gt, ref, rng, paths, image_hw)


# The authors' type names, so their option files load (their keys are mapped by the schema).
DATASET_REGISTRY.register(PairedImageRefDataset, name="Dataset_PairedImageWithRef")
DATASET_REGISTRY.register(PairedDehazeRefDataset, name="Dataset_PairedDehazeWithRef")
DATASET_REGISTRY.register(PairedDualPixelRefDataset, name="Dataset_PairedImageWithRef_DualPixel_16bit")


__all__ = ["PairedDehazeRefDataset", "PairedDualPixelRefDataset", "PairedImageRefDataset"]

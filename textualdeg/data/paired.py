"""Stage-4 paired datasets: LQ / HQ / guidance folders matched by file stem.

``PairedImageRefDataset`` replaces the authors' ``Dataset_PairedImageWithRef`` and
``Dataset_PairedDehazeWithRef`` and fixes their data defects (IDs as in
docs/official_differences.md):

- files are matched by stem, never by position or sorted order (D32, D45); every
  unmatched file is listed in one error. ``filename_tmpl`` maps a GT stem to its LQ stem
  (``"{}x2"`` for Rain200H's ``norain-1x2``), ``gt_stem_separator`` maps many LQ images
  to one GT (RESIDE ``0001_0.8_0.2.jpg`` -> ``0001``) with extensions kept (D30);
- the guidance image is found by the LQ stem (the generator names its outputs after the
  LQ file), falling back to the GT stem;
- 8- and 16-bit files are read by ``textualdeg.imageio`` (D28); an LQ/GT size mismatch
  is an error naming both files; a corrupt file is an error naming it, or with
  ``skip_bad_images`` a logged skip to the next readable item (never zeros, D12);
- the guidance crop follows ``ref_crop``: ``dino`` picks the reference window that
  matches the LQ crop by DINOv2 patch-token similarity (the authors do this in the
  model, on the unaugmented reference, D24), ``resize`` resizes the whole reference to
  ``ref_size`` squared, ``full`` passes it untouched. The same flip/rotation as LQ/GT is
  applied to the reference (``augment_ref``) so that its layout stays aligned.

``PairedDualPixelRefDataset`` stacks the left and right dual-pixel views (DPDD, 16-bit)
into a 6-channel LQ.

Items are dicts ``{"lq": (C, h, w), "gt": (C, h, w), "ref": (C, hr, wr), "lq_path",
"gt_path", "ref_path"}``, float32 tensors in [0, 1]. Randomness comes from a numpy
Generator derived from (``seed``, epoch, index): call ``set_epoch`` each epoch and a
resumed run sees the same crops.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from textualdeg.data.transforms import (
    Dihedral,
    make_rng,
    pad_to_size,
    paired_random_crop,
    resize_image,
)
from textualdeg.imageio import ImageReadError, image_to_tensor, list_images, read_image
from textualdeg.log import get_logger
from textualdeg.registry import DATASET_REGISTRY

logger = get_logger(__name__)

REF_CROPS = ("dino", "resize", "full")
DINO_WINDOWS = ("crop", "relative")
PHASES = ("train", "val", "test")
_MAX_LISTED = 20
_SELECTORS: dict[str, Any] = {}  # one DINOv2 selector per weights path and process


@dataclass(frozen=True)
class ImageTriple:
    """Paths of one training item: LQ (None when made on the fly), GT and guidance."""

    lq: Path | None
    gt: Path
    ref: Path | None


def _by_stem(paths: Iterable[Path], folder: str | Path, role: str) -> dict[str, Path]:
    """Map stem -> path; ValueError if two files in a folder share a stem (a.png, a.jpg)."""
    table: dict[str, Path] = {}
    clashes = []
    for path in paths:
        if path.stem in table:
            clashes.append(f"{table[path.stem].name} / {path.name}")
        table[path.stem] = path
    if clashes:
        raise ValueError(f"{role} folder {folder} has files sharing a stem: {', '.join(clashes[:_MAX_LISTED])}")
    return table


def format_unmatched(title: str, names: Sequence[str]) -> str:
    """One line of an unmatched-files report (first names and the count)."""
    shown = ", ".join(names[:_MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")
    return f"  {title} ({len(names)}): {shown}"


def _read_meta_info(meta_info_file: str | Path) -> set[str]:
    """Stems listed in a BasicSR/authors ``meta_info`` file (first token of each line)."""
    names = set()
    for line in Path(meta_info_file).read_text().splitlines():
        if line.strip():
            names.add(Path(line.split()[0]).stem)
    return names


def match_ref(
    triples: Sequence[tuple[Path | None, Path]],
    dataroot_ref: str | Path | None,
) -> tuple[list[ImageTriple], list[str]]:
    """Attach the guidance image to each (lq, gt): by LQ stem, else by GT stem.

    Returns:
        The triples, and the names of the items that have no guidance image.
    """
    if dataroot_ref is None:
        return [ImageTriple(lq, gt, None) for lq, gt in triples], []
    refs = _by_stem(list_images(dataroot_ref), dataroot_ref, "guidance")
    out, missing = [], []
    for lq, gt in triples:
        ref = (refs.get(lq.stem) if lq is not None else None) or refs.get(gt.stem)
        if ref is None:
            missing.append((lq or gt).name)
        out.append(ImageTriple(lq, gt, ref))
    return out, missing


def pair_folders(
    dataroot_gt: str | Path,
    dataroot_lq: str | Path,
    dataroot_ref: str | Path | None = None,
    filename_tmpl: str = "{}",
    gt_stem_separator: str | None = None,
    meta_info_file: str | Path | None = None,
) -> list[ImageTriple]:
    """Match LQ, GT and guidance files by stem.

    Args:
        dataroot_gt: folder of ground-truth images.
        dataroot_lq: folder of degraded images.
        dataroot_ref: folder of guidance images, or None.
        filename_tmpl: LQ stem = ``filename_tmpl.format(GT stem)`` (BasicSR's key).
        gt_stem_separator: if set, GT stem = LQ stem up to the first separator and
            many LQ files may share one GT (dehazing); GT files without LQ are allowed.
        meta_info_file: if set, only the LQ stems listed there are used.

    Returns:
        Triples sorted by LQ path.

    Raises:
        ValueError: listing every LQ without GT, GT without LQ (one-to-one mode) and LQ
            without guidance, with the folders searched.
    """
    if "{}" not in filename_tmpl:
        raise ValueError(f"filename_tmpl must contain '{{}}', got {filename_tmpl!r}")
    gts = _by_stem(list_images(dataroot_gt), dataroot_gt, "GT")
    lqs = list_images(dataroot_lq)
    if meta_info_file is not None:
        wanted = _read_meta_info(meta_info_file)
        lqs = [p for p in lqs if p.stem in wanted]
    _by_stem(lqs, dataroot_lq, "LQ")
    if gt_stem_separator is not None:
        gt_of = {p.stem: p.stem.split(gt_stem_separator)[0] for p in lqs}
    else:
        lq_to_gt = {filename_tmpl.format(stem): stem for stem in gts}
        gt_of = {p.stem: lq_to_gt.get(p.stem) for p in lqs}
    pairs, lq_alone = [], []
    for lq in lqs:
        gt_stem = gt_of[lq.stem]
        if gt_stem is None or gt_stem not in gts:
            lq_alone.append(lq.name)
        else:
            pairs.append((lq, gts[gt_stem]))
    used = {gt.stem for _, gt in pairs}
    gt_alone = [] if gt_stem_separator is not None else [p.name for s, p in sorted(gts.items()) if s not in used]
    triples, ref_missing = match_ref(pairs, dataroot_ref)
    problems = []
    if lq_alone:
        problems.append(format_unmatched(f"LQ files in {dataroot_lq} without a GT file in {dataroot_gt}", lq_alone))
    if gt_alone:
        problems.append(format_unmatched(f"GT files in {dataroot_gt} without an LQ file in {dataroot_lq}", gt_alone))
    if ref_missing:
        problems.append(format_unmatched(f"LQ files without a guidance image (same stem) in {dataroot_ref}", ref_missing))
    if problems:
        hint = f" (LQ stem = filename_tmpl.format(GT stem), filename_tmpl={filename_tmpl!r})"
        raise ValueError("unmatched files" + hint + ":\n" + "\n".join(problems))
    if not triples:
        raise ValueError(f"no images found in {dataroot_lq} / {dataroot_gt}")
    return triples


def _dino_selector(pretrain_dino: str) -> Any:
    """The process-wide DINOv2 window selector for ``pretrain_dino`` (loaded once, CPU)."""
    if pretrain_dino not in _SELECTORS:
        from textualdeg.restoration.dino_window import DinoWindowSelector

        _SELECTORS[pretrain_dino] = DinoWindowSelector.from_pretrained(pretrain_dino, device="cpu")
    return _SELECTORS[pretrain_dino]


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
        selector = self._selector if self._selector is not None else _dino_selector(self.pretrain_dino)
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
    ``[L, R]`` (6, h, w); DINOv2 compares the mean of the two views with the reference.

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

    def _guide_view(self, lq: np.ndarray) -> np.ndarray:
        return 0.5 * (lq[:, :, :3] + lq[:, :, 3:])  # mean of the left and right views (h, w, 3)

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


__all__ = [
    "DINO_WINDOWS",
    "GuidedDatasetBase",
    "ImageTriple",
    "PairedDehazeRefDataset",
    "PairedDualPixelRefDataset",
    "PairedImageRefDataset",
    "REF_CROPS",
    "format_unmatched",
    "match_ref",
    "pair_folders",
]

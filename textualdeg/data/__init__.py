"""Datasets, degradations and paired transforms for every stage of textualdeg.

The stage-4 datasets register themselves in ``DATASET_REGISTRY`` through the explicit
imports below (no import scanning); each is also registered under the authors' type
name so their option files load. ``build_dataset`` builds one from an option-file
dataset section, dropping the loader keys BasicSR keeps beside the dataset keys.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from typing import Any, Mapping

from textualdeg.data.guided_base import DINO_KEYS, collate_guided
from textualdeg.data.mixture import AllInOneRefDataset, MixtureDataset
from textualdeg.data.noise import GaussianDenoisingRefDataset
from textualdeg.data.paired import PairedDehazeRefDataset, PairedDualPixelRefDataset, PairedImageRefDataset
from textualdeg.data.pairing import pair_folders
from textualdeg.data.progressive import ProgressiveSchedule, crop_batch
from textualdeg.registry import DATASET_REGISTRY

# Keys of a BasicSR dataset section that configure the loader or the training loop,
# not the dataset.
LOADER_KEYS = frozenset({
    "batch_size_per_gpu", "num_worker_per_gpu", "use_shuffle", "dataset_enlarge_ratio",
    "prefetch_mode", "pin_memory", "persistent_workers", "mini_batch_sizes", "iters", "gt_sizes",
    "instruction",  # read by the training loop for text-prompted networks (textualdeg/data/instructions.py)
})


def build_dataset(spec: Mapping[str, Any], **extra: Any) -> Any:
    """Build the dataset ``spec['type']`` from an option-file section.

    Args:
        spec: the dataset section (``type`` plus constructor keys; the loader keys in
            ``LOADER_KEYS`` are dropped).
        **extra: keys added or overridden, e.g. ``phase="train"``, ``seed=100``.

    Returns:
        The dataset instance.
    """
    return DATASET_REGISTRY.build({k: v for k, v in spec.items() if k not in LOADER_KEYS}, **extra)


__all__ = [
    "AllInOneRefDataset",
    "DATASET_REGISTRY",
    "DINO_KEYS",
    "GaussianDenoisingRefDataset",
    "LOADER_KEYS",
    "MixtureDataset",
    "PairedDehazeRefDataset",
    "PairedDualPixelRefDataset",
    "PairedImageRefDataset",
    "ProgressiveSchedule",
    "build_dataset",
    "collate_guided",
    "crop_batch",
    "pair_folders",
]

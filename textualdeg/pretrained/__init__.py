"""Frozen third-party models loaded from local folders or checkpoint files.

The lowest layer of the package: ``data/``, ``restoration/`` and ``guidance/`` may import
from here, never the other way. ``dinov2`` loads DINOv2 (transformers folder or torch-hub
file) and embeds images as patch tokens; the models are built on the training device by
the training step, never in a data-loader worker. Heavy libraries (transformers) are
imported inside the loading functions only.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from textualdeg.pretrained.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoFeatureExtractor,
    convert_hub_state_dict,
    dinov2_config_from_hub,
    load_dinov2,
    save_tiny_dinov2,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DinoFeatureExtractor",
    "convert_hub_state_dict",
    "dinov2_config_from_hub",
    "load_dinov2",
    "save_tiny_dinov2",
]

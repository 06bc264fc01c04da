"""A tiny random DA-CLIP in the ``save_daclip`` folder format, for CPU tests and the demo.

``TINY_DACLIP_CONFIG`` is an open_clip model config (the ViT-B-32 layout in miniature:
224 px input, patch 32, class-token pooling) whose text tower keeps the real vocabulary
size and context length, so the real CLIP BPE tokenizer (``textualdeg.daclip.tokenize``)
works with it. ``save_tiny_daclip`` writes one from a fixed seed; it loads back with
``textualdeg.daclip.load_daclip``. Its zero modules are given small random weights so the
controller's hiddens reach the frozen path (a freshly initialised DA-CLIP's content
embedding would equal plain CLIP's).

Paper: "Controlling Vision-Language Models for Multi-Task Image Restoration" (Luo et al.,
ICLR 2024), arXiv:2310.01018. See docs/daclip.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from textualdeg.daclip.checkpoint import save_daclip
from textualdeg.daclip.model import DEGRADATIONS, build_daclip

# Configs are data, kept apart from the code that writes them.
TINY_DACLIP_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_daclip(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random DA-CLIP to ``folder`` (``daclip.safetensors`` + ``daclip_config.json``).

    Deterministic for a seed; the global RNG state is left alone. The config lists the
    official ten degradation names.

    Returns:
        The folder.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_daclip(TINY_DACLIP_CONFIG)
        with torch.no_grad():
            for module in model.zero_modules:
                module.weight.normal_(0.0, 0.02)
                module.bias.normal_(0.0, 0.02)
    return save_daclip(model, folder, degradations=DEGRADATIONS)

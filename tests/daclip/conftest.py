"""Shared DA-CLIP fixtures: the official-parity reference file and a tiny DA-CLIP folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "reference"
PARITY_FILE = REFERENCE / "daclip_tiny_parity.safetensors"
KEYS_FILE = REFERENCE / "daclip_vit_b_32.keys.tsv"

# A small DA-CLIP config (own vocabulary of 500 ids, so random models stay light).
SMALL_CONFIG: dict = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def parity() -> dict:
    """The official DaCLIP's state_dict, inputs and outputs (see docs/daclip.md)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(PARITY_FILE), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(PARITY_FILE))
    return {
        "config": json.loads(metadata["config"]),
        "state_dict": {k[len("sd."):]: v for k, v in tensors.items() if k.startswith("sd.")},
        "tensors": tensors,
    }


@pytest.fixture(scope="session")
def tiny_daclip(tmp_path_factory) -> Path:
    """A folder written by save_tiny_daclip (real vocabulary, 224 px input)."""
    from textualdeg.daclip.tiny import save_tiny_daclip

    return save_tiny_daclip(tmp_path_factory.mktemp("daclip") / "daclip", seed=3)


@pytest.fixture()
def small_daclip():
    """A random DA-CLIP of SMALL_CONFIG (seeded), in eval mode."""
    from textualdeg.daclip.model import build_daclip

    torch.manual_seed(0)
    return build_daclip(SMALL_CONFIG).eval()

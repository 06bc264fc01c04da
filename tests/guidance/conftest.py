"""Fixtures for the guidance tests: tiny models written once per session by ``make_tiny``.

Every test loads them back through the loaders users run (``load_stable_diffusion``,
``load_clip_vision``), never from a hub. Paper: arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from textualdeg.guidance.models import load_clip_vision, load_stable_diffusion
from textualdeg.guidance.tiny import make_tiny


@pytest.fixture(autouse=True)
def _one_thread():
    """Run the tiny models on one thread: they gain nothing from more, and on a shared 2-core
    machine two threads per process thrash (measured: a tiny UNet call 1.4 s vs 0.1 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | None]:
    """Paths written by ``make_tiny`` (stable_diffusion, clip_vision, open_clip, dinov2)."""
    return make_tiny(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture
def sd(tiny_paths):
    """A fresh tiny Stable Diffusion (fresh because tests install processors on its UNet)."""
    return load_stable_diffusion(tiny_paths["stable_diffusion"])


@pytest.fixture(scope="session")
def clip_vision(tiny_paths):
    """The tiny CLIP image encoder, loaded from its transformers folder (read-only use)."""
    return load_clip_vision(tiny_paths["clip_vision"])


def _photo(name: str, size: tuple[int, int] | None) -> torch.Tensor:
    from skimage import data
    from skimage.transform import resize

    image = getattr(data, name)().astype(np.float32) / 255.0  # (H, W, 3) in [0, 1]
    if size is not None:
        image = resize(image, size, anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (3, H, W)


@pytest.fixture(scope="session")
def photos() -> torch.Tensor:
    """Two real photographs (astronaut, chelsea) as (2, 3, 96, 128) float RGB in [0, 1]."""
    return torch.stack([_photo("astronaut", (96, 128)), _photo("chelsea", (96, 128))])

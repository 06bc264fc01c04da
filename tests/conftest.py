"""Shared pytest setup: CPU thread budget and small photograph fixtures.

The suite runs on 2-core machines split over two pytest-xdist workers (``make test``);
each worker uses one intra-op thread: with two workers (and the two-process tests'
children) on two cores, multi-threaded kernels only fight over the cores and tiny
models run several times slower.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def photo_rgb() -> np.ndarray:
    """The scikit-image astronaut photograph as float32 HWC RGB in [0, 1]."""
    from skimage import data

    return data.astronaut().astype(np.float32) / 255.0

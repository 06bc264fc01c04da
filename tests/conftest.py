"""Shared pytest setup: CPU thread budget and small photograph fixtures.

The suite runs on 2-core machines, possibly split over pytest-xdist workers; each
worker gets an equal share of the cores so workers do not oversubscribe them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(scope="session")
def photo_rgb() -> np.ndarray:
    """The scikit-image astronaut photograph as float32 HWC RGB in [0, 1]."""
    from skimage import data

    return data.astronaut().astype(np.float32) / 255.0

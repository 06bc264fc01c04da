"""Fixtures for the metric tests: noisy 128x128 crops of scikit-image photographs and basicsr."""

from __future__ import annotations

import numpy as np
import pytest

PHOTOS = ("astronaut", "coffee", "chelsea")


def noisy_pair(name: str, sigma: float = 15.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pred, target): float64 HWC RGB in [0, 1]; pred = target + seeded Gaussian noise, clipped."""
    from skimage import data

    image = getattr(data, name)()
    h, w = image.shape[:2]
    top, left = (h - 128) // 2, (w - 128) // 2
    target = image[top:top + 128, left:left + 128].astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    pred = np.clip(target + rng.normal(0.0, sigma / 255.0, target.shape), 0.0, 1.0)
    return pred, target


@pytest.fixture(scope="session")
def make_pair():
    """The ``noisy_pair`` function, for tests that need other sigmas or seeds."""
    return noisy_pair


@pytest.fixture(params=PHOTOS)
def pair(request) -> tuple[np.ndarray, np.ndarray]:
    """A noisy/clean pair of one photograph (sigma 15)."""
    return noisy_pair(request.param)


@pytest.fixture(scope="session")
def basicsr_metrics():
    """basicsr.metrics, imported once per session through the compatibility module (~5 s)."""
    from textualdeg.basicsr_compat import import_basicsr

    import_basicsr()
    from basicsr import metrics

    return metrics

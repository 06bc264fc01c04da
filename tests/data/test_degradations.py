"""Synthetic degradations change photographs in the expected direction, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from textualdeg.data.degradations import (
    add_gaussian_noise,
    add_seeded_noise,
    degrade,
    line_kernel,
    motion_blur,
    sample_sigma,
    seeded_noise,
    synthetic_haze,
    synthetic_rain,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skdata.astronaut()[::4, ::4].astype(np.float32) / 255.0  # 128 x 128


def _gradient_energy(image: np.ndarray) -> float:
    return float(np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean())


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_gaussian_noise_level_and_clipping(photo):
    noisy = add_gaussian_noise(photo, 25.0, _rng())
    assert noisy.dtype == np.float32 and noisy.shape == photo.shape
    assert float((noisy - photo).std()) == pytest.approx(25 / 255, rel=0.03)
    assert noisy.min() < 0 or noisy.max() > 1  # unclipped by default
    clipped = add_gaussian_noise(photo, 25.0, _rng(), clip=True)
    assert 0 <= clipped.min() and clipped.max() <= 1
    np.testing.assert_array_equal(add_gaussian_noise(photo, 25.0, _rng(1)), add_gaussian_noise(photo, 25.0, _rng(1)))


def test_sigma_sampling():
    assert sample_sigma(_rng(), "constant", 15) == 15
    draws = [sample_sigma(_rng(i), "random", [0, 50]) for i in range(50)]
    assert 0 <= min(draws) and max(draws) <= 50 and max(draws) - min(draws) > 20
    assert {sample_sigma(_rng(i), "choice", [15, 25, 50]) for i in range(50)} == {15, 25, 50}
    with pytest.raises(ValueError, match="sigma_type"):
        sample_sigma(_rng(), "blind", 15)


def test_line_kernel_is_a_normalised_line():
    horizontal = line_kernel(15, 0.0, 9)
    assert horizontal.sum() == pytest.approx(1.0, abs=1e-5)
    rows, cols = np.nonzero(horizontal > 1e-6)
    assert set(rows) == {7} and cols.min() == 3 and cols.max() == 11
    vertical = line_kernel(15, 90.0, 9)
    np.testing.assert_allclose(vertical, horizontal.T, atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        line_kernel(4, 0.0)


def test_motion_blur_smooths_along_a_direction(photo):
    blurred = motion_blur(photo, _rng(), kernel_size=15, length=13, angle=0.0)
    assert _gradient_energy(blurred) < 0.7 * _gradient_energy(photo)
    assert float(blurred.mean()) == pytest.approx(float(photo.mean()), abs=0.01)
    # horizontal motion removes horizontal detail much more than vertical detail
    dx = np.abs(np.diff(blurred, axis=1)).mean() / np.abs(np.diff(photo, axis=1)).mean()
    dy = np.abs(np.diff(blurred, axis=0)).mean() / np.abs(np.diff(photo, axis=0)).mean()
    assert dx < 0.6 * dy


def test_haze_brightens_and_lowers_contrast(photo):
    hazy = synthetic_haze(photo, _rng())
    assert float(hazy.mean()) > float(photo.mean()) + 0.1
    assert float(hazy.std()) < 0.8 * float(photo.std())
    assert 0 <= hazy.min() and hazy.max() <= 1
    # a fixed depth map: far pixels are hazier (closer to the airlight) than near ones
    depth = np.zeros(photo.shape[:2], np.float32)
    depth[:64] = 1.0
    fixed = synthetic_haze(photo, _rng(), beta=2.0, airlight=1.0, depth=depth)
    assert float((1 - fixed[:64]).mean()) < float((1 - fixed[64:]).mean())
    np.testing.assert_allclose(fixed[64:], photo[64:], atol=1e-6)  # depth 0: no haze


def test_rain_adds_bright_oriented_streaks(photo):
    rainy = synthetic_rain(photo, _rng(), angle=0.0)
    assert np.all(rainy >= photo - 1e-6)  # screen blending only brightens
    diff = (rainy - photo).mean(axis=2)
    assert 0.002 < float((diff > 0.05).mean()) < 0.5
    # vertical streaks: the added layer varies much more across columns than along them
    assert np.abs(np.diff(diff, axis=1)).mean() > 1.5 * np.abs(np.diff(diff, axis=0)).mean()


@pytest.mark.parametrize("kind", ["noise", "blur", "haze", "rain"])
def test_degrade_dispatch_is_reproducible(photo, kind):
    first, second = degrade(photo, kind, _rng(4)), degrade(photo, kind, _rng(4))
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and first.shape == photo.shape
    assert np.abs(first - photo).mean() > 0.005
    assert not np.shares_memory(first, photo)


def test_degrade_rejects_unknown_kinds(photo):
    with pytest.raises(ValueError, match="kind"):
        degrade(photo, "snow", _rng())
    with pytest.raises(ValueError, match="float"):
        degrade((photo * 255).astype(np.uint8), "haze", _rng())


def test_seeded_test_noise_does_not_depend_on_file_order_or_set(photo):
    first = add_seeded_noise(photo, 25, stem="coffee")
    assert first.dtype == np.float32 and first.shape == photo.shape
    assert np.array_equal(first, add_seeded_noise(photo, 25, stem="coffee"))
    assert not np.array_equal(first, add_seeded_noise(photo, 25, stem="astronaut"))  # per-image noise
    assert not np.array_equal(first, add_seeded_noise(photo, 15, stem="coffee"))
    assert abs(np.std(first - photo) * 255 - 25) < 1.0
    # the authors' protocol: np.random.seed(0) then np.random.normal(0, sigma/255) for every image
    np.random.seed(0)
    expected = (photo.astype(np.float64) + np.random.normal(0, 25 / 255, photo.shape)).astype(np.float32)
    assert np.array_equal(add_seeded_noise(photo, 25, stem="anything", seed_mode="fixed"), expected)
    bgr = add_seeded_noise(photo, 25, seed_mode="fixed", channel_order="bgr")
    np.testing.assert_allclose(bgr - photo, (expected - photo)[:, :, ::-1], atol=1e-6)
    quantized = add_seeded_noise(photo, 25, stem="coffee", quantize=True)
    assert quantized.min() >= 0 and quantized.max() <= 1
    assert np.allclose(quantized * 255, np.round(quantized * 255), atol=1e-4)
    with pytest.raises(ValueError, match="seed_mode"):
        seeded_noise(photo.shape, 25, seed_mode="order")

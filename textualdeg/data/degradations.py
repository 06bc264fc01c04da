"""Synthetic degradations: Gaussian noise, motion blur, haze and rain streaks.

These make on-the-fly training pairs (denoising) and the demo dataset. Every
function takes a float32 (H, W, C) image in [0, 1] and a ``numpy.random.Generator``
(``add_seeded_noise``: a seed and the file stem) and returns a new float32 (H, W, C) image;
the input is never modified. Randomness comes only from the generator, so a degradation is
reproducible from its seed.

- ``add_gaussian_noise``: the authors' denoising noise, ``x + N(0, (sigma/255)^2)``, not
  clipped unless asked (Dataset_GaussianDenoisingWithRef adds it unclipped).
- ``add_seeded_noise``: the same noise for validation and test sets, fixed per image:
  seeded from (seed, file stem, sigma), or ``np.random.seed(seed)`` before every image as
  the authors' scripts. Validation (``GaussianDenoisingRefDataset``) and stage-5
  evaluation both call it, so they score the same noisy images.
- ``motion_blur``: convolution with an anti-aliased straight line kernel of random angle
  and length (camera shake along one direction).
- ``synthetic_haze``: the atmospheric scattering model ``I = J t + A (1 - t)`` with
  ``t = exp(-beta d)`` and a smooth depth proxy ``d`` (far at a random vanishing point in
  the upper half, near at the bottom), as RESIDE synthesises haze from depth.
- ``synthetic_rain``: sparse seeds smeared by a line kernel into streaks of one
  direction, screen-blended onto the image (the Rain100L-style synthesis).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import cv2
import numpy as np

from textualdeg.data.transforms import as_hwc

SIGMA_TYPES = ("constant", "random", "choice")
#: How the noise of a validation/test image is seeded (see :func:`seeded_noise`).
NOISE_SEED_MODES = ("stem", "fixed")
#: Layout of the noise array: ``bgr`` lays it out as the authors' scripts drew it on cv2 arrays.
NOISE_CHANNEL_ORDERS = ("rgb", "bgr")


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as float32 (H, W, C); ValueError for other shapes."""
    image = as_hwc(np.asarray(image))
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1], got dtype {image.dtype}")
    return image.astype(np.float32, copy=False)


def _uniform(rng: np.random.Generator, value: float | Sequence[float]) -> float:
    """A fixed value, or a uniform draw from a (low, high) pair."""
    if isinstance(value, (int, float)):
        return float(value)
    low, high = value
    return float(rng.uniform(low, high))


def sample_sigma(
    rng: np.random.Generator, sigma_type: str = "constant", sigma_range: float | Sequence[float] = (25.0,)
) -> float:
    """Draw a noise level (in [0, 255] units) as the authors' denoising datasets do.

    Args:
        rng (np.random.Generator): source of randomness.
        sigma_type (str): ``constant`` (the first value), ``random`` (uniform in
            [low, high], the blind setting) or ``choice`` (one of the listed values).
        sigma_range (float | Sequence[float]): one value, a (low, high) pair, or a list.

    Returns:
        sigma as a float.
    """
    values = [float(sigma_range)] if isinstance(sigma_range, (int, float)) else [float(v) for v in sigma_range]
    if not values:
        raise ValueError("sample_sigma: sigma_range is empty")
    if sigma_type == "constant":
        return values[0]
    if sigma_type == "random":
        if len(values) != 2 or values[0] > values[1]:
            raise ValueError(f"sigma_range must be [low, high] for sigma_type 'random', got {values}")
        return float(rng.uniform(values[0], values[1]))
    if sigma_type == "choice":
        return float(values[int(rng.integers(len(values)))])
    raise ValueError(f"sigma_type must be one of {SIGMA_TYPES}, got {sigma_type!r}")


def add_gaussian_noise(
    image: np.ndarray, sigma: float, rng: np.random.Generator, clip: bool = False
) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma / 255``.

    Args:
        image (np.ndarray): (H, W, C) float in [0, 1].
        sigma (float): noise level in [0, 255] units (15, 25, 50 in the benchmarks).
        rng (np.random.Generator): source of the noise.
        clip (bool): clip the result to [0, 1] (the authors do not).

    Returns:
        (H, W, C) float32.
    """
    image = _check_image(image)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    noisy = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(noisy, 0.0, 1.0) if clip else noisy


def seeded_noise(shape: tuple[int, int, int], sigma: float, stem: str = "", seed: int = 0,
                 seed_mode: str = "stem", channel_order: str = "rgb") -> np.ndarray:
    """The fixed noise of one validation/test image, independent of the order of the files.

    Args:
        shape (tuple[int, int, int]): (H, W, C) of the clean image.
        sigma (float): standard deviation in [0, 255] units.
        stem (str): file stem of the clean image (``seed_mode="stem"``).
        seed (int): base seed.
        seed_mode (str): ``stem``: a generator seeded from (``seed``, CRC-32 of ``stem``,
            ``sigma``), so every image gets its own noise, the same in every run;
            ``fixed``: ``np.random.seed(seed)`` before every image, as the authors' and
            Restormer's test scripts (every image of one size gets the same noise).
        channel_order (str): ``rgb``, or ``bgr`` to draw the noise for a BGR array and
            apply it to the RGB channels, as the authors' cv2 scripts did.

    Returns:
        float64 (H, W, C) array of N(0, (sigma/255)^2) values.
    """
    if seed_mode not in NOISE_SEED_MODES:
        raise ValueError(f"seed_mode must be one of {NOISE_SEED_MODES}, got {seed_mode!r}")
    if channel_order not in NOISE_CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {NOISE_CHANNEL_ORDERS}, got {channel_order!r}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    h, w, c = shape
    if seed_mode == "fixed":
        values = np.random.RandomState(seed).normal(0.0, sigma / 255.0, (h, w, c))  # = np.random.seed(seed); normal
    else:
        entropy = [int(seed), zlib.crc32(stem.encode("utf-8")), int(round(sigma * 1000))]
        values = np.random.default_rng(np.random.SeedSequence(entropy)).normal(0.0, sigma / 255.0, (h, w, c))
    if channel_order == "bgr":
        values = values[:, :, ::-1]  # noise drawn for a BGR array, applied to RGB channels
    return values


def add_seeded_noise(image: np.ndarray, sigma: float, stem: str = "", seed: int = 0, seed_mode: str = "stem",
                     channel_order: str = "rgb", clip: bool = False, quantize: bool = False) -> np.ndarray:
    """Noisy validation/test image: ``image + seeded_noise(...)`` in float64.

    Args:
        image (np.ndarray): (H, W, C) clean image, float in [0, 1].
        sigma, stem, seed, seed_mode, channel_order: see :func:`seeded_noise`.
        clip (bool): clip the result to [0, 1] (the authors and Restormer do not).
        quantize (bool): round the result to 8 bit (implies ``clip``), as uint8 pipelines
            such as PromptIR's.

    Returns:
        (H, W, C) float32; outside [0, 1] unless ``clip`` or ``quantize``.
    """
    image = _check_image(image)
    noisy = image.astype(np.float64) + seeded_noise(image.shape, sigma, stem, seed, seed_mode, channel_order)
    if clip or quantize:
        noisy = np.clip(noisy, 0.0, 1.0)
    if quantize:
        noisy = np.round(noisy * 255.0) / 255.0
    return noisy.astype(np.float32)


def line_kernel(size: int, angle: float, length: float | None = None) -> np.ndarray:
    """An anti-aliased straight line through the centre of a ``size`` x ``size`` kernel.

    Args:
        size (int): odd kernel side in pixels (>= 3).
        angle (float): direction in degrees, counter-clockwise from the x axis.
        length (float | None): line length in pixels (default ``size``).

    Returns:
        (size, size) float32 kernel summing to 1.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"line_kernel: size must be odd and >= 3, got {size}")
    length = float(size if length is None else length)
    length = min(max(length, 1.0), float(size))
    centre = (size - 1) / 2.0
    t = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, num=max(2, int(4 * length)))
    theta = math.radians(angle)
    xs = centre + t * math.cos(theta)
    ys = centre - t * math.sin(theta)  # image rows grow downwards
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    kernel = np.zeros((size, size), np.float64)
    # bilinear splat of every sample onto its four neighbours
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
        np.add.at(kernel, (yy[ok], xx[ok]), weight[ok])
    return (kernel / kernel.sum()).astype(np.float32)


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of an (H, W, C) image with a 2-D kernel (reflect border)."""
    out = cv2.filter2D(np.ascontiguousarray(image), -1, kernel, borderType=cv2.BORDER_REFLECT)
    return out.reshape(image.shape)  # cv2 drops a single channel axis


def motion_blur(
    image: np.ndarray,
    rng: np.random.Generator,
    kernel_size: int = 15,
    length: float | Sequence[float] = (7.0, 15.0),
    angle: float | Sequence[float] = (0.0, 180.0),
) -> np.ndarray:
    """Blur with a random straight-line kernel (uniform camera motion).

    Args:
        image (np.ndarray): (H, W, C) float in [0, 1].
        rng (np.random.Generator): source of the angle and length.
        kernel_size (int): odd kernel side in pixels.
        length (float | Sequence[float]): line length, fixed or a (low, high) range.
        angle (float | Sequence[float]): direction in degrees, fixed or a (low, high) range.

    Returns:
        (H, W, C) float32 in [0, 1].
    """
    image = _check_image(image)
    kernel = line_kernel(kernel_size, _uniform(rng, angle), _uniform(rng, length))
    return np.clip(_filter(image, kernel), 0.0, 1.0)


def depth_proxy(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth synthetic depth map in [0, 1] (1 = far).

    Far at a random vanishing point in the upper half of the frame and near at the
    bottom: a blend of the distance to that point and a vertical ramp.

    Returns:
        (H, W) float32.
    """
    vy = rng.uniform(0.0, 0.5) * (height - 1)
    vx = rng.uniform(0.2, 0.8) * (width - 1)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    dist = np.sqrt((ys - vy) ** 2 + (xs - vx) ** 2)  # (H, W)
    radial = 1.0 - dist / dist.max()
    ramp = np.broadcast_to(1.0 - ys / max(height - 1, 1), (height, width))
    depth = 0.5 * radial + 0.5 * ramp
    depth = (depth - depth.min()) / max(float(depth.max() - depth.min()), 1e-6)
    return depth.astype(np.float32)


def synthetic_haze(
    image: np.ndarray,
    rng: np.random.Generator,
    beta: float | Sequence[float] = (0.8, 1.6),
    airlight: float | Sequence[float] = (0.75, 0.95),
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """Haze by the atmospheric scattering model ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

    Args:
        image (np.ndarray): clean (H, W, C) float in [0, 1] (J).
        rng (np.random.Generator): source of beta, the airlight and the depth proxy.
        beta (float | Sequence[float]): scattering coefficient, fixed or (low, high).
        airlight (float | Sequence[float]): global atmospheric light A, fixed or (low, high).
        depth (np.ndarray | None): (H, W) depth in [0, 1]; default ``depth_proxy``.

    Returns:
        (H, W, C) float32 in [0, 1]; brighter and of lower contrast than the input.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    beta_value, air = _uniform(rng, beta), _uniform(rng, airlight)
    if depth is None:
        depth = depth_proxy(h, w, rng)
    elif depth.shape != (h, w):
        raise ValueError(f"depth must have shape {(h, w)}, got {depth.shape}")
    transmission = np.exp(-beta_value * depth.astype(np.float32))[:, :, None]  # (H, W, 1)
    hazy = image * transmission + np.float32(air) * (1.0 - transmission)
    return np.clip(hazy, 0.0, 1.0).astype(np.float32)


def synthetic_rain(
    image: np.ndarray,
    rng: np.random.Generator,
    density: float | Sequence[float] = (0.004, 0.012),
    length: float | Sequence[float] = (11.0, 21.0),
    angle: float | Sequence[float] = (-20.0, 20.0),
    brightness: float | Sequence[float] = (0.6, 0.9),
) -> np.ndarray:
    """Rain streaks of one direction, screen-blended onto the image.

    Sparse random seeds (``density`` = fraction of pixels) are smeared by a line kernel of
    the given length, tilted by ``angle`` degrees from vertical, normalised to peak at
    ``brightness`` and combined with ``1 - (1 - J)(1 - S)``, which only brightens.

    Args:
        image (np.ndarray): clean (H, W, C) float in [0, 1].
        rng (np.random.Generator): source of every random choice.
        density (float | Sequence[float]): seed density, fixed or (low, high).
        length (float | Sequence[float]): streak length in pixels, fixed or (low, high).
        angle (float | Sequence[float]): tilt from vertical in degrees, fixed or (low, high).
        brightness (float | Sequence[float]): streak intensity in (0, 1], fixed or (low, high).

    Returns:
        (H, W, C) float32 in [0, 1].
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    density_value, length_value = _uniform(rng, density), _uniform(rng, length)
    angle_value, peak = _uniform(rng, angle), _uniform(rng, brightness)
    seeds = (rng.random((h, w), dtype=np.float32) < density_value).astype(np.float32)
    seeds *= rng.uniform(0.5, 1.0, size=(h, w)).astype(np.float32)  # streaks of unequal strength
    size = int(2 * math.ceil(length_value / 2) + 1)
    kernel = line_kernel(size, 90.0 + angle_value, length_value) * length_value  # peak ~1 per seed
    streaks = cv2.filter2D(seeds, -1, kernel, borderType=cv2.BORDER_REFLECT)
    streaks = cv2.GaussianBlur(streaks, (3, 3), 0.5)  # soften the one-pixel width
    streaks = np.clip(streaks, 0.0, 1.0) * np.float32(peak)
    rainy = 1.0 - (1.0 - image) * (1.0 - streaks[:, :, None])  # streaks (H, W) -> (H, W, 1)
    return np.clip(rainy, 0.0, 1.0).astype(np.float32)


DEGRADATIONS: dict[str, Callable[..., np.ndarray]] = {
    "noise": lambda image, rng, sigma=25.0, clip=True: add_gaussian_noise(image, sigma, rng, clip=clip),
    "blur": motion_blur,
    "haze": synthetic_haze,
    "rain": synthetic_rain,
}


def degrade(image: np.ndarray, kind: str, rng: np.random.Generator, **kwargs: object) -> np.ndarray:
    """Apply the degradation called ``kind`` (``noise``, ``blur``, ``haze`` or ``rain``).

    Args:
        image (np.ndarray): (H, W, C) float in [0, 1].
        kind (str): a key of ``DEGRADATIONS``; ``noise`` is clipped to [0, 1] here so
            that the result can be saved as an image.
        rng (np.random.Generator): source of randomness.
        **kwargs: forwarded to the degradation function.

    Returns:
        (H, W, C) float32.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"kind must be one of {sorted(DEGRADATIONS)}, got {kind!r}")
    return DEGRADATIONS[kind](image, rng, **kwargs)


__all__ = [
    "DEGRADATIONS",
    "NOISE_CHANNEL_ORDERS",
    "NOISE_SEED_MODES",
    "SIGMA_TYPES",
    "add_gaussian_noise",
    "add_seeded_noise",
    "degrade",
    "depth_proxy",
    "line_kernel",
    "motion_blur",
    "sample_sigma",
    "seeded_noise",
    "synthetic_haze",
    "synthetic_rain",
]

"""PSNR and SSIM on numpy images under an explicit :class:`~textualdeg.metrics.Protocol`.

The reference implementation (float64 on the [0, 255] scale); the batched torch version
in :mod:`textualdeg.metrics.torch_metrics` agrees with it to 1e-4. The SSIM variants
and the Y-channel conversion are described in :mod:`textualdeg.metrics.protocol`; the
tests pin them against basicsr 1.4.2 and scikit-image to 1e-6.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d

from textualdeg.metrics.protocol import MetricResult, Protocol, get_protocol

# BT.601 luma on [0, 255] values, as MATLAB rgb2ycbcr (coefficients for R, G, B).
_Y_COEFFS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0
_K1, _K2, _DATA_RANGE = 0.01, 0.03, 255.0


def gaussian_kernel_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian, as ``cv2.getGaussianKernel`` and MATLAB ``fspecial``.

    Returns:
        float64 array of shape (size,) summing to 1.
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    kernel = np.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _as_hwc(image: np.ndarray, argument: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{argument} must be a numpy array (HWC); got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]  # (H, W, 1)
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"{argument} must be HW, HW1 or HW3; got shape {image.shape}")
    return image


def prepare(image: np.ndarray, protocol: Protocol, argument: str = "image") -> np.ndarray:
    """Apply quantization, border crop and channel selection.

    Args:
        image (np.ndarray): (H, W), (H, W, 1) or (H, W, 3) RGB; float in [0, 1]
            (values outside are clamped) or uint8 in [0, 255].
        protocol (Protocol): the protocol.
        argument (str): name used in error messages.

    Returns:
        float64 array (H', W', C') on the [0, 255] scale, C' = 1 for Y or gray.
    """
    image = _as_hwc(image, argument)
    if image.dtype == np.uint8:
        x = image.astype(np.float64)
    elif np.issubdtype(image.dtype, np.floating):
        x = np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0
        if protocol.quantize == "uint8":
            x = np.round(x)  # as BasicSR tensor2img: (x * 255).round() (half to even)
    else:
        raise TypeError(f"{argument} must be uint8 or floating point; got dtype {image.dtype}")
    c = protocol.crop_border
    if c > 0:
        if 2 * c >= min(x.shape[0], x.shape[1]):
            raise ValueError(f"crop_border={c} leaves nothing of a {x.shape[0]}x{x.shape[1]} image")
        x = x[c:-c, c:-c, :]
    if protocol.channels == "y" and x.shape[2] == 3:
        y = x @ _Y_COEFFS + _Y_OFFSET  # (H, W)
        if protocol.y_rounding == "matlab":
            y = np.floor(y + 0.5)  # MATLAB round: half away from zero (y > 0)
        x = y[:, :, None]  # (H, W, 1)
    return x


def _prepare_pair(pred: np.ndarray, target: np.ndarray, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    a = prepare(pred, protocol, "pred")
    b = prepare(target, protocol, "target")
    if a.shape != b.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    return a, b


def _psnr_value(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(_DATA_RANGE**2 / mse))


def _filter(x: np.ndarray, kernel: np.ndarray, axes: tuple[int, ...], mode: str) -> np.ndarray:
    for axis in axes:
        x = correlate1d(x, kernel, axis=axis, mode=mode)
    return x


def _ssim_map(a: np.ndarray, b: np.ndarray, kernel: np.ndarray, axes: tuple[int, ...], mode: str,
              cov_norm: float = 1.0) -> np.ndarray:
    c1 = (_K1 * _DATA_RANGE) ** 2
    c2 = (_K2 * _DATA_RANGE) ** 2
    mu_a = _filter(a, kernel, axes, mode)
    mu_b = _filter(b, kernel, axes, mode)
    var_a = cov_norm * (_filter(a * a, kernel, axes, mode) - mu_a**2)
    var_b = cov_norm * (_filter(b * b, kernel, axes, mode) - mu_b**2)
    cov = cov_norm * (_filter(a * b, kernel, axes, mode) - mu_a * mu_b)
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _ssim_value(a: np.ndarray, b: np.ndarray, variant: str) -> float:
    if variant == "gaussian3d":
        ssim_map = _ssim_map(a, b, gaussian_kernel_1d(11, 1.5), (0, 1, 2), "nearest")  # (H, W, C)
        return float(ssim_map.mean())
    if variant == "gaussian":
        kernel, cov_norm = gaussian_kernel_1d(11, 1.5), 1.0
    else:  # skimage
        kernel, cov_norm = np.full(7, 1.0 / 7.0), 49.0 / 48.0
    pad = (len(kernel) - 1) // 2
    if min(a.shape[0], a.shape[1]) <= 2 * pad:
        raise ValueError(f"SSIM '{variant}' needs images larger than {2 * pad + 1} pixels; got {a.shape[:2]}")
    ssim_map = _ssim_map(a, b, kernel, (0, 1), "reflect", cov_norm)[pad:-pad, pad:-pad, :]  # valid region
    return float(np.mean([ssim_map[:, :, i].mean() for i in range(ssim_map.shape[2])]))


def psnr(pred: np.ndarray, target: np.ndarray, protocol: Protocol | str) -> MetricResult:
    """Peak signal-to-noise ratio in dB.

    Args:
        pred (np.ndarray): (H, W[, C]) RGB or gray, float in [0, 1] or uint8.
        target (np.ndarray): same shape as ``pred``.
        protocol (Protocol | str): a protocol or a preset name from ``PRESETS``.

    Returns:
        MetricResult named ``"psnr"`` (``inf`` for identical images).
    """
    protocol = get_protocol(protocol)
    a, b = _prepare_pair(pred, target, protocol)
    return MetricResult("psnr", _psnr_value(a, b), protocol)


def ssim(pred: np.ndarray, target: np.ndarray, protocol: Protocol | str) -> MetricResult:
    """Structural similarity, using ``protocol.ssim_variant``.

    Args:
        pred (np.ndarray): (H, W[, C]) RGB or gray, float in [0, 1] or uint8.
        target (np.ndarray): same shape as ``pred``.
        protocol (Protocol | str): a protocol or a preset name from ``PRESETS``.

    Returns:
        MetricResult named ``"ssim"``.
    """
    protocol = get_protocol(protocol)
    a, b = _prepare_pair(pred, target, protocol)
    return MetricResult("ssim", _ssim_value(a, b, protocol.ssim_variant), protocol)


def compute_metrics(pred: np.ndarray, target: np.ndarray, protocol: Protocol | str) -> dict[str, float]:
    """PSNR and SSIM of one image pair (the inputs are prepared once).

    Args:
        pred (np.ndarray): (H, W[, C]) RGB or gray, float in [0, 1] or uint8.
        target (np.ndarray): same shape as ``pred``.
        protocol (Protocol | str): a protocol or a preset name from ``PRESETS``.

    Returns:
        ``{"psnr": float, "ssim": float}``.
    """
    protocol = get_protocol(protocol)
    a, b = _prepare_pair(pred, target, protocol)
    return {"psnr": _psnr_value(a, b), "ssim": _ssim_value(a, b, protocol.ssim_variant)}


__all__ = ["psnr", "ssim", "compute_metrics", "prepare", "gaussian_kernel_1d"]

"""Batched PSNR and SSIM on torch tensors (CPU or GPU) under an explicit protocol.

The same definitions as :mod:`textualdeg.metrics.psnr_ssim` (see
:mod:`textualdeg.metrics.protocol`), computed for a whole batch at once with separable
convolutions, for validation inside training loops. By default the arithmetic runs in
float64 (agrees with the numpy reference to well under 1e-4); pass
``compute_dtype=torch.float32`` for speed on GPUs with slow float64.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textualdeg.metrics.protocol import Protocol, get_protocol

_K1, _K2, _DATA_RANGE = 0.01, 0.03, 255.0


def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def prepare_torch(image: torch.Tensor, protocol: Protocol, compute_dtype: torch.dtype = torch.float64,
                  argument: str = "image") -> torch.Tensor:
    """Quantize, crop and select channels of a batch.

    Args:
        image (torch.Tensor): (B, C, H, W), C in {1, 3}, RGB; float in [0, 1]
            (clamped) or uint8.
        protocol (Protocol): the protocol.
        compute_dtype (torch.dtype): dtype of the result.
        argument (str): name used in error messages.

    Returns:
        (B, C', H', W') tensor on the [0, 255] scale, C' = 1 for Y or gray.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{argument} must be a (B, C, H, W) tensor with C in (1, 3); got {shape}")
    if image.dtype == torch.uint8:
        x = image.to(compute_dtype)
    elif image.is_floating_point():
        x = image.to(compute_dtype).clamp(0.0, 1.0) * 255.0
        if protocol.quantize == "uint8":
            x = torch.round(x)  # half to even, as numpy / BasicSR tensor2img
    else:
        raise TypeError(f"{argument} must be uint8 or floating point; got dtype {image.dtype}")
    c = protocol.crop_border
    if c > 0:
        if 2 * c >= min(x.shape[2], x.shape[3]):
            raise ValueError(f"crop_border={c} leaves nothing of a {x.shape[2]}x{x.shape[3]} image")
        x = x[:, :, c:-c, c:-c]
    if protocol.channels == "y" and x.shape[1] == 3:
        coeffs = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64) / 255.0
        coeffs = coeffs.to(dtype=compute_dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * coeffs).sum(dim=1, keepdim=True) + 16.0  # (B, 1, H, W)
        if protocol.y_rounding == "matlab":
            x = torch.floor(x + 0.5)  # MATLAB round: half away from zero (Y > 0)
    return x


def _prepare_pair(pred: torch.Tensor, target: torch.Tensor, protocol: Protocol,
                  compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (prepare_torch(pred, protocol, compute_dtype, "pred"),
            prepare_torch(target, protocol, compute_dtype, "target"))


def _psnr_value(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(_DATA_RANGE**2 / mse)  # inf where mse == 0


def _filter2d_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable valid correlation of every channel. x: (B, C, H, W)."""
    b, c, h, w = x.shape
    k = kernel.numel()
    y = x.reshape(b * c, 1, h, w)  # (B*C, 1, H, W)
    y = F.conv2d(y, kernel.view(1, 1, k, 1))
    y = F.conv2d(y, kernel.view(1, 1, 1, k))  # (B*C, 1, H-k+1, W-k+1)
    return y.reshape(b, c, h - k + 1, w - k + 1)


def _filter3d_replicate(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable 3-D correlation over (C, H, W) with replicate padding. x: (B, C, H, W)."""
    k = kernel.numel()
    r = (k - 1) // 2
    y = x.unsqueeze(1)  # (B, 1, C, H, W)
    # F.pad replicates only the last three dims of a 5-D tensor: (W, H, C) here.
    # The channel axis may be shorter than the radius, so pad it by index repetition.
    c = y.shape[2]
    idx = torch.arange(-r, c + r, device=x.device).clamp(0, c - 1)
    y = y.index_select(2, idx)  # (B, 1, C+2r, H, W)
    y = F.pad(y, (r, r, r, r, 0, 0), mode="replicate")  # (B, 1, C+2r, H+2r, W+2r)
    y = F.conv3d(y, kernel.view(1, 1, k, 1, 1))
    y = F.conv3d(y, kernel.view(1, 1, 1, k, 1))
    y = F.conv3d(y, kernel.view(1, 1, 1, 1, k))  # (B, 1, C, H, W)
    return y.squeeze(1)


def _local_mean(x: torch.Tensor, variant: str) -> torch.Tensor:
    """Windowed mean of (B, C, H, W) ``x`` for an SSIM variant."""
    if variant == "gaussian3d":
        return _filter3d_replicate(x, _gaussian_1d(11, 1.5, x.dtype, x.device))
    if variant == "gaussian":
        return _filter2d_valid(x, _gaussian_1d(11, 1.5, x.dtype, x.device))
    return _filter2d_valid(x, torch.full((7,), 1.0 / 7.0, dtype=x.dtype, device=x.device))  # skimage


def _ssim_value(a: torch.Tensor, b: torch.Tensor, variant: str) -> torch.Tensor:
    c1 = (_K1 * _DATA_RANGE) ** 2
    c2 = (_K2 * _DATA_RANGE) ** 2
    cov_norm = 49.0 / 48.0 if variant == "skimage" else 1.0  # skimage: sample covariance
    window = {"gaussian": 11, "skimage": 7}.get(variant, 1)
    if min(a.shape[2], a.shape[3]) < window:
        raise ValueError(f"SSIM '{variant}' needs images of at least {window} pixels; got {tuple(a.shape[2:])}")

    def filt(t: torch.Tensor) -> torch.Tensor:
        return _local_mean(t, variant)

    mu_a, mu_b = filt(a), filt(b)
    var_a = cov_norm * (filt(a * a) - mu_a**2)
    var_b = cov_norm * (filt(b * b) - mu_b**2)
    cov = cov_norm * (filt(a * b) - mu_a * mu_b)
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)  # (B,); every channel's map has the same size


@torch.no_grad()
def psnr_torch(pred: torch.Tensor, target: torch.Tensor, protocol: Protocol | str,
               compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """PSNR of every image of a batch.

    Args:
        pred (torch.Tensor): (B, C, H, W) RGB or gray, float in [0, 1] or uint8.
        target (torch.Tensor): same shape as ``pred``.
        protocol (Protocol | str): a protocol or a preset name.
        compute_dtype (torch.dtype): arithmetic dtype (float64 default).

    Returns:
        (B,) tensor in dB on ``pred``'s device (``inf`` for identical images).
    """
    protocol = get_protocol(protocol)
    a, b = _prepare_pair(pred, target, protocol, compute_dtype)
    return _psnr_value(a, b)


@torch.no_grad()
def ssim_torch(pred: torch.Tensor, target: torch.Tensor, protocol: Protocol | str,
               compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """SSIM of every image of a batch, using ``protocol.ssim_variant``.

    Args:
        pred (torch.Tensor): (B, C, H, W) RGB or gray, float in [0, 1] or uint8.
        target (torch.Tensor): same shape as ``pred``.
        protocol (Protocol | str): a protocol or a preset name.
        compute_dtype (torch.dtype): arithmetic dtype (float64 default).

    Returns:
        (B,) tensor on ``pred``'s device.
    """
    protocol = get_protocol(protocol)
    a, b = _prepare_pair(pred, target, protocol, compute_dtype)
    return _ssim_value(a, b, protocol.ssim_variant)


@torch.no_grad()
def compute_metrics_torch(pred: torch.Tensor, target: torch.Tensor, protocol: Protocol | str,
                          compute_dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """PSNR and SSIM of a batch (inputs prepared once).

    Returns:
        ``{"psnr": (B,), "ssim": (B,)}`` tensors.
    """
    protocol = get_protocol(protocol)
    a, b = _prepare_pair(pred, target, protocol, compute_dtype)
    return {"psnr": _psnr_value(a, b), "ssim": _ssim_value(a, b, protocol.ssim_variant)}


__all__ = ["psnr_torch", "ssim_torch", "compute_metrics_torch", "prepare_torch"]

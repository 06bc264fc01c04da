"""Scoring a restored image: the one metric dispatch of validation (stage 4) and evaluation (stage 5).

:func:`score` takes the network output and the target as tensors, wherever they live,
and returns plain floats: on the CPU the numpy reference computes them
(:mod:`textualdeg.metrics.psnr_ssim`), on a GPU the batched torch metrics in float64
(:mod:`textualdeg.metrics.torch_metrics`; same definitions, equal to about 1e-12), since
the numpy 3-D SSIM of a 720p frame takes longer than the inference. :func:`metric_kind`
reads the metric names of BasicSR option files (``type: calculate_psnr``).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from textualdeg.metrics.protocol import Protocol, get_protocol
from textualdeg.metrics.psnr_ssim import compute_metrics, psnr, ssim
from textualdeg.metrics.torch_metrics import compute_metrics_torch, psnr_torch, ssim_torch

#: Metric names of option files (BasicSR's ``calculate_*`` and the short names) -> metric.
METRIC_TYPES: dict[str, str] = {"calculate_psnr": "psnr", "psnr": "psnr", "calculate_ssim": "ssim", "ssim": "ssim"}
METRICS = ("psnr", "ssim")


def metric_kind(metric_type: str, argument: str = "metric type") -> str:
    """The metric (``psnr`` or ``ssim``) an option file's ``type`` names.

    Args:
        metric_type (str): ``calculate_psnr``, ``calculate_ssim``, ``psnr`` or ``ssim``.
        argument (str): the option named in the error message (``val.metrics.psnr.type``).

    Raises:
        ValueError: an unknown name, naming ``argument`` and the known names.
    """
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"{argument}={metric_type!r}: expected one of {sorted(METRIC_TYPES)}")
    return METRIC_TYPES[metric_type]


def _single(image: torch.Tensor, argument: str) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (1, C, H, W)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{argument} must be a torch tensor; got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]  # (1, C, H, W)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"{argument} must be one image, (C, H, W) or (1, C, H, W); got {tuple(image.shape)}")
    return image


def _hwc(image: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) tensor -> (H, W, C) numpy array on the CPU (float32 or uint8)."""
    image = image[0].detach().cpu()
    if image.is_floating_point():
        image = image.float()
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # (H, W, C)


def score(pred: torch.Tensor, target: torch.Tensor, protocol: Protocol | str,
          metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """PSNR and/or SSIM of one restored image under ``protocol``.

    Args:
        pred (torch.Tensor): (C, H, W) or (1, C, H, W) output, float in [0, 1] (clamped
            and quantized as ``protocol`` says) or uint8, on any device; C in {1, 3}.
        target (torch.Tensor): the ground truth, same shape; moved to ``pred``'s device.
        protocol (Protocol | str): the protocol or a preset name.
        metrics (Sequence[str]): any of ``"psnr"``, ``"ssim"``.

    Returns:
        ``{metric: float}`` for each of ``metrics`` (PSNR ``inf`` for identical images).
    """
    protocol = get_protocol(protocol)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"metrics {unknown}: expected names from {list(METRICS)}")
    pred, target = _single(pred, "pred"), _single(target, "target").to(pred.device)
    if pred.device.type == "cpu":
        a, b = _hwc(pred), _hwc(target)
        if set(metrics) == set(METRICS):
            return {k: float(v) for k, v in compute_metrics(a, b, protocol).items()}
        functions = {"psnr": psnr, "ssim": ssim}
        return {m: float(functions[m](a, b, protocol).value) for m in metrics}
    if set(metrics) == set(METRICS):
        return {k: float(v[0]) for k, v in compute_metrics_torch(pred, target, protocol).items()}
    functions = {"psnr": psnr_torch, "ssim": ssim_torch}
    return {m: float(functions[m](pred, target, protocol)[0]) for m in metrics}


__all__ = ["METRICS", "METRIC_TYPES", "metric_kind", "score"]

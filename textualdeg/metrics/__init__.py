"""PSNR and SSIM with an explicit, recorded protocol.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Every call names a :class:`Protocol` (or a preset name) and every result carries it::

    from textualdeg.metrics import PRESETS, compute_metrics, psnr
    psnr(pred, gt, "matlab_y_derain").value
    compute_metrics(pred, gt, PRESETS["nafnet_gaussian3d"])  # {"psnr": ..., "ssim": ...}
    score(output, target, "textualdeg")  # tensors on any device: numpy on CPU, torch on GPU

Presets (``PRESETS``; fields explained in :mod:`textualdeg.metrics.protocol`):

====================  ======  ==========  ==========  ========  =======================================
name                  chan.   Y rounding  SSIM        quantize  reproduces
====================  ======  ==========  ==========  ========  =======================================
basicsr_rgb           rgb     -           gaussian    uint8     BasicSR calculate_psnr/ssim
basicsr_y             y       float       gaussian    uint8     BasicSR with test_y_channel
matlab_y_derain       y       matlab      gaussian    uint8     Restormer/MSPFN/DRSformer deraining
                                                                (MATLAB rgb2ycbcr + SSIM_index)
nafnet_gaussian3d     rgb     -           gaussian3d  uint8     NAFNet, HINet, TextualDegRemoval
                                                                (alias ``textualdeg``), MATLAB ssim()
                                                                on RGB (Restormer GoPro/HIDE)
nafnet_gaussian3d_y   y       float       gaussian3d  uint8     the same forks with test_y_channel
promptir_skimage      rgb     -           skimage     float     PromptIR, AirNet, TextPromptIR
====================  ======  ==========  ==========  ========  =======================================

All presets use ``crop_border=0``; use ``dataclasses.replace(PRESETS[name], crop_border=4)``
for another crop.
"""

from textualdeg.metrics.protocol import PRESETS, MetricResult, Protocol, get_protocol, protocol_from_basicsr
from textualdeg.metrics.psnr_ssim import compute_metrics, psnr, ssim
from textualdeg.metrics.scoring import METRIC_TYPES, metric_kind, score
from textualdeg.metrics.torch_metrics import compute_metrics_torch, psnr_torch, ssim_torch

__all__ = ["Protocol", "MetricResult", "PRESETS", "get_protocol", "protocol_from_basicsr", "psnr", "ssim",
           "compute_metrics", "psnr_torch", "ssim_torch", "compute_metrics_torch", "score", "metric_kind",
           "METRIC_TYPES"]

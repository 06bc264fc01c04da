"""The metric protocol: how a PSNR/SSIM number was computed, recorded beside it.

Published restoration tables mix conventions (RGB vs Y channel, MATLAB vs Python
SSIM, 8-bit vs float outputs, border crops), so the same output can score differently
by more than the gains being claimed. Every metric call in textualdeg therefore takes
an explicit :class:`Protocol`, and every :class:`MetricResult` carries it.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Fields of a protocol
--------------------
``channels``
    ``"rgb"``: all channels (one channel for gray images). ``"y"``: the luma of
    ITU-R BT.601 as MATLAB's ``rgb2ycbcr`` (``Y = 16 + (65.481 R + 128.553 G +
    24.966 B) / 255`` on [0, 255] values, range [16, 235]); gray images are used as
    they are (MATLAB and BasicSR skip the conversion for one channel too).
``y_rounding``
    ``"float"``: Y stays floating point, as BasicSR's ``to_y_channel``.
    ``"matlab"``: Y of a uint8 image is rounded to uint8 (half away from zero), as
    MATLAB's ``rgb2ycbcr`` returns for uint8 input; this is what MATLAB evaluation
    scripts such as Restormer's ``Deraining/evaluate_PSNR_SSIM.m`` measure. The two
    differ by a few hundredths of a dB on noisy photographs. ``"matlab"`` needs
    ``quantize="uint8"``.
``crop_border``
    Pixels removed from each edge before anything else (BasicSR ``crop_border``).
``ssim_variant``
    ``"gaussian"``: per channel, 11x11 Gaussian window (sigma 1.5), statistics over
    the valid region only, mean over channels: BasicSR ``calculate_ssim`` and Wang's
    MATLAB ``SSIM_index`` (``filter2(..., 'valid')``).
    ``"gaussian3d"``: one 11x11x11 Gaussian window (sigma 1.5 along H, W and the
    channel axis; a separable product) over the (H, W, C) volume, replicate padding on
    every axis, no valid-region crop, mean over the whole map. This is ``_ssim_3d`` of
    NAFNet/HINet's basicsr fork (megvii-research/NAFNet@2b4af71
    ``basicsr/metrics/psnr_ssim.py``), copied by Restormer and by the TextualDegRemoval
    authors (``scripts/eval``); it emulates MATLAB's built-in ``ssim()`` on an RGB
    volume. On one channel (gray or Y) it reduces exactly to the 2-D Gaussian with
    replicate padding that those forks use for ``test_y_channel`` (``_ssim_cly``).
    The forks pick the constants from ``max_value = 1 if img.max() <= 1 else 255``; we
    always use the true data range (identical except on images darker than 2/255).
    ``"skimage"``: ``skimage.metrics.structural_similarity`` defaults: 7x7 uniform
    window, sample covariance (N/(N-1)), valid region, mean over channels, as PromptIR
    and the AirNet lineage report.
``quantize``
    ``"uint8"``: float inputs are clamped to [0, 1] and rounded to 8 bit first
    (``round(x * 255)``, as BasicSR ``tensor2img`` and saved PNGs).
    ``"float"``: float inputs are only clamped to [0, 1] (PromptIR scores its float
    outputs). uint8 inputs are exact either way.

Constants: ``K1 = 0.01``, ``K2 = 0.03`` and data range 255 (computations run on the
[0, 255] scale in float64), so ``C1 = (0.01 * 255) ** 2`` and ``C2 = (0.03 * 255) ** 2``.
PSNR is ``10 log10(255^2 / MSE)``; it is ``inf`` when the images are identical.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CHANNELS = ("rgb", "y")
Y_ROUNDINGS = ("float", "matlab")
SSIM_VARIANTS = ("gaussian", "gaussian3d", "skimage")
QUANTIZATIONS = ("uint8", "float")


def _check_choice(argument: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {list(choices)}; got {value!r}")


@dataclass(frozen=True)
class Protocol:
    """How PSNR/SSIM are computed (see the module docstring for each field).

    Args:
        channels (str): ``"rgb"`` or ``"y"`` (BT.601 luma as MATLAB ``rgb2ycbcr``).
        y_rounding (str): ``"float"`` (BasicSR) or ``"matlab"`` (round Y to uint8);
            only used with ``channels="y"``.
        crop_border (int): pixels removed from every edge, >= 0.
        ssim_variant (str): ``"gaussian"``, ``"gaussian3d"`` or ``"skimage"``.
        quantize (str): ``"uint8"`` (round float inputs to 8 bit first) or ``"float"``.
    """

    channels: str = "rgb"
    y_rounding: str = "float"
    crop_border: int = 0
    ssim_variant: str = "gaussian"
    quantize: str = "uint8"

    def __post_init__(self) -> None:
        _check_choice("channels", self.channels, CHANNELS)
        _check_choice("y_rounding", self.y_rounding, Y_ROUNDINGS)
        _check_choice("ssim_variant", self.ssim_variant, SSIM_VARIANTS)
        _check_choice("quantize", self.quantize, QUANTIZATIONS)
        if isinstance(self.crop_border, bool) or not isinstance(self.crop_border, int) or self.crop_border < 0:
            raise ValueError(f"crop_border must be an integer >= 0; got {self.crop_border!r}")
        if self.y_rounding == "matlab" and self.quantize != "uint8":
            raise ValueError(
                "y_rounding='matlab' rounds the Y plane of a uint8 image and needs quantize='uint8'; "
                f"got quantize={self.quantize!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The protocol record written beside every number (plain JSON types)."""
        record = asdict(self)
        record["data_range"] = 255
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Protocol":
        """Rebuild a protocol from :meth:`to_dict` output (extra keys ignored)."""
        names = ("channels", "y_rounding", "crop_border", "ssim_variant", "quantize")
        return cls(**{k: record[k] for k in names if k in record})


@dataclass(frozen=True)
class MetricResult:
    """One metric value with the protocol that produced it.

    Args:
        name (str): ``"psnr"`` or ``"ssim"``.
        value (float): the metric (dB for PSNR; ``inf`` for identical images).
        protocol (Protocol): how it was computed.
    """

    name: str
    value: float
    protocol: Protocol

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "value", "protocol": {...}}``."""
        return {"name": self.name, "value": float(self.value), "protocol": self.protocol.to_dict()}


PRESETS: dict[str, Protocol] = {
    # BasicSR calculate_psnr / calculate_ssim on 8-bit RGB (test_y_channel: false).
    "basicsr_rgb": Protocol(channels="rgb", y_rounding="float", ssim_variant="gaussian", quantize="uint8"),
    # BasicSR with test_y_channel: true (float Y, valid-region 2-D Gaussian SSIM).
    "basicsr_y": Protocol(channels="y", y_rounding="float", ssim_variant="gaussian", quantize="uint8"),
    # MATLAB rgb2ycbcr on uint8 (Y rounded) + Wang's SSIM_index: Restormer/MSPFN deraining
    # tables (Deraining/evaluate_PSNR_SSIM.m) and the DRSformer protocol.
    "matlab_y_derain": Protocol(channels="y", y_rounding="matlab", ssim_variant="gaussian", quantize="uint8"),
    # NAFNet/HINet/Restormer-python/TextualDegRemoval: RGB 8-bit, 3-D Gaussian SSIM.
    # Also the Python stand-in for MATLAB's built-in psnr/ssim on RGB (Restormer GoPro/HIDE).
    "nafnet_gaussian3d": Protocol(channels="rgb", y_rounding="float", ssim_variant="gaussian3d", quantize="uint8"),
    # The same forks with test_y_channel: true (float Y, 2-D Gaussian with replicate padding).
    "nafnet_gaussian3d_y": Protocol(channels="y", y_rounding="float", ssim_variant="gaussian3d", quantize="uint8"),
    # PromptIR / AirNet / TextPromptIR: float outputs clamped to [0, 1], skimage defaults.
    "promptir_skimage": Protocol(channels="rgb", y_rounding="float", ssim_variant="skimage", quantize="float"),
}
# The protocol TextualDegRemoval's own evaluation scripts use (scripts/eval/main_evaluation_*.py:
# RGB, no border crop, 3-D Gaussian SSIM on uint8 images; docs/official_differences.md, D45, D47).
PRESETS["textualdeg"] = PRESETS["nafnet_gaussian3d"]


def get_protocol(protocol: "Protocol | str") -> Protocol:
    """Return ``protocol`` itself, or the preset it names.

    Raises:
        ValueError: an unknown preset name (the message lists the presets).
        TypeError: neither a ``Protocol`` nor a string.
    """
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str):
        if protocol not in PRESETS:
            raise ValueError(f"protocol {protocol!r} is not a preset; presets: {sorted(PRESETS)}")
        return PRESETS[protocol]
    raise TypeError(f"protocol must be a Protocol or a preset name; got {type(protocol).__name__}")


def protocol_from_basicsr(crop_border: int = 0, test_y_channel: bool = False, ssim_variant: str = "gaussian",
                          y_rounding: str = "float", quantize: str = "uint8") -> Protocol:
    """The protocol of a BasicSR-style metric entry (``val.metrics.<name>`` of an option file).

    Args:
        crop_border (int): BasicSR ``crop_border``.
        test_y_channel (bool): BasicSR ``test_y_channel`` (Y channel instead of RGB).
        ssim_variant (str): ``gaussian`` (BasicSR), ``gaussian3d`` (NAFNet forks) or ``skimage``.
        y_rounding (str): ``float`` (BasicSR) or ``matlab``.
        quantize (str): ``uint8`` (BasicSR ``tensor2img``) or ``float``.

    Returns:
        The equivalent :class:`Protocol`.
    """
    return Protocol(channels="y" if test_y_channel else "rgb", y_rounding=y_rounding, crop_border=crop_border,
                    ssim_variant=ssim_variant, quantize=quantize)


__all__ = ["Protocol", "MetricResult", "PRESETS", "get_protocol", "protocol_from_basicsr", "CHANNELS", "Y_ROUNDINGS",
           "SSIM_VARIANTS", "QUANTIZATIONS"]

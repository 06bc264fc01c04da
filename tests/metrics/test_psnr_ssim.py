"""Numpy PSNR/SSIM pinned against basicsr 1.4.2, scikit-image and ports of the NAFNet/MATLAB code.

Tolerance 1e-6 wherever the computation is the same by definition.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from textualdeg.metrics import (PRESETS, MetricResult, Protocol, compute_metrics, get_protocol, protocol_from_basicsr,
                                psnr, ssim)
from textualdeg.metrics.psnr_ssim import prepare

TOL = 1e-6
RGB = Protocol(channels="rgb", ssim_variant="gaussian", quantize="uint8")
Y_FLOAT = Protocol(channels="y", y_rounding="float", ssim_variant="gaussian", quantize="uint8")


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------- basicsr (same definition)
@pytest.mark.parametrize("crop_border", [0, 4])
def test_rgb_psnr_and_ssim_equal_basicsr(pair, basicsr_metrics, crop_border):
    pred, target = pair
    protocol = dataclasses.replace(RGB, crop_border=crop_border)
    p8, t8 = to_uint8(pred), to_uint8(target)
    ref_psnr = basicsr_metrics.calculate_psnr(p8, t8, crop_border=crop_border, input_order="HWC")
    ref_ssim = basicsr_metrics.calculate_ssim(p8, t8, crop_border=crop_border, input_order="HWC")
    assert abs(psnr(pred, target, protocol).value - ref_psnr) <= TOL
    assert abs(ssim(pred, target, protocol).value - ref_ssim) <= TOL
    # uint8 inputs give the same numbers as float inputs quantized by the protocol
    assert abs(psnr(p8, t8, protocol).value - ref_psnr) <= TOL


def test_y_float_equals_basicsr_test_y_channel(pair, basicsr_metrics):
    pred, target = pair
    # basicsr's Y path expects BGR input
    p8, t8 = to_uint8(pred)[..., ::-1], to_uint8(target)[..., ::-1]
    ref_psnr = basicsr_metrics.calculate_psnr(p8, t8, crop_border=0, test_y_channel=True)
    ref_ssim = basicsr_metrics.calculate_ssim(p8, t8, crop_border=0, test_y_channel=True)
    assert abs(psnr(pred, target, Y_FLOAT).value - ref_psnr) <= TOL
    assert abs(ssim(pred, target, Y_FLOAT).value - ref_ssim) <= TOL
    assert PRESETS["basicsr_y"] == Y_FLOAT


def test_gray_images_equal_basicsr(basicsr_metrics, make_pair):
    pred, target = make_pair("astronaut")
    pred8, target8 = to_uint8(pred)[..., 0], to_uint8(target)[..., 0]  # (H, W)
    assert abs(psnr(pred8, target8, RGB).value - basicsr_metrics.calculate_psnr(pred8, target8, 0)) <= TOL
    assert abs(ssim(pred8, target8, RGB).value - basicsr_metrics.calculate_ssim(pred8, target8, 0)) <= TOL
    # Y of a gray image is the image itself
    assert psnr(pred8, target8, Y_FLOAT).value == psnr(pred8, target8, RGB).value


# ---------------------------------------------------------------- scikit-image
def test_psnr_equals_skimage(pair):
    pred, target = pair
    ours = psnr(pred, target, Protocol(quantize="float")).value
    assert abs(ours - peak_signal_noise_ratio(target, pred, data_range=1.0)) <= TOL


@pytest.mark.parametrize("quantize", ["float", "uint8"])
def test_skimage_variant_equals_skimage_defaults(pair, quantize):
    pred, target = pair
    protocol = Protocol(ssim_variant="skimage", quantize=quantize)
    if quantize == "float":
        expected = structural_similarity(target, pred, data_range=1.0, channel_axis=2)
    else:
        expected = structural_similarity(to_uint8(target), to_uint8(pred), data_range=255, channel_axis=2)
    assert abs(ssim(pred, target, protocol).value - expected) <= TOL


def test_gaussian_equals_skimage_gaussian_population_covariance(pair):
    pred, target = pair
    expected = structural_similarity(target, pred, data_range=1.0, channel_axis=2, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)
    assert abs(ssim(pred, target, Protocol(quantize="float")).value - expected) <= TOL


# ---------------------------------------------------------------- 3-D Gaussian (NAFNet _ssim_3d)
def nafnet_ssim_3d(img1: np.ndarray, img2: np.ndarray) -> float:
    """Port of megvii-research/NAFNet basicsr/metrics/psnr_ssim.py::_ssim_3d in float64 on CPU."""
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())
    kernel3 = torch.tensor(np.stack([window * k for k in cv2.getGaussianKernel(11, 1.5)], axis=0))
    conv3d = torch.nn.Conv3d(1, 1, (11, 11, 11), padding=(5, 5, 5), bias=False, padding_mode="replicate")
    conv3d = conv3d.double().requires_grad_(False)
    conv3d.weight[0, 0] = kernel3

    def filt(x):
        return conv3d(x[None, None])[0, 0]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = torch.tensor(img1, dtype=torch.float64), torch.tensor(img2, dtype=torch.float64)
    mu1, mu2 = filt(a), filt(b)
    s1, s2, s12 = filt(a * a) - mu1**2, filt(b * b) - mu2**2, filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def nafnet_ssim_cly(img1: np.ndarray, img2: np.ndarray) -> float:
    """Port of NAFNet's ``_ssim_cly`` (2-D Gaussian, BORDER_REPLICATE, no crop) for the Y channel."""
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())

    def filt(x):
        return cv2.filter2D(x, -1, window, borderType=cv2.BORDER_REPLICATE)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = img1.astype(np.float64), img2.astype(np.float64)
    mu1, mu2 = filt(a), filt(b)
    s1, s2, s12 = filt(a * a) - mu1**2, filt(b * b) - mu2**2, filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def test_gaussian3d_equals_nafnet_ssim_3d(pair):
    pred, target = pair
    p8, t8 = to_uint8(pred), to_uint8(target)
    expected = nafnet_ssim_3d(p8[..., ::-1].astype(np.float64), t8[..., ::-1].astype(np.float64))  # BGR
    ours = ssim(pred, target, PRESETS["nafnet_gaussian3d"]).value
    assert abs(ours - expected) <= TOL
    # and it is a different number from the per-channel variant
    assert abs(ours - ssim(pred, target, RGB).value) > 1e-3


def test_gaussian3d_on_y_equals_nafnet_ssim_cly(pair, basicsr_metrics):
    pred, target = pair
    y_pred = basicsr_metrics.metric_util.to_y_channel(to_uint8(pred)[..., ::-1])[..., 0]
    y_target = basicsr_metrics.metric_util.to_y_channel(to_uint8(target)[..., ::-1])[..., 0]
    ours = ssim(pred, target, PRESETS["nafnet_gaussian3d_y"]).value
    assert abs(ours - nafnet_ssim_cly(y_pred, y_target)) <= TOL


# ---------------------------------------------------------------- MATLAB Y rounding
def test_matlab_rgb2ycbcr_values():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    y = prepare(pixels, PRESETS["matlab_y_derain"])[..., 0]
    # MATLAB: rgb2ycbcr(uint8(...)) Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)
    np.testing.assert_array_equal(y, [[16, 235, 81, 145, 41]])
    y_float = prepare(pixels, Y_FLOAT)[..., 0]
    np.testing.assert_allclose(y_float, [[16, 235, 81.481, 144.553, 40.966]], atol=1e-9)


def test_matlab_and_float_y_differ_by_a_small_positive_amount(make_pair):
    pred, target = make_pair("astronaut", sigma=25.0)
    matlab = compute_metrics(pred, target, "matlab_y_derain")
    float_y = compute_metrics(pred, target, "basicsr_y")
    gap = float_y["psnr"] - matlab["psnr"]
    # rounding both Y planes adds about 1/6 grey level^2 of error: a few thousandths of a dB here
    assert 1e-4 < gap < 0.05, gap
    assert matlab["ssim"] != float_y["ssim"]


def test_matlab_rounding_needs_uint8_quantization():
    with pytest.raises(ValueError, match="quantize"):
        Protocol(channels="y", y_rounding="matlab", quantize="float")


# ---------------------------------------------------------------- protocol behaviour
def test_identical_images():
    image = np.random.default_rng(1).random((32, 32, 3))
    for name in PRESETS:
        result = compute_metrics(image, image, name)
        assert math.isinf(result["psnr"]) and abs(result["ssim"] - 1.0) < 1e-12, name


def test_crop_border_equals_cropping_by_hand(pair):
    pred, target = pair
    for name, protocol in PRESETS.items():
        cropped = compute_metrics(pred[5:-5, 5:-5], target[5:-5, 5:-5], protocol)
        assert compute_metrics(pred, target, dataclasses.replace(protocol, crop_border=5)) == cropped, name


def test_quantization_changes_float_inputs_only(pair):
    pred, target = pair
    as_float = psnr(pred, target, Protocol(quantize="float")).value
    as_uint8 = psnr(pred, target, Protocol(quantize="uint8")).value
    assert as_float != as_uint8 and abs(as_float - as_uint8) < 0.1
    p8, t8 = to_uint8(pred), to_uint8(target)
    assert psnr(p8, t8, Protocol(quantize="float")).value == psnr(p8, t8, Protocol(quantize="uint8")).value


def test_results_carry_their_protocol(pair):
    pred, target = pair
    result = ssim(pred, target, "matlab_y_derain")
    assert isinstance(result, MetricResult) and result.name == "ssim"
    record = result.to_dict()
    assert record["protocol"] == {"channels": "y", "y_rounding": "matlab", "crop_border": 0,
                                  "ssim_variant": "gaussian", "quantize": "uint8", "data_range": 255}
    assert Protocol.from_dict(record["protocol"]) == PRESETS["matlab_y_derain"]
    assert float(result) == record["value"]


@pytest.mark.parametrize("kwargs, argument", [
    ({"channels": "ycbcr"}, "channels"), ({"ssim_variant": "ms-ssim"}, "ssim_variant"),
    ({"quantize": "uint16"}, "quantize"), ({"crop_border": -1}, "crop_border"),
    ({"y_rounding": "round"}, "y_rounding"),
])
def test_protocol_rejects_bad_values(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Protocol(**kwargs)


def test_bad_inputs_raise():
    a = np.zeros((16, 16, 3))
    with pytest.raises(ValueError, match="not a preset"):
        get_protocol("matlab")
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, np.zeros((16, 17, 3)), RGB)
    with pytest.raises(ValueError, match="HW"):
        psnr(np.zeros((16, 16, 4)), np.zeros((16, 16, 4)), RGB)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, dataclasses.replace(RGB, crop_border=8))


def test_protocol_from_basicsr_options():
    assert protocol_from_basicsr(test_y_channel=True) == PRESETS["basicsr_y"]
    assert protocol_from_basicsr(ssim_variant="gaussian3d") == PRESETS["nafnet_gaussian3d"]
    assert protocol_from_basicsr(crop_border=4).crop_border == 4

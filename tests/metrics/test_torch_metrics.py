"""The batched torch metrics agree with the numpy reference to 1e-4 for every protocol."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from textualdeg.metrics import PRESETS, Protocol, compute_metrics, compute_metrics_torch, psnr_torch, ssim_torch

PHOTOS = ("astronaut", "coffee", "chelsea")
TOL = 1e-4


def all_protocols() -> list[Protocol]:
    protocols = []
    for channels, y_rounding, variant, quantize, crop in itertools.product(
            ("rgb", "y"), ("float", "matlab"), ("gaussian", "gaussian3d", "skimage"), ("uint8", "float"), (0, 3)):
        if y_rounding == "matlab" and (channels != "y" or quantize != "uint8"):
            continue
        protocols.append(Protocol(channels=channels, y_rounding=y_rounding, crop_border=crop,
                                  ssim_variant=variant, quantize=quantize))
    return protocols


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """(pred, target): (3, 64, 64, 3) float64 crops of three photographs, sigma-20 noise."""
    from skimage import data

    targets = np.stack([getattr(data, name)()[100:164, 100:164] for name in PHOTOS]).astype(np.float64) / 255.0
    rng = np.random.default_rng(0)
    preds = np.clip(targets + rng.normal(0, 20 / 255, targets.shape), 0, 1)
    return preds, targets


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # (B, C, H, W)


@pytest.mark.parametrize("protocol", all_protocols(), ids=lambda p: "-".join(map(str, p.to_dict().values())))
def test_torch_agrees_with_numpy(batch, protocol):
    preds, targets = batch
    got = compute_metrics_torch(nchw(preds).float(), nchw(targets).float(), protocol)
    assert got["psnr"].shape == (3,) and got["ssim"].shape == (3,)
    for i in range(3):
        # float32 tensors as the package passes them; numpy sees the same float32 values
        expected = compute_metrics(preds[i].astype(np.float32), targets[i].astype(np.float32), protocol)
        assert abs(got["psnr"][i].item() - expected["psnr"]) <= TOL
        assert abs(got["ssim"][i].item() - expected["ssim"]) <= TOL


@pytest.mark.parametrize("name", ["nafnet_gaussian3d", "basicsr_rgb", "promptir_skimage", "matlab_y_derain"])
def test_float32_arithmetic_within_tolerance(batch, name):
    preds, targets = nchw(batch[0]).float(), nchw(batch[1]).float()
    exact = compute_metrics_torch(preds, targets, name)
    fast = compute_metrics_torch(preds, targets, name, compute_dtype=torch.float32)
    assert torch.allclose(exact["psnr"], fast["psnr"].double(), atol=TOL, rtol=0)
    assert torch.allclose(exact["ssim"], fast["ssim"].double(), atol=TOL, rtol=0)


def test_gray_and_uint8_batches(batch):
    preds, targets = batch
    gray_p, gray_t = preds[..., :1], targets[..., :1]  # (B, H, W, 1)
    for name in ("basicsr_y", "nafnet_gaussian3d", "promptir_skimage"):
        got = ssim_torch(nchw(gray_p), nchw(gray_t), name)
        for i in range(3):
            assert abs(got[i].item() - compute_metrics(gray_p[i], gray_t[i], name)["ssim"]) <= TOL
    p8 = torch.from_numpy(np.round(preds * 255).astype(np.uint8)).permute(0, 3, 1, 2)
    t8 = torch.from_numpy(np.round(targets * 255).astype(np.uint8)).permute(0, 3, 1, 2)
    assert torch.allclose(psnr_torch(p8, t8, "basicsr_rgb"), psnr_torch(nchw(preds), nchw(targets), "basicsr_rgb"))


def test_identical_and_errors(batch):
    x = nchw(batch[1])
    assert torch.isinf(psnr_torch(x, x, "basicsr_rgb")).all()
    assert torch.allclose(ssim_torch(x, x, PRESETS["nafnet_gaussian3d"]), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_torch(x, x[:, :, 1:], "basicsr_rgb")
    with pytest.raises(ValueError, match="B, C, H, W"):
        psnr_torch(x[0], x[0], "basicsr_rgb")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu(batch):
    preds, targets = nchw(batch[0]).float(), nchw(batch[1]).float()
    for name in PRESETS:
        cpu = compute_metrics_torch(preds, targets, name)
        gpu = compute_metrics_torch(preds.cuda(), targets.cuda(), name)
        assert gpu["ssim"].device.type == "cuda"
        assert torch.allclose(cpu["ssim"], gpu["ssim"].cpu(), atol=1e-6)
        assert torch.allclose(cpu["psnr"], gpu["psnr"].cpu(), atol=1e-6)

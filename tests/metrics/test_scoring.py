"""score(): the one metric dispatch of validation and evaluation; metric_kind(): option-file names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textualdeg.metrics import PRESETS, compute_metrics, metric_kind, psnr, score, ssim


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A (3, 40, 52) photograph crop and a noisy, slightly out-of-range version of it."""
    from skimage import data

    gt = torch.from_numpy(data.astronaut()[100:140, 120:172].astype(np.float32) / 255.0).permute(2, 0, 1)
    out = gt + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    return out, gt


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_cpu_scores_are_the_numpy_reference(pair, preset):
    out, gt = pair
    expected = compute_metrics(np.clip(_hwc(out), 0, 1), _hwc(gt), preset)
    assert score(out[None], gt, preset) == expected  # (1, C, H, W) against (C, H, W)
    assert score(out, gt[None], preset, ("psnr",)) == {"psnr": psnr(_hwc(out), _hwc(gt), preset).value}
    assert score(out, gt, preset, ["ssim"]) == {"ssim": ssim(_hwc(out), _hwc(gt), preset).value}


def test_bad_inputs_are_named(pair):
    out, gt = pair
    with pytest.raises(ValueError, match="one image"):
        score(torch.stack([out, out]), torch.stack([gt, gt]), "textualdeg")
    with pytest.raises(ValueError, match="lpips"):
        score(out, gt, "textualdeg", ("psnr", "lpips"))
    with pytest.raises(TypeError, match="target"):
        score(out, _hwc(gt), "textualdeg")


def test_metric_kind_reads_option_file_names():
    assert [metric_kind(t) for t in ("calculate_psnr", "psnr", "calculate_ssim", "ssim")] == ["psnr"] * 2 + ["ssim"] * 2
    with pytest.raises(ValueError, match=r"val\.metrics\.niqe\.type='calculate_niqe'"):
        metric_kind("calculate_niqe", "val.metrics.niqe.type")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_scores_equal_cpu_scores(pair):
    out, gt = pair
    for name in PRESETS:
        cpu, gpu = score(out, gt, name), score(out.cuda(), gt, name)
        assert abs(cpu["psnr"] - gpu["psnr"]) <= 1e-9 and abs(cpu["ssim"] - gpu["ssim"]) <= 1e-9
        assert abs(score(out.cuda(), gt, name, ("ssim",))["ssim"] - cpu["ssim"]) <= 1e-9

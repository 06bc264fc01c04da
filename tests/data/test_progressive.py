"""Restormer-style progressive schedule and batch cropping."""

from __future__ import annotations

import pytest
import torch

from textualdeg.data import ProgressiveSchedule, crop_batch


def test_schedule_stages_follow_cumulative_iters():
    schedule = ProgressiveSchedule(iters=[92000, 64000, 48000], gt_sizes=[128, 160, 192], batch_sizes=[8, 5, 4])
    assert schedule(1) == (128, 8)
    assert schedule(92000) == (128, 8)
    assert schedule(92001) == (160, 5)
    assert schedule(156000) == (160, 5)
    assert schedule(156001) == (192, 4)
    assert schedule(10**7) == (192, 4)  # past the end: the last stage
    assert (schedule.max_gt_size, schedule.max_batch_size) == (192, 8)


def test_schedule_rejects_inconsistent_lists():
    with pytest.raises(ValueError, match="equal lengths"):
        ProgressiveSchedule([10, 10], [64], [4, 2])
    with pytest.raises(ValueError, match="gt_sizes"):
        ProgressiveSchedule([10], [0], [4])


def _batch(b=6, size=32):
    lq = torch.arange(b * 3 * size * size, dtype=torch.float32).view(b, 3, size, size)
    return {"lq": lq, "gt": lq + 0.5, "ref": lq * 2, "lq_path": [f"img{i}" for i in range(b)],
            "task": [f"t{i}" for i in range(b)]}


def test_crop_batch_subsets_everything_and_crops_one_window():
    batch = _batch()
    out = crop_batch(batch, gt_size=16, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert out["lq"].shape == out["gt"].shape == (4, 3, 16, 16)
    assert out["ref"].shape == (4, 3, 32, 32)  # whole guidance: subset, not cropped
    torch.testing.assert_close(out["gt"], out["lq"] + 0.5)
    kept = [int(p[3:]) for p in out["lq_path"]]
    assert out["task"] == [f"t{i}" for i in kept]
    torch.testing.assert_close(out["ref"], batch["ref"][kept])  # D20: the guidance follows the subset
    # one window for the whole batch, taken from the same samples
    flat = out["lq"][:, 0, 0, 0]
    offsets = flat - batch["lq"][kept, 0, 0, 0]
    assert torch.all(offsets == offsets[0])


def test_crop_batch_crops_an_aligned_reference_when_asked():
    batch = _batch()
    out = crop_batch(batch, gt_size=8, batch_size=6, generator=torch.Generator().manual_seed(1), crop_ref=True)
    torch.testing.assert_close(out["ref"], out["lq"] * 2)
    with pytest.raises(ValueError, match="crop_ref"):
        crop_batch({**batch, "ref": batch["ref"][..., :20, :20]}, 8, 6, crop_ref=True)


def test_crop_batch_noop_and_errors():
    batch = _batch()
    out = crop_batch(batch, gt_size=32, batch_size=6)
    assert out["lq"] is batch["lq"]
    with pytest.raises(ValueError, match="gt_size"):
        crop_batch(batch, gt_size=40, batch_size=6)
    with pytest.raises(ValueError, match="batch_size"):
        crop_batch(batch, gt_size=16, batch_size=7)

"""Tests of the guidance-stage datasets and sampler (textualdeg.guidance.data). Paper: arXiv:2312.17334."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from textualdeg.guidance.data import (
    CleanImageDataset,
    EpochSampler,
    GuidanceInputDataset,
    TaskPairDataset,
    crop_window,
    resize_bicubic,
)
from textualdeg.imageio import ImageReadError, image_to_tensor, read_image, write_image


def _photo(name: str, step: int = 2) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)()[::step, ::step]).astype(np.float32) / 255.0  # (H, W, 3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """target/ and input/ (same stems; input = darkened target) plus a second clean folder."""
    root = tmp_path_factory.mktemp("guidance_data")
    for name in ("astronaut", "coffee", "chelsea"):  # 256x256, 200x300, 150x225
        clean = _photo(name)
        write_image(root / "target" / f"{name}.png", clean)
        write_image(root / "input" / f"{name}.png", clean * 0.5)
    write_image(root / "more" / "rocket.png", _photo("rocket"))  # 214x320
    return root


def test_clean_dataset_item_shapes_ranges_and_determinism(folders):
    ds = CleanImageDataset([folders / "target", folders / "more"], crop_size=96, resolution=64, clip_size=224, seed=3)
    assert len(ds) == 4
    item = ds[(0, 1)]
    assert item["target"].shape == (3, 64, 64) and item["clip_input"].shape == (3, 224, 224)
    for key in ("target", "clip_input"):
        assert item[key].dtype == torch.float32 and 0.0 <= item[key].min() and item[key].max() <= 1.0
    assert item["target"].std() > 0.05  # a real image crop, not the authors' blank image (D8)
    again = ds[(0, 1)]
    assert torch.equal(item["target"], again["target"])
    other_epoch = ds[(1, 1)]
    assert not torch.equal(item["target"], other_epoch["target"])


def test_clean_dataset_crop_is_a_window_of_the_image(folders):
    ds = CleanImageDataset(folders / "target", crop_size=64, resolution=64, clip_size=64, seed=0)
    index = [p.stem for p in ds.paths].index("coffee")
    item = ds[(2, index)]
    image = image_to_tensor(read_image(ds.paths[index]))  # (3, 200, 300)
    corners = image[:, :-60, :-60].unfold(1, 4, 1).unfold(2, 4, 1)  # (3, 137, 237, 4, 4)
    diff = (corners - item["target"][:, None, None, :4, :4]).abs().amax(dim=(0, 3, 4))  # (137, 237)
    top, left = divmod(int(diff.argmin()), diff.shape[1])
    assert torch.equal(item["target"], image[:, top : top + 64, left : left + 64])


def test_small_image_gives_its_central_square(folders):
    ds = CleanImageDataset(folders / "target", crop_size=512, resolution=64, clip_size=64, seed=0)
    index = [p.stem for p in ds.paths].index("coffee")
    image = image_to_tensor(read_image(ds.paths[index]))  # (3, 200, 300)
    expected = resize_bicubic(image[:, :, 50:250], 64)
    assert torch.allclose(ds[(0, index)]["target"], expected)


def test_crop_window_stays_inside_non_square_images():
    rng = np.random.default_rng(0)
    for height, width in ((300, 700), (700, 300)):
        for _ in range(200):
            top, left, side = crop_window(height, width, 256, rng)
            assert side == 256 and 0 <= top <= height - 256 and 0 <= left <= width - 256


def test_unreadable_image_names_the_file(folders, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = CleanImageDataset(tmp_path, crop_size=64, resolution=64)
    with pytest.raises(ImageReadError, match="broken.png"):
        ds[0]


def test_task_pairs_sample_tasks_uniformly_and_clip_sees_lq(folders):
    ds = TaskPairDataset(
        task_list=["deblur", "denoise"],
        dataroot_gt=[folders / "target", folders / "target"],
        dataroot_lq=[folders / "input", None],
        crop_size=64,
        resolution=64,
        clip_size=64,
        seed=1,
    )
    assert len(ds) == 6
    tasks = [ds[(i // 6, i % 6)]["task"] for i in range(120)]  # 20 epochs
    share = tasks.count("denoise") / len(tasks)
    assert 0.35 < share < 0.65  # both tasks, about half each (the authors' code used one, D10)
    for i in range(6):
        item = ds[(0, i)]
        assert torch.equal(item["clip_input"], item["input"])  # CLIP sees the degraded crop
        if item["task"] == "deblur":  # input = 0.5 x target, paired by stem
            assert torch.allclose(item["input"], item["target"] * 0.5, atol=1.5 / 255)
        else:  # synthetic noise, sigma <= 50/255, 8-bit
            residual = item["input"] - item["target"]
            assert 0 < residual.std() < 60 / 255
            assert torch.allclose(item["input"] * 255, (item["input"] * 255).round(), atol=1e-3)


def test_task_pairs_reject_bad_layouts(folders, tmp_path):
    with pytest.raises(ValueError, match="denoise"):
        TaskPairDataset(["denoise"], [folders / "target"], [folders / "input"], crop_size=64, resolution=64)
    with pytest.raises(ValueError, match="deblur"):
        TaskPairDataset(["deblur"], [folders / "target"], [None], crop_size=64, resolution=64)
    write_image(tmp_path / "lq" / "astronaut.png", _photo("astronaut"))
    write_image(tmp_path / "lq" / "unmatched.png", _photo("astronaut"))
    with pytest.raises(ValueError, match="unmatched.png"):
        TaskPairDataset(["derain"], [folders / "target"], [tmp_path / "lq"], crop_size=64, resolution=64)


def test_guidance_inputs_are_central_squares(folders):
    paths = sorted((folders / "target").glob("*.png"))
    ds = GuidanceInputDataset(paths, clip_size=32)
    item = ds[[p.stem for p in paths].index("chelsea")]
    image = image_to_tensor(read_image(folders / "target" / "chelsea.png"))  # (3, 150, 226)
    left = (image.shape[2] - 150) // 2
    assert item["stem"] == "chelsea"
    assert torch.allclose(item["clip_input"], resize_bicubic(image[:, :, left : left + 150], 32))
    assert not torch.allclose(item["clip_input"], resize_bicubic(image[:, :, :150], 32), atol=1e-2)


def test_epoch_sampler_whole_batches_and_seeded_order():
    sampler = EpochSampler(10, global_batch=4, seed=5)
    assert len(sampler) == 8
    first = list(sampler)
    assert all(epoch == 0 for epoch, _ in first) and len(set(i for _, i in first)) == 8
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in first]
    with pytest.raises(ValueError, match="global batch"):
        EpochSampler(3, global_batch=4)

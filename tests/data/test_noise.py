"""On-the-fly Gaussian denoising dataset and the seeded validation/test noise: levels, seeding, guidance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from textualdeg.data import GaussianDenoisingRefDataset
from textualdeg.data.degradations import add_seeded_noise
from textualdeg.imageio import read_image, write_image
from textualdeg.registry import DATASET_REGISTRY


@pytest.fixture()
def clean_folder(tmp_path):
    for name in ("astronaut", "coffee", "camera"):
        image = getattr(skdata, name)()[::4, ::4]
        image = image.astype(np.float32) / 255.0
        write_image(tmp_path / "gt" / f"{name}.png", image)
        write_image(tmp_path / "ref" / f"{name}.png", image[::2, ::2])
    return tmp_path


def _noise_std(item) -> float:
    return float((item["lq"] - item["gt"]).std())


def test_fixed_sigma_noise_has_that_level(clean_folder):
    ds = GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), dataroot_ref=str(clean_folder / "ref"),
                                     gt_size=64, sigma_range=25)
    for i in range(len(ds)):
        item = ds[i]
        assert item["lq"].shape == item["gt"].shape == (3, 64, 64)
        assert _noise_std(item) == pytest.approx(25 / 255, rel=0.1)
        assert item["ref"].shape[0] == 3
    assert (ds[0]["lq"] < 0).any() or (ds[0]["lq"] > 1).any()  # not clipped, as the authors


def test_blind_range_draws_different_levels(clean_folder):
    ds = GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), gt_size=64,
                                     sigma_type="random", sigma_range=[0, 50], clip_noise=True)
    levels = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        levels += [_noise_std(ds[i]) * 255 for i in range(len(ds))]
    assert 0 <= min(levels) and max(levels) <= 52
    assert max(levels) - min(levels) > 10
    assert all(0 <= float(ds[i]["lq"].min()) and float(ds[i]["lq"].max()) <= 1 for i in range(len(ds)))


def test_validation_noise_is_the_evaluation_noise_of_each_stem(clean_folder):
    ds = GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), phase="val", sigma_test=50)
    for i in range(len(ds)):
        item = ds[i]
        gt = read_image(item["gt_path"])
        expected = add_seeded_noise(gt, 50, stem=Path(item["gt_path"]).stem)  # evaluation's default noise
        assert np.array_equal(item["lq"].permute(1, 2, 0).numpy(), expected)
        torch.testing.assert_close(ds[i]["lq"], item["lq"], atol=0, rtol=0)  # the same every time
    noise = [(ds[i]["lq"] - ds[i]["gt"])[:, :16, :16] for i in range(len(ds))]
    assert not torch.equal(noise[0], noise[1])  # every image its own noise


def test_validation_noise_can_be_the_authors_seeded_noise(clean_folder):
    ds = GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), phase="val", sigma_test=50,
                                     val_noise_seed_mode="fixed")
    item = ds[0]
    gt = item["gt"].permute(1, 2, 0).numpy()
    np.random.seed(0)
    expected = gt + np.random.normal(0, 50 / 255.0, gt.shape)
    np.testing.assert_allclose(item["lq"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="val_noise_seed_mode"):
        GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), val_noise_seed_mode="order")


def test_gray_noise_is_one_channel_or_replicated_for_a_three_channel_network(clean_folder):
    gray = GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), dataroot_ref=str(clean_folder / "ref"),
                                       gt_size=32, in_ch=1, sigma_range=15)[1]
    assert gray["lq"].shape == gray["gt"].shape == (1, 32, 32) and gray["ref"].shape[0] == 1
    ds = GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), gt_size=32, in_ch=1, sigma_range=15,
                                     gray_to_rgb=True)
    item = ds[1]
    assert item["lq"].shape == (3, 32, 32)
    torch.testing.assert_close(item["lq"][0], item["lq"][1])
    torch.testing.assert_close(item["lq"][:1], gray["lq"])  # the same noisy gray image, three times


def test_missing_guidance_is_listed(clean_folder):
    (clean_folder / "ref" / "coffee.png").unlink()
    with pytest.raises(ValueError, match="coffee.png"):
        GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), dataroot_ref=str(clean_folder / "ref"))


def test_bad_sigma_options(clean_folder):
    with pytest.raises(ValueError, match="sigma_type"):
        GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), sigma_type="blind")
    with pytest.raises(ValueError, match="sigma_range"):
        GaussianDenoisingRefDataset(dataroot_gt=str(clean_folder / "gt"), sigma_type="random", sigma_range=[50, 0])


def test_registered_under_the_authors_name():
    assert DATASET_REGISTRY.get("Dataset_GaussianDenoisingWithRef") is GaussianDenoisingRefDataset

"""All-in-one task mixture: sampling ratios, determinism, folder keys, batching."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from skimage import data as skdata

from textualdeg.data import AllInOneRefDataset, MixtureDataset
from textualdeg.data.degradations import synthetic_haze, synthetic_rain
from textualdeg.imageio import write_image
from textualdeg.registry import DATASET_REGISTRY


class _Constant(torch.utils.data.Dataset):
    """A stand-in component: items say which component and index they came from."""

    def __init__(self, tag: int, size: int) -> None:
        self.tag, self.size, self.epoch = tag, size, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int, rng: np.random.Generator) -> dict:
        return {"tag": self.tag, "index": index, "draw": float(rng.random())}


def test_sampling_follows_the_ratios():
    mix = MixtureDataset([_Constant(0, 5), _Constant(1, 7), _Constant(2, 3)], ["a", "b", "c"],
                         ratios=[0.5, 0.3, 0.2], length=6000, seed=3)
    counts = Counter(mix[i]["tag"] for i in range(len(mix)))
    for tag, ratio in enumerate([0.5, 0.3, 0.2]):
        assert counts[tag] / 6000 == pytest.approx(ratio, abs=0.025)
    assert {mix[i]["task"] for i in range(50)} == {"a", "b", "c"}
    assert all(mix[i]["index"] < (5, 7, 3)[mix[i]["tag"]] for i in range(200))


def test_mixture_is_a_function_of_seed_epoch_index():
    def build(seed):
        return MixtureDataset([_Constant(0, 4), _Constant(1, 4)], ["a", "b"], length=64, seed=seed)

    one, two = build(1), build(1)
    assert [one[i] for i in range(64)] == [two[i] for i in reversed(range(64))][::-1]
    assert one.task_of(10) == one[10]["task"]
    before = [one[i]["tag"] for i in range(64)]
    one.set_epoch(1)
    assert [one[i]["tag"] for i in range(64)] != before
    assert one.datasets[0].epoch == 1  # propagated
    assert [build(2)[i]["tag"] for i in range(64)] != before


def test_bad_ratios_are_rejected():
    with pytest.raises(ValueError, match="ratios"):
        MixtureDataset([_Constant(0, 2)], ["a"], ratios=[1, 2])
    with pytest.raises(ValueError, match="ratios"):
        MixtureDataset([_Constant(0, 2), _Constant(1, 2)], ["a", "b"], ratios=[0, 0])


@pytest.fixture()
def three_task_root(tmp_path):
    rng = np.random.default_rng(0)
    photos = {name: getattr(skdata, name)()[::6, ::6, :3].astype(np.float32) / 255.0
              for name in ("astronaut", "chelsea", "coffee", "rocket")}
    for name in ("astronaut", "chelsea"):
        write_image(tmp_path / "denoise" / "gt" / f"{name}.png", photos[name])
        write_image(tmp_path / "denoise" / "ref" / f"{name}.png", photos[name])
    for name in ("coffee", "rocket"):
        write_image(tmp_path / "derain" / "gt" / f"{name}.png", photos[name])
        write_image(tmp_path / "derain" / "lq" / f"{name}.png", synthetic_rain(photos[name], rng))
        write_image(tmp_path / "derain" / "ref" / f"{name}.png", photos[name])
    write_image(tmp_path / "dehaze" / "gt" / "0001.png", photos["chelsea"])
    write_image(tmp_path / "dehaze" / "ref" / "0001.png", photos["chelsea"])
    for i in range(3):
        write_image(tmp_path / "dehaze" / "lq" / f"0001_{i}.png", synthetic_haze(photos["chelsea"], rng))
    return tmp_path


def test_three_task_mixture_from_root_folders(three_task_root):
    root = three_task_root
    ds = DATASET_REGISTRY.build({
        "type": "Dataset_PairedUnifiedWithRef", "denoise_root": str(root / "denoise"),
        "derain_root": str(root / "derain"), "dehaze_root": str(root / "dehaze"),
        "gt_size": 32, "ref_crop": "resize", "ref_size": 32, "seed": 7, "name": "train", "phase": "train"})
    assert ds.names == ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"]
    assert len(ds) == 2 + 2 + 3  # clean denoise images + derain pairs + dehaze pairs
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    assert batch["lq"].shape == batch["gt"].shape == batch["ref"].shape == (7, 3, 32, 32)
    for task, lq, gt in zip(batch["task"], batch["lq"], batch["gt"]):
        if task.startswith("denoise_"):
            assert float((lq - gt).std()) * 255 == pytest.approx(float(task.split("_")[1]), rel=0.25)
        elif task == "dehaze":
            assert float(lq.mean()) > float(gt.mean())  # haze brightens


def test_three_task_mixture_from_explicit_folders_and_tasks(three_task_root):
    root = three_task_root
    ds = AllInOneRefDataset(
        dataroot_denoise_gt=str(root / "denoise" / "gt"), derain_root=[str(root / "derain" / "lq"),
                                                                        str(root / "derain" / "gt")],
        tasks=["denoise_25", "derain"], task_ratios=[3, 1], dataset_length=400, gt_size=24)
    counts = Counter(ds.task_of(i) for i in range(len(ds)))
    assert counts["denoise_25"] / 400 == pytest.approx(0.75, abs=0.07)
    assert "ref" not in ds[0]
    with pytest.raises(ValueError, match="derain"):
        AllInOneRefDataset(dataroot_denoise_gt=str(root / "denoise" / "gt"), tasks=["derain"])
    with pytest.raises(ValueError, match="task_ratios"):
        AllInOneRefDataset(dataroot_denoise_gt=str(root / "denoise" / "gt"), task_ratios=[1, 1])
    with pytest.raises(ValueError, match="unknown task"):
        AllInOneRefDataset(dataroot_denoise_gt=str(root / "denoise" / "gt"), tasks=["deblur"])


def test_blind_denoising_task_draws_sigma_in_its_range(three_task_root):
    """``denoise_0-55``: DSRIR's blind training noise, sigma uniform in [0, 55] per image."""
    ds = AllInOneRefDataset(dataroot_denoise_gt=str(three_task_root / "denoise" / "gt"), tasks=["denoise_5-50"],
                            dataset_length=40, gt_size=32, phase="train", seed=3)
    stds = [float((item["lq"] - item["gt"]).std()) * 255 for item in (ds[i] for i in range(len(ds)))]
    assert 2 < min(stds) < 15 and 40 < max(stds) < 60  # spread over the range, not one level
    for bad in ("denoise_50-5", "denoise_a-b", "denoise_1-2-3"):
        with pytest.raises(ValueError, match="needs a sigma .* or a range low-high"):
            AllInOneRefDataset(dataroot_denoise_gt=str(three_task_root / "denoise" / "gt"), tasks=[bad])

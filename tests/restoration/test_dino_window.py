"""DINOv2 window selection: the selection math, and the batched choice in the training step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from textualdeg.data.transforms import Dihedral, resize_image
from textualdeg.imageio import write_image
from textualdeg.pretrained.dinov2 import save_tiny_dinov2
from textualdeg.restoration.dino_window import DinoWindowSelector, select_reference_windows, window_offsets


def _photo(step: int) -> torch.Tensor:
    """The astronaut photograph as (1, 3, H, W) in [0, 1]."""
    image = skdata.astronaut()[::step, ::step].astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()


def _pool_features(x: torch.Tensor) -> torch.Tensor:
    """A stub extractor: 4x4 average colours as tokens, centred. (N, 3, H, W) -> (N, P, 3)."""
    return F.avg_pool2d(x, 4).flatten(2).transpose(1, 2) - 0.5


# -- selection math (no transformers) ----------------------------------------------------
def test_offsets_cover_the_last_window():
    assert window_offsets(512, 384, 96).tolist() == [0, 96, 128]  # the authors try 0 and 96 only (D24)
    assert window_offsets(512, 384, 96, cover_edge=False).tolist() == [0, 96]
    assert window_offsets(512, 256, 64).tolist() == [0, 64, 128, 192, 256]
    with pytest.raises(ValueError, match="longer"):
        window_offsets(100, 101, 10)


def test_selection_finds_each_samples_window_including_the_edge():
    ref = _photo(8).repeat(3, 1, 1, 1)  # (3, 3, 64, 64)
    spots = [(0, 0), (18, 30), (40, 40)]  # window 24, stride 6: (40, 40) exists only as the edge offset
    lq = torch.stack([ref[i, :, y : y + 24, x : x + 24] for i, (y, x) in enumerate(spots)])
    selector = DinoWindowSelector(_pool_features, patch_size=4)
    crops, offsets, scores = selector.select(lq, ref)
    assert offsets.tolist() == [list(s) for s in spots]
    torch.testing.assert_close(crops, lq)
    assert scores.shape == (3, 8 * 8) and torch.allclose(scores.max(dim=1).values, torch.ones(3))
    no_edges = DinoWindowSelector(_pool_features, patch_size=4, cover_edges=False)
    assert no_edges.select(lq, ref)[1][2].tolist() != [40, 40]


def test_selection_with_a_scaled_window_and_gray_input():
    full = _photo(4)  # 128 x 128
    ref = F.interpolate(full, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)  # 64 x 64
    lq = full[:, :, 48:96, 32:80]  # 48 x 48 at (48, 32) -> (24, 16) in the half-size reference
    selector = DinoWindowSelector(_pool_features, patch_size=4, stride_divisor=3)
    crops, offsets, _ = selector.select(lq, ref, window=(24, 24))
    assert offsets.tolist() == [[24, 16]] and crops.shape == (1, 3, 48, 48)
    gray = DinoWindowSelector(_pool_features, patch_size=4, stride_divisor=3)
    assert gray.select(lq.mean(1, keepdim=True), ref.mean(1, keepdim=True), window=(24, 24))[1].tolist() == [[24, 16]]


def test_a_reference_smaller_than_the_window_is_enlarged():
    ref = _photo(16)  # 32 x 32
    lq = _photo(8)[:, :, :48, :48]
    crops = DinoWindowSelector(_pool_features, patch_size=4)(lq, ref)
    assert crops.shape == (1, 3, 48, 48)
    with pytest.raises(ValueError, match="channels"):
        DinoWindowSelector(_pool_features)(lq, ref[:, :2])



def test_importing_restoration_does_not_import_transformers():
    code = ("import sys, textualdeg.restoration, textualdeg.restoration.dino_window, textualdeg.data, "
            "textualdeg.restoration.train; "
            "sys.exit(int('transformers' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"), seed=3)


def test_tiny_dinov2_finds_the_window_in_a_shifted_resized_reference(tiny_dino):
    full = _photo(2)  # 256 x 256
    shifted = full[:, :, 16:240, 24:248]  # the reference shows the scene moved by (-16, -24)
    ref = F.interpolate(shifted, size=(168, 168), mode="bilinear", antialias=True, align_corners=False)  # x0.75
    selector = DinoWindowSelector.from_pretrained(tiny_dino)
    generator = torch.Generator().manual_seed(0)
    for y, x in [(16, 24), (80, 120), (176, 184), (128, 72)]:
        lq = (full[:, :, y : y + 64, x : x + 64] + 0.05 * torch.randn(1, 3, 64, 64, generator=generator)).clamp(0, 1)
        _, offsets, _ = selector.select(lq, ref, window=(48, 48))
        assert offsets.tolist() == [[round((y - 16) * 0.75), round((x - 24) * 0.75)]]


# -- the choice in the training step ------------------------------------------------------
def _write_photos(root: Path, ref_scales: dict[str, float]) -> None:
    """gt/lq/ref folders: LQ = 0.5 * GT + 0.25, the reference the clean photo resized."""
    for name, scale in ref_scales.items():
        image = getattr(skdata, name)()[::6, ::6, :3].astype(np.float32) / 255.0
        h, w = image.shape[:2]
        write_image(root / "gt" / f"{name}.png", image)
        write_image(root / "lq" / f"{name}.png", 0.5 * image + 0.25)
        write_image(root / "ref" / f"{name}.png", resize_image(image, (round(h * scale), round(w * scale))))


def _old_dataset_path(selector, item_plain, item_dino, image_hw, dino_window):
    """The window the dataset chose before the choice moved to the step (same crop and flips).

    ``item_plain`` is the same item without flips and with the whole reference: the
    selection ran on the unaugmented crop, and the flips/rotation were applied to the window.
    """
    lq, ref = item_plain["lq"], item_plain["ref"]
    h, w = lq.shape[-2:]
    if dino_window == "relative":
        window = (max(1, round(h * ref.shape[-2] / image_hw[0])), max(1, round(w * ref.shape[-1] / image_hw[1])))
    else:
        window = (h, w)
    crop = selector(lq[None], ref[None], window)[0]  # (C, h, w)
    aug = Dihedral(*item_dino["dihedral"].tolist())
    return torch.from_numpy(aug(crop.permute(1, 2, 0).numpy())).permute(2, 0, 1)  # (C, h, w)


@pytest.mark.parametrize("dino_window", ["crop", "relative"])
def test_step_choice_equals_the_old_per_sample_dataset_choice(tiny_dino, tmp_path, dino_window):
    """Batched, with references of three sizes (a list): the same windows as the per-sample path."""
    from textualdeg.data import PairedImageRefDataset, collate_guided

    _write_photos(tmp_path, {"astronaut": 1.0, "chelsea": 1.5, "coffee": 0.8})
    roots = {f"dataroot_{k}": str(tmp_path / k) for k in ("gt", "lq", "ref")}
    dino = PairedImageRefDataset(**roots, gt_size=28, ref_crop="dino", dino_window=dino_window, seed=4)
    plain = PairedImageRefDataset(**roots, gt_size=28, ref_crop="full", use_hflip=False, use_rot=False, seed=4)
    selector = DinoWindowSelector.from_pretrained(tiny_dino)
    seen = set()
    for epoch in range(3):
        dino.set_epoch(epoch)
        plain.set_epoch(epoch)
        items = [dino[i] for i in range(len(dino))]
        batch = collate_guided(items)
        assert isinstance(batch["ref"], list)  # three reference sizes
        out = select_reference_windows(selector, batch)
        assert not set(out) & {"dihedral", "ref_dihedral", "window_ratio"} and out["ref"].shape == (3, 3, 28, 28)
        for i, item in enumerate(items):
            torch.testing.assert_close(item["lq"], _aug_chw(item, plain[i]["lq"]))  # same crop and flips
            gt = getattr(skdata, Path(item["gt_path"]).stem)()[::6, ::6]
            old = _old_dataset_path(selector, plain[i], item, gt.shape[:2], dino_window)
            torch.testing.assert_close(out["ref"][i], old, rtol=0, atol=1e-6)
            seen.add(tuple(item["dihedral"].tolist()))
    assert len(seen) > 2  # several flips/rotations were undone and redone


def _aug_chw(item: dict, image: torch.Tensor) -> torch.Tensor:
    """``image`` (C, h, w) with the item's flips/rotation, through the numpy ``Dihedral``."""
    aug = Dihedral(*item["dihedral"].tolist())
    return torch.from_numpy(aug(image.permute(1, 2, 0).numpy())).permute(2, 0, 1)


def test_tensor_dihedral_matches_the_numpy_one_and_inverts():
    image = torch.rand(2, 5, 7)  # (C, H, W), not square
    for flags in [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)]:
        aug = Dihedral(*flags)
        expected = torch.from_numpy(aug(image.permute(1, 2, 0).numpy())).permute(2, 0, 1)
        torch.testing.assert_close(aug.apply_chw(image), expected)
        torch.testing.assert_close(aug.apply_chw(aug.apply_chw(image), inverse=True), image)


def test_step_choice_of_dual_pixel_and_gray_batches_and_augment_ref_off():
    """[L, R] LQ: the mean of the views is compared; gray: one channel; augment_ref off: no flips."""
    ref = _photo(8).repeat(2, 1, 1, 1)  # (2, 3, 64, 64)
    crops = ref[:, :, 20:44, 8:32]  # the window at (20, 8) for both samples
    flags = torch.tensor([[True, False, True], [False, True, False]])
    lq = torch.stack([Dihedral(*f).apply_chw(c) for f, c in zip(flags.tolist(), crops)])
    selector = DinoWindowSelector(_pool_features, patch_size=4, stride_divisor=6)  # stride 4: (20, 8) is on the grid
    batch = {"lq": torch.cat([lq * 0.9, lq * 1.1], dim=1), "ref": ref, "dihedral": flags, "ref_dihedral": flags,
             "window_ratio": torch.ones(2, 4, dtype=torch.long)}
    torch.testing.assert_close(select_reference_windows(selector, batch)["ref"], lq)
    gray = {**batch, "lq": lq.mean(1, keepdim=True), "ref": ref.mean(1, keepdim=True)}
    torch.testing.assert_close(select_reference_windows(selector, gray)["ref"], lq.mean(1, keepdim=True))
    plain = {**batch, "lq": lq, "ref_dihedral": torch.zeros_like(flags)}
    torch.testing.assert_close(select_reference_windows(selector, plain)["ref"], crops)


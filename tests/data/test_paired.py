"""Paired LQ/GT/guidance datasets: stem matching, bad input, bit depth, aligned crops."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from textualdeg.data import PairedDehazeRefDataset, PairedImageRefDataset, build_dataset, pair_folders
from textualdeg.data.guided_base import GuidedDatasetBase
from textualdeg.imageio import ImageReadError, write_image
from textualdeg.registry import DATASET_REGISTRY
from textualdeg.data.guided_base import DINO_KEYS, collate_guided
from textualdeg.restoration.dino_window import DinoWindowSelector, select_reference_windows

PHOTOS = ("astronaut", "chelsea", "coffee")


def _photo(name: str, step: int = 6) -> np.ndarray:
    """A small scikit-image photograph, float32 RGB in [0, 1]."""
    return skdata.__getattribute__(name)()[::step, ::step, :3].astype(np.float32) / 255.0


def _degrade(image: np.ndarray) -> np.ndarray:
    """A pixel-wise degradation that survives 8-bit rounding recognisably."""
    return 0.5 * image + 0.25


def _write_set(root: Path, gt_stems: dict[str, str], lq_tmpl: str = "{}", ref: bool = True) -> Path:
    """Write gt/<stem>.png, lq/<tmpl(stem)>.png (degraded) and ref/<tmpl(stem)>.jpg."""
    for stem, photo in gt_stems.items():
        image = _photo(photo)
        write_image(root / "gt" / f"{stem}.png", image)
        write_image(root / "lq" / f"{lq_tmpl.format(stem)}.png", _degrade(image))
        if ref:
            write_image(root / "ref" / f"{lq_tmpl.format(stem)}.jpg", image[::-1])
    return root


def _dataset(root: Path, **kwargs) -> PairedImageRefDataset:
    args = dict(dataroot_gt=str(root / "gt"), dataroot_lq=str(root / "lq"), dataroot_ref=str(root / "ref"))
    args.update(kwargs)
    return PairedImageRefDataset(**args)


def test_pairs_by_stem_not_by_sorted_order(tmp_path):
    # GT stems sort as 1, 10, 2; LQ stems (template "{}x2") sort as 10x2, 1x2, 2x2.
    root = _write_set(tmp_path, {"1": "astronaut", "10": "chelsea", "2": "coffee"}, lq_tmpl="{}x2")
    ds = _dataset(root, phase="val", filename_tmpl="{}x2")
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        assert Path(item["lq_path"]).stem == Path(item["gt_path"]).stem + "x2"
        assert Path(item["ref_path"]).stem == Path(item["lq_path"]).stem
        torch.testing.assert_close(item["lq"], _degrade(item["gt"]), atol=1.5 / 255, rtol=0)
        assert item["ref"].shape == item["gt"].shape  # the guidance image is passed whole in val


def test_unmatched_files_are_listed(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut", "b": "chelsea", "c": "coffee"})
    (root / "lq" / "b.png").unlink()
    write_image(root / "lq" / "stray.png", _photo("astronaut"))
    (root / "ref" / "c.jpg").unlink()
    with pytest.raises(ValueError) as err:
        _dataset(root)
    message = str(err.value)
    assert "stray.png" in message  # LQ without GT
    assert "b.png" in message  # GT without LQ
    assert "c.png" in message and "guidance" in message  # LQ without guidance


def test_duplicate_stems_rejected(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut"})
    write_image(root / "gt" / "a.jpg", _photo("astronaut"))
    with pytest.raises(ValueError, match="a.png / a.jpg|a.jpg / a.png"):
        _dataset(root)


def test_size_mismatch_names_both_files(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut", "b": "chelsea"})
    write_image(root / "lq" / "b.png", _photo("chelsea", step=7))
    ds = _dataset(root, phase="val")
    index = [Path(p.gt).stem for p in ds.items].index("b")
    with pytest.raises(ValueError) as err:
        ds[index]
    assert str(root / "lq" / "b.png") in str(err.value) and str(root / "gt" / "b.png") in str(err.value)


def test_corrupt_image_raises_or_is_skipped(tmp_path, caplog):
    root = _write_set(tmp_path, {"a": "astronaut", "b": "chelsea", "c": "coffee"})
    good = (root / "lq" / "b.png").read_bytes()
    (root / "lq" / "b.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    strict = _dataset(root, gt_size=32)
    with pytest.raises(ImageReadError, match="b.png"):
        strict[1]
    lenient = _dataset(root, gt_size=32, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="textualdeg.data.guided_base"):
        item = lenient[1]
    assert Path(item["gt_path"]).stem == "c"  # the next readable item
    assert any("b.png" in r.getMessage() for r in caplog.records)
    assert lenient[0]["lq"].shape == (3, 32, 32)


def test_16_bit_images_keep_their_precision(tmp_path):
    rng = np.random.default_rng(0)
    image = _photo("astronaut")
    fine = np.clip(image + rng.uniform(-0.002, 0.002, image.shape), 0, 1).astype(np.float32)
    write_image(tmp_path / "gt" / "a.png", fine, bit_depth=16)
    write_image(tmp_path / "lq" / "a.png", fine, bit_depth=16)
    item = PairedImageRefDataset(dataroot_gt=str(tmp_path / "gt"), dataroot_lq=str(tmp_path / "lq"), phase="val")[0]
    assert item["gt"].dtype == torch.float32
    np.testing.assert_allclose(item["gt"].permute(1, 2, 0).numpy(), fine, atol=1.0 / 65535)
    # not 8-bit: values off the 1/255 grid survive
    off_grid = np.abs(item["gt"].numpy() * 255 - np.round(item["gt"].numpy() * 255)) > 0.05
    assert off_grid.mean() > 0.5
    assert "ref" not in item


@pytest.mark.parametrize("ref_crop", ["dino", "resize", "full"])
def test_crops_are_aligned_and_augmented_together(tmp_path, ref_crop):
    root = tmp_path
    for stem, photo in {"a": "astronaut", "b": "chelsea"}.items():
        image = _photo(photo)
        write_image(root / "gt" / f"{stem}.png", image)
        write_image(root / "lq" / f"{stem}.png", _degrade(image))
        write_image(root / "ref" / f"{stem}.png", image)  # the guidance is the clean image itself
    stub = DinoWindowSelector(lambda x: torch.nn.functional.avg_pool2d(x, 7).flatten(2).transpose(1, 2) - 0.5,
                              patch_size=7, stride_divisor=64)  # stride 1: every window is a candidate
    ds = _dataset(root, gt_size=40, ref_crop=ref_crop, ref_size=48)
    seen_flips = set()
    for epoch in range(6 if ref_crop != "dino" else 3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["lq"].shape == item["gt"].shape == (3, 40, 40)
            torch.testing.assert_close(item["lq"], _degrade(item["gt"]), atol=1.5 / 255, rtol=0)
            if ref_crop == "dino":
                # the whole, unaugmented reference; the step's window matching the LQ crop
                # is the GT crop, flipped and rotated with it
                assert set(DINO_KEYS) <= set(item) and item["ref"].shape[1:] in {(86, 86), (50, 76)}
                window = select_reference_windows(stub, collate_guided([item]))["ref"][0]
                torch.testing.assert_close(window, item["gt"])
            elif ref_crop == "resize":
                assert item["ref"].shape == (3, 48, 48)
            else:
                assert item["ref"].shape[1:] in {(86, 86), (50, 76), (76, 50)}
            seen_flips.add(item["gt"][:, 0, 0].sum().item())
    assert len(seen_flips) > 3  # crops and flips differ across epochs


def test_items_depend_only_on_seed_epoch_and_index(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut", "b": "chelsea"})
    first, second = _dataset(root, gt_size=24, seed=5), _dataset(root, gt_size=24, seed=5)
    second[1]  # consuming other items does not shift the stream
    torch.testing.assert_close(first[0]["gt"], second[0]["gt"])
    other_seed = _dataset(root, gt_size=24, seed=6)
    assert not torch.equal(first[0]["gt"], other_seed[0]["gt"])
    first.set_epoch(3)
    second.set_epoch(3)
    torch.testing.assert_close(first[1]["lq"], second[1]["lq"])


def test_small_images_are_padded_to_gt_size(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut"})
    item = _dataset(root, gt_size=120)[0]  # the photo is 86 x 86
    assert item["gt"].shape == (3, 120, 120)


def test_dehaze_many_hazy_images_per_clear_one(tmp_path):
    clear = _photo("coffee")
    write_image(tmp_path / "gt" / "0001.jpg", clear)
    write_image(tmp_path / "gt" / "0002.jpg", _photo("chelsea"))  # no hazy version: allowed
    for name in ("0001_0.8_0.2", "0001_0.9_0.1"):
        write_image(tmp_path / "lq" / f"{name}.png", _degrade(clear))
    write_image(tmp_path / "ref" / "0001.png", clear)  # guidance by the clear stem
    ds = PairedDehazeRefDataset(dataroot_gt=str(tmp_path / "gt"), dataroot_lq=str(tmp_path / "lq"),
                                dataroot_ref=str(tmp_path / "ref"), phase="val")
    assert len(ds) == 2
    assert {Path(ds[i]["gt_path"]).name for i in range(2)} == {"0001.jpg"}
    meta = tmp_path / "meta.txt"
    meta.write_text("0001_0.9_0.1.png\n")
    assert len(pair_folders(tmp_path / "gt", tmp_path / "lq", gt_stem_separator="_", meta_info_file=meta)) == 1


def test_gray_items_have_one_channel_or_three_with_gray_to_rgb(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut"})
    assert _dataset(root, gt_size=32, in_ch=1)[0]["gt"].shape == (1, 32, 32)
    item = _dataset(root, gt_size=32, in_ch=1, gray_to_rgb=True)[0]
    assert item["gt"].shape == (3, 32, 32)
    torch.testing.assert_close(item["gt"][0], item["gt"][2])


def test_bad_arguments_name_themselves(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut"})
    for kwargs, name in (({"ref_crop": "crop"}, "ref_crop"), ({"phase": "training"}, "phase"),
                         ({"scale": 2}, "scale"), ({"in_ch": 2}, "in_ch"),
                         ({"dino_window": "whole"}, "dino_window"), ({"filename_tmpl": "x"}, "filename_tmpl")):
        with pytest.raises(ValueError, match=name):
            _dataset(root, **kwargs)


def test_registered_under_both_names_and_built_from_a_section(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut"})
    assert DATASET_REGISTRY.get("Dataset_PairedImageWithRef") is PairedImageRefDataset
    section = {"type": "Dataset_PairedImageWithRef", "dataroot_gt": str(root / "gt"),
               "dataroot_lq": str(root / "lq"), "dataroot_ref": str(root / "ref"), "gt_size": 16,
               "geometric_augs": True, "batch_size_per_gpu": 8, "num_worker_per_gpu": 2}
    ds = build_dataset(section, phase="train", seed=1)
    assert isinstance(ds, GuidedDatasetBase) and ds[0]["lq"].shape == (3, 16, 16)


def test_dual_pixel_views_are_stacked_and_keep_16_bits(tmp_path):
    from textualdeg.data import PairedDualPixelRefDataset

    image = _photo("coffee")
    left, right = np.clip(image * 0.9, 0, 1), np.clip(image * 0.8 + 0.1, 0, 1)
    write_image(tmp_path / "gt" / "a.png", image, bit_depth=16)
    write_image(tmp_path / "l" / "a.png", left, bit_depth=16)
    write_image(tmp_path / "r" / "a.png", right, bit_depth=16)
    assert DATASET_REGISTRY.get("Dataset_PairedImageWithRef_DualPixel_16bit") is PairedDualPixelRefDataset
    ds = PairedDualPixelRefDataset(dataroot_gt=str(tmp_path / "gt"), dataroot_lq_l=str(tmp_path / "l"),
                                   dataroot_lq_r=str(tmp_path / "r"), gt_size=32)
    item = ds[0]
    assert item["lq"].shape == (6, 32, 32) and item["gt"].shape == (3, 32, 32)
    # the right view is read from its own file (D28) and both stay aligned with the target
    torch.testing.assert_close(item["lq"][:3], (item["gt"] * 0.9).clamp(0, 1), atol=2e-5, rtol=0)
    torch.testing.assert_close(item["lq"][3:], (item["gt"] * 0.8 + 0.1).clamp(0, 1), atol=2e-5, rtol=0)


def test_dino_window_of_gray_data_is_found_on_three_equal_channels(tmp_path):
    """in_ch 1: DINOv2 sees RGB (the gray channel three times); the chosen window is gray."""
    image = _photo("astronaut")
    for folder, picture in (("gt", image), ("lq", _degrade(image)), ("ref", image)):
        write_image(tmp_path / folder / "a.png", picture)
    seen = []

    def features(x):
        seen.append(x.shape[1])
        return torch.nn.functional.avg_pool2d(x, 7).flatten(2).transpose(1, 2) - 0.5

    stub = DinoWindowSelector(features, patch_size=7, stride_divisor=64)
    item = _dataset(tmp_path, gt_size=40, ref_crop="dino", in_ch=1)[0]
    assert item["ref"].shape == (1, 86, 86)  # whole: the window is chosen in the training step
    window = select_reference_windows(stub, collate_guided([item]))["ref"]
    assert set(seen) == {3}
    assert window.shape == (1, 1, 40, 40)
    torch.testing.assert_close(window[0], item["gt"])  # the window matching the crop


def test_a_dino_dataset_holds_no_model_and_pickles_small(tmp_path):
    """What a data-loader worker receives: paths and options, no DINOv2."""
    import pickle

    root = _write_set(tmp_path, {"a": "astronaut", "b": "chelsea"})
    ds = _dataset(root, gt_size=24, ref_crop="dino", dino_window="relative")
    assert not any(isinstance(v, torch.nn.Module) for v in vars(ds).values())
    assert len(pickle.dumps(ds)) < 4096
    item = ds[0]
    assert item["window_ratio"].tolist() == [86, 86, 86, 86]  # (ref H, image H, ref W, image W)


def test_collate_keeps_references_of_different_sizes_as_a_list_only_for_dino(tmp_path):
    root = _write_set(tmp_path, {"a": "astronaut", "b": "chelsea"})
    dino = _dataset(root, gt_size=24, ref_crop="dino")
    batch = collate_guided([dino[0], dino[1]])
    assert [tuple(r.shape) for r in batch["ref"]] == [(3, 86, 86), (3, 50, 76)]
    assert batch["lq"].shape == (2, 3, 24, 24) and batch["dihedral"].shape == (2, 3)
    assert collate_guided([dino[0], dino[0]])["ref"].shape == (2, 3, 86, 86)  # one size: stacked
    full = _dataset(root, gt_size=24, ref_crop="full")
    with pytest.raises(ValueError, match="ref_crop: resize or dino"):
        collate_guided([full[0], full[1]])

"""The demo's dataset builder and per-degradation split (the stages themselves run in ``make demo``)."""

from __future__ import annotations

import numpy as np

from textualdeg.demo import DEGRADATIONS, TEST_PHOTOS, TRAIN_PHOTOS, build_demo_dataset, split_by_degradation
from textualdeg.imageio import read_image


def test_demo_dataset_pairs_every_degradation_and_keeps_test_photos_apart(tmp_path):
    counts = build_demo_dataset(tmp_path, train_short_side=96, test_short_side=64)
    assert counts == {"train": len(TRAIN_PHOTOS) * len(DEGRADATIONS), "test": len(TEST_PHOTOS) * len(DEGRADATIONS)}
    for split, photos in (("train", TRAIN_PHOTOS), ("test", TEST_PHOTOS)):
        stems = sorted(p.stem for p in (tmp_path / split / "input").iterdir())
        assert stems == sorted(f"{k}_{p}" for k in DEGRADATIONS for p in photos)
        for stem in stems:
            degraded = read_image(tmp_path / split / "input" / f"{stem}.png")
            clean = read_image(tmp_path / split / "target" / f"{stem}.png")
            assert degraded.shape == clean.shape and min(clean.shape[:2]) == (96 if split == "train" else 64)
            assert np.abs(degraded - clean).mean() > 1e-3, stem  # every degradation changes the image
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)


def test_split_by_degradation_links_input_target_and_guidance(tmp_path):
    build_demo_dataset(tmp_path, train_short_side=96, test_short_side=64)
    for split in ("train", "test"):
        (tmp_path / split / "guidance").mkdir()
        for image in (tmp_path / split / "input").iterdir():
            (tmp_path / split / "guidance" / image.name).write_bytes(image.read_bytes())
    split_by_degradation(tmp_path)
    for kind in DEGRADATIONS:
        for folder in ("input", "target", "guidance"):
            names = sorted(p.name for p in (tmp_path / f"test_{kind}" / folder).iterdir())
            assert names == sorted(f"{kind}_{photo}.png" for photo in TEST_PHOTOS)

"""The demo's scenes, dataset builder and per-degradation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textualdeg.demo.scenes import (
    DEGRADATIONS,
    QUADRANTS,
    SCENE_SIZE,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    build_demo_dataset,
    demo_scenes,
    photo_scenes,
    split_by_degradation,
)
from textualdeg.imageio import read_image


def test_scenes_are_the_four_quadrants_of_each_photo():
    scenes = photo_scenes("rocket", size=16)
    assert list(scenes) == [f"rocket-{q}" for q in QUADRANTS]
    top = np.concatenate([scenes["rocket-tl"], scenes["rocket-tr"]], 1)
    bottom = np.concatenate([scenes["rocket-bl"], scenes["rocket-br"]], 1)
    whole = np.concatenate([top, bottom], 0)  # the quadrants tile the central square again
    assert whole.shape == (32, 32, 3) and whole.std() > 0.05
    assert len({s.tobytes() for s in scenes.values()}) == 4


def test_demo_dataset_pairs_every_degradation_and_keeps_test_photos_apart(tmp_path):
    counts = build_demo_dataset(tmp_path)
    per_split = {"train": len(TRAIN_PHOTOS), "test": len(TEST_PHOTOS)}
    assert counts == {split: n * len(QUADRANTS) * len(DEGRADATIONS) for split, n in per_split.items()}
    for split, photos in (("train", TRAIN_PHOTOS), ("test", TEST_PHOTOS)):
        stems = sorted(p.stem for p in (tmp_path / split / "input").iterdir())
        assert stems == sorted(f"{k}_{p}-{q}" for k in DEGRADATIONS for p in photos for q in QUADRANTS)
        for stem in stems:
            degraded = read_image(tmp_path / split / "input" / f"{stem}.png")
            clean = read_image(tmp_path / split / "target" / f"{stem}.png")
            assert degraded.shape == clean.shape == (SCENE_SIZE, SCENE_SIZE, 3)
            assert np.abs(degraded - clean).mean() > 1e-3, stem  # every degradation changes the image
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    assert sorted(p.stem for p in (tmp_path / "clean").iterdir()) == sorted(demo_scenes())
    assert sorted(p.stem for p in (tmp_path / "clean_test").iterdir()) == sorted(demo_scenes(TEST_PHOTOS))


def test_split_by_degradation_links_input_target_and_guidance(tmp_path):
    build_demo_dataset(tmp_path)
    for split in ("train", "test"):
        (tmp_path / split / "guidance").mkdir()
        for image in (tmp_path / split / "input").iterdir():
            (tmp_path / split / "guidance" / image.name).write_bytes(image.read_bytes())
    split_by_degradation(tmp_path)
    split_by_degradation(tmp_path)  # a second call keeps what is there
    for kind in DEGRADATIONS:
        for folder in ("input", "target", "guidance"):
            names = sorted(p.name for p in (tmp_path / f"test_{kind}" / folder).iterdir())
            assert names == sorted(f"{kind}_{p}-{q}.png" for p in TEST_PHOTOS for q in QUADRANTS)


def test_daclip_csvs_label_every_input_with_its_daclip_degradation(tmp_path):
    from textualdeg.daclip.data import read_daclip_csv
    from textualdeg.demo.scenes import DACLIP_NAMES, build_demo_dataset, write_daclip_csvs

    counts = build_demo_dataset(tmp_path, size=16)
    paths = write_daclip_csvs(tmp_path)
    for split in ("train", "test"):
        rows = read_daclip_csv(paths[split], list(DACLIP_NAMES.values()))
        assert len(rows) == counts[split]
        for row in rows:
            kind = Path(row.path).stem.split("_", 1)[0]
            assert row.degradation == DACLIP_NAMES[kind] and Path(row.path).is_file()
            assert row.caption.startswith("a photo of the ")

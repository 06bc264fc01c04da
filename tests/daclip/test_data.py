"""The DA-CLIP CSV: the official format is read, every bad row is named before training, crops are seeded."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from textualdeg.daclip.data import (
    DaClipCsvDataset,
    DaClipCsvError,
    random_resized_crop,
    read_daclip_csv,
    resize_center_crop,
    split_title,
)
from textualdeg.imageio import write_image

DEGRADATIONS = ("motion-blurry", "hazy", "noisy", "rainy")
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _images(folder: Path, count: int = 3) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / "LQ" / f"img_{i}.png"
        write_image(path, rng.random((40 + 4 * i, 48, 3)).astype(np.float32))
        paths.append(path)
    return paths


def _write_csv(path: Path, rows: list[str], header: str = "filepath\ttitle") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_the_official_format_is_read_with_paths_relative_to_the_csv(tmp_path) -> None:
    paths = _images(tmp_path)
    csv = _write_csv(tmp_path / "train.csv", [
        "LQ/img_0.png\tpeople walking on a city street: motion-blurry",
        f"{paths[1]}\ta sign that reads: open: noisy",  # absolute path; a caption holding ': '
        "",
        "LQ/img_2.png\ta cat on a sofa: hazy",
    ])
    rows = read_daclip_csv(csv, DEGRADATIONS)
    assert [r.path for r in rows] == paths
    assert [(r.caption, r.degradation) for r in rows] == [
        ("people walking on a city street", "motion-blurry"), ("a sign that reads: open", "noisy"),
        ("a cat on a sofa", "hazy")]
    assert [r.line for r in rows] == [2, 3, 5]
    assert split_title("x: rainy") == ("x", "rainy")


def test_a_missing_image_is_named_with_its_line(tmp_path) -> None:
    _images(tmp_path)
    csv = _write_csv(tmp_path / "train.csv", ["LQ/img_0.png\ta street: noisy", "LQ/gone.png\ta cat: hazy"])
    with pytest.raises(DaClipCsvError, match=r"line 3: image .*LQ/gone\.png does not exist"):
        read_daclip_csv(csv, DEGRADATIONS)


def test_an_unknown_degradation_is_named_with_its_line(tmp_path) -> None:
    _images(tmp_path)
    csv = _write_csv(tmp_path / "train.csv", ["LQ/img_0.png\ta street: foggy", "LQ/img_1.png\ta cat: hazy"])
    with pytest.raises(DaClipCsvError, match=r"line 2: degradation 'foggy' is not one of"):
        read_daclip_csv(csv, DEGRADATIONS)


@pytest.mark.parametrize("header, row, match", [
    ("filepath,title", "LQ/img_0.png,a street: noisy", "separated by commas"),
    ("image\tcaption", "LQ/img_0.png\ta street: noisy", r"header \['image', 'caption'\]"),
    ("filepath\ttitle", "LQ/img_0.png\ta street without degradation", "is not 'caption: degradation'"),
    ("filepath\ttitle", "LQ/img_0.png", "1 tab-separated fields"),
])
def test_anything_else_than_the_official_format_is_refused(tmp_path, header, row, match) -> None:
    _images(tmp_path)
    with pytest.raises(DaClipCsvError, match=match):
        read_daclip_csv(_write_csv(tmp_path / "train.csv", [row], header), DEGRADATIONS)


def test_a_long_caption_is_cut_with_a_warning(tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(logging.getLogger("textualdeg"), "propagate", True)  # setup_logging may have cut it
    _images(tmp_path)
    long_caption = " ".join(["a very long description of a busy street"] * 30)
    csv = _write_csv(tmp_path / "train.csv", [f"LQ/img_0.png\t{long_caption}: noisy", "LQ/img_1.png\ta cat: hazy"])
    with caplog.at_level(logging.WARNING):
        dataset = DaClipCsvDataset(csv, DEGRADATIONS, 32, MEAN, STD, context_length=77)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("truncated" in m and "busy street" in m for m in messages), messages
    assert dataset.caption_tokens.shape == (2, 77)


def test_training_crops_depend_on_seed_epoch_and_index_only(tmp_path) -> None:
    _images(tmp_path)
    csv = _write_csv(tmp_path / "train.csv", ["LQ/img_0.png\ta street: noisy", "LQ/img_1.png\ta cat: hazy"])
    train = DaClipCsvDataset(csv, DEGRADATIONS, 32, MEAN, STD, seed=3)
    again = DaClipCsvDataset(csv, DEGRADATIONS, 32, MEAN, STD, seed=3)
    item = train[(0, 1)]
    assert item["image"].shape == (3, 32, 32) and item["index"] == 1
    assert torch.equal(item["image"], again[(0, 1)]["image"])
    assert not torch.equal(item["image"], train[(1, 1)]["image"])
    val = DaClipCsvDataset(csv, DEGRADATIONS, 32, MEAN, STD, train=False)
    assert torch.equal(val[1]["image"], val[(5, 1)]["image"])  # validation: no randomness
    assert int(item["degradation"].ne(0).sum()) > 0


def test_the_crop_keeps_90_to_100_percent_of_the_area() -> None:
    image = torch.rand(3, 60, 80)
    for seed in range(20):
        out = random_resized_crop(image, 24, np.random.default_rng(seed))
        assert out.shape == (3, 24, 24) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert resize_center_crop(image, 30).shape == (3, 30, 30)

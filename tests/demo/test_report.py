"""The demo report: every table row and column, the pictures' layout, and the loss curves of resumed runs."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from textualdeg.demo import report
from textualdeg.demo.run import PICTURE_SCENES, write_report
from textualdeg.demo.scenes import DEGRADATIONS, SCENE_SIZE, build_demo_dataset
from textualdeg.imageio import read_image, write_image


def _fake_stage_outputs(out, seeds, offsets):
    """Write what stages 3 and 5 write: guidance folders and per-run results (restored = target + noise)."""
    data = out / "data"
    build_demo_dataset(data)
    rng = np.random.default_rng(0)
    for folder in ("guidance", "guidance_without_tr"):
        for path in (data / "test/target").iterdir():
            write_image(data / "test" / folder / path.name, read_image(path))
    for path in (data / "clean_test").glob("*.png"):
        write_image(data / "clean_test/guidance" / path.name, read_image(path))
    for seed in seeds:
        for kind in DEGRADATIONS:
            for variant, _, _ in report.VARIANTS:
                run = out / "results" / report.run_name(kind, variant, seed) / "demo_test"
                rows = []
                for path in sorted((data / "test/target").glob(f"{kind}_*.png")):
                    restored = np.clip(read_image(path) + rng.normal(0, offsets[variant], (SCENE_SIZE, SCENE_SIZE, 3)), 0, 1)
                    write_image(run / "images" / path.name, restored)
                    rows.append({"image": path.stem, "psnr": 20 + 10 * (variant != "plain") + seed, "ssim": 0.5})
                run.mkdir(parents=True, exist_ok=True)
                with open(run / "per_image.csv", "w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=["image", "psnr", "ssim"])
                    writer.writeheader()
                    writer.writerows(rows)


def test_report_has_every_row_column_and_picture_tile(tmp_path):
    seeds = [0, 1]
    _fake_stage_outputs(tmp_path, seeds, {"plain": 0.2, "guidance": 0.05, "target": 0.01})
    path, tables = write_report(tmp_path, seeds, {"stage 1": 1.0}, jobs=2, threads=1)
    text = path.read_text()
    assert all(part in text for part in tables.split("\n\n"))  # the console shows the report's tables
    for kind in DEGRADATIONS:
        assert len(re.findall(rf"^\| {kind} \| \d+ \|", text, flags=re.M)) == 1  # guidance table
        for _, label, _ in report.VARIANTS:
            assert sum(f"| {kind} (input" in line and label in line for line in text.splitlines()) == 1
        assert f"- **{kind}**: generated guidance: **helps** (+10.00 ± 0.00 dB" in text  # 30 vs 20 dB per seed
    assert "20.50 ± 0.50" in text  # two seeds: mean ± std
    for column in ("guidance without TR mapper", "guidance (I2T + TR)", "from the clean scene's words"):
        assert column in text
    tile = 2 * SCENE_SIZE + 4
    rows = len(PICTURE_SCENES) * len(DEGRADATIONS)
    comparison = read_image(tmp_path / "comparison.png")
    assert comparison.shape == (rows * tile, len(report.COMPARISON_COLUMNS) * tile, 3)
    # column 3 (restored without guidance) is noisier than column 4 (restored with guidance)
    first_row = comparison[2:tile - 2]
    target = first_row[:, 4 * tile + 2:5 * tile - 2]
    without = first_row[:, 2 * tile + 2:3 * tile - 2]
    with_guidance = first_row[:, 3 * tile + 2:4 * tile - 2]
    assert np.abs(without - target).mean() > 2 * np.abs(with_guidance - target).mean()
    assert read_image(tmp_path / "guidance.png").shape == (rows * tile, len(report.GUIDANCE_COLUMNS) * tile, 3)
    assert (tmp_path / "loss_curves.png").stat().st_size > 0


def test_guidance_rows_measure_each_guidance_against_the_target(tmp_path):
    _fake_stage_outputs(tmp_path, [0], {"plain": 0.1, "guidance": 0.1, "target": 0.1})
    noisy = tmp_path / "data/test/guidance_without_tr"
    for path in noisy.iterdir():
        write_image(path, np.clip(read_image(path) + 0.1, 0, 1))
    rows = report.guidance_rows(tmp_path)
    assert [r["degradation"] for r in rows] == list(DEGRADATIONS)
    for row in rows:
        assert row["guidance"] > 45 and row["clean_words"] > 45  # identical to the target up to 8-bit rounding
        assert 18 < row["without_tr"] < 22  # a +0.1 shift: about 20 dB
        assert row["input"] < row["guidance"]


def test_verdict_needs_a_margin_over_the_seed_spread():
    assert report.verdict(0.5, 0.1, 3) == "helps"
    assert report.verdict(0.5, 0.3, 3) == "no clear difference"  # within two standard deviations
    assert report.verdict(0.05, 0.0, 3) == "no clear difference"  # below the smallest difference
    assert report.verdict(-0.4, 0.1, 3) == "hurts"
    assert report.verdict(0.2, 0.0, 1) == "helps on this seed"


def test_missing_results_name_the_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="noise_plain_seed0"):
        report.per_image_scores(tmp_path, report.run_name("noise", "plain", 0))


def test_scalars_read_every_events_file_of_a_resumed_run(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "logs"
    first = SummaryWriter(str(logs))  # before the kill: steps 1-5
    for step in range(1, 6):
        first.add_scalar("train/loss", 1.0 / step, step)
    first.close()
    second = SummaryWriter(str(logs))  # after the resume: steps 4-8 (4 and 5 again)
    for step in range(4, 9):
        second.add_scalar("train/loss", 2.0 / step, step)
    second.close()
    assert len(list(logs.glob("events.out.tfevents.*"))) == 2
    steps, values = report.scalars(tmp_path)
    assert steps == list(range(1, 9))
    assert values[:3] == pytest.approx([1.0, 0.5, 1 / 3])
    assert values[3:] == pytest.approx([2.0 / s for s in range(4, 9)])  # the resumed values win


def test_daclip_section_counts_each_degradation_and_lists_the_pictured_scenes(tmp_path):
    import json

    from textualdeg.demo.scenes import DACLIP_NAMES

    assert report.daclip_markdown(tmp_path, PICTURE_SCENES) is None  # not run: no section
    names = [DACLIP_NAMES[k] for k in DEGRADATIONS]
    predictions = [{"image": f"data/test/input/{kind}_{scene}.png", "label": DACLIP_NAMES[kind],
                    "degradation": DACLIP_NAMES[kind] if kind != "haze" else "noisy", "probability": 0.75}
                   for kind in DEGRADATIONS for scene in PICTURE_SCENES]
    record = {"num_images": len(predictions), "overall_accuracy": 0.75, "classes": names,
              "per_class_accuracy": {n: (0.0 if n == "hazy" else 1.0) for n in names},
              "per_class_count": {n: len(PICTURE_SCENES) for n in names}, "predictions": predictions}
    (tmp_path / "daclip").mkdir()
    (tmp_path / "daclip" / "classification.json").write_text(json.dumps(record))
    text = report.daclip_markdown(tmp_path, PICTURE_SCENES)
    assert f"| haze (hazy) | {len(PICTURE_SCENES)} | 0 | 0.00 |" in text
    assert f"| noise (noisy) | {len(PICTURE_SCENES)} | {len(PICTURE_SCENES)} | 1.00 |" in text
    assert "**0.75** (chance 0.25)" in text
    assert f"| haze_{PICTURE_SCENES[0]} | hazy | noisy (0.75) |" in text

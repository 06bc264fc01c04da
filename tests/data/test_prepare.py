"""Dataset preparation on small synthetic stand-ins with the structure of the real downloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from textualdeg.data.prepare import DATASETS, PrepareError, check, main, prepare

REPO = Path(__file__).resolve().parents[2]

# Relative paths of a few files per dataset, laid out as the real archive lays them out.
STAND_INS: dict[str, list[str]] = {
    "GoPro": [f"GOPRO_Large/{split}/{seq}/{kind}/00000{i}.png" for split in ("train", "test")
              for seq in ("GOPR0372_07_00", "GOPR0374_11_00") for kind in ("blur", "sharp", "blur_gamma")
              for i in (1, 2)],
    "HIDE": ["HIDE_dataset/test/test-close-ups/1fromGOPR0950.png", "HIDE_dataset/test/test-long-shot/8fromGOPR1042.png",
             "HIDE_dataset/GT/1fromGOPR0950.png", "HIDE_dataset/GT/8fromGOPR1042.png", "HIDE_dataset/GT/9fromGOPR1.png"],
    "RealBlur_J": [f"RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene{s}/{k}/{k}_{i}.png"
                   for s in ("001", "002") for k in ("blur", "gt") for i in (1, 2)],
    "RealBlur_R": [f"RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref/scene{s}/{k}/{k}_{i}.png"
                   for s in ("001", "007") for k in ("blur", "gt") for i in (1, 2, 3)],
    "SIDD": [f"SIDD_Medium_Srgb/Data/{scene}/{k}_SRGB_{n}.PNG" for scene in ("0001_001_S6_00100_00060_3200_L",
             "0002_001_S6_00100_00020_3200_N") for k in ("NOISY", "GT") for n in ("010", "011")],
    "BSD400": [f"BSD400/test_{i:03d}.png" for i in (1, 2, 3)],
    "WED": [f"exploration_database_and_code/pristine_images/{i:05d}.bmp" for i in (1, 2)],
    "CBSD68": [f"CBSD68/original_png/{i:04d}.png" for i in (0, 1)] + ["CBSD68/noisy15/0000.png"],
    "Kodak24": [f"Kodak24/kodim{i:02d}.png" for i in (1, 2)],
    "McMaster": [f"McMaster/{i}.tif" for i in (1, 2)],
    "Urban100": [f"Urban100/image_SRF_4/img_{i:03d}_SRF_4_{k}.png" for i in (1, 2) for k in ("HR", "LR")],
    "Set12": [f"Set12/{i:02d}.png" for i in (1, 2)],
    "Rain13K": [f"train/Rain13K/{k}/{i}.jpg" for k in ("input", "target") for i in (1, 2)],
    "Rain100L": [f"test/Rain100L/{k}/{i}.png" for k in ("input", "target") for i in (1, 2)]
                + [f"Train/Derain/rainy/rain-{i}.png" for i in (1, 2)] + [f"Train/Derain/gt/norain-{i}.png" for i in (1, 2)],
    "Rain100H": [f"test/Rain100H/{k}/{i}.png" for k in ("input", "target") for i in (1, 2)],
    "Rain200L": [f"rain200L/{s}/rain/norain-{i}x2.png" for s in ("train", "test") for i in (1, 2)]
                + [f"rain200L/{s}/norain/norain-{i}.png" for s in ("train", "test") for i in (1, 2)],
    "Rain200H": [f"rain200H/{s}/rain/norain-{i}x2.png" for s in ("train", "test") for i in (1,)]
                + [f"rain200H/{s}/norain/norain-{i}.png" for s in ("train", "test") for i in (1,)],
    "DID-Data": [f"DID-MDN-training/Rain_{d}/train2018new/{i}.jpg" for d in ("Heavy", "Light") for i in (1, 2)]
                + ["DID-MDN-test/1.jpg"],
    "DDN-Data": [f"DDN-Data/{s}/rainy_image/{i}_{k}.jpg" for s in ("train", "test") for i in (1, 2) for k in (1, 2, 3)]
                + [f"DDN-Data/{s}/ground_truth/{i}.jpg" for s in ("train", "test") for i in (1, 2)],
    "RESIDE_ITS": [f"ITS/hazy/{i}_{k}_0.8{k}.png" for i in (1, 2) for k in (1, 2)] + [f"ITS/clear/{i}.png" for i in (1, 2)],
    "RESIDE_OTS": [f"OTS/hazy/{i:04d}_0.8_0.2.jpg" for i in (1, 2)] + [f"OTS/clear/{i:04d}.jpg" for i in (1, 2)],
    "RESIDE_SOTS": ["SOTS/indoor/hazy/1400_1.png", "SOTS/indoor/hazy/1400_2.png", "SOTS/indoor/gt/1400.png",
                    "SOTS/outdoor/hazy/0001_0.8_0.2.jpg", "SOTS/outdoor/gt/0001.png"],
    "DPDD": [f"dd_dp_dataset_png/{s}_{side}/source/{s}_{i}.png" for s in ("train", "val", "test")
             for side in ("c", "l", "r") for i in (1, 2)]
            + [f"dd_dp_dataset_png/{s}_c/target/{s}_{i}.png" for s in ("train", "val", "test") for i in (1, 2)],
}


def _write_stand_in(root: Path, relative_paths: list[str]) -> None:
    rng = np.random.default_rng(0)
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        width = 16 if "DID-MDN" in relative else 8  # DID-Data: [rainy | clean] side by side
        image = rng.integers(0, 256, (8, width, 3), dtype=np.uint8)
        if "dd_dp_dataset_png" in relative:
            image = image.astype(np.uint16) * 257  # DPDD is 16-bit
        assert cv2.imwrite(str(path), image), path


def _write_sidd_validation(root: Path) -> None:
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)  # real: (40, 32, 256, 256, 3)
    scipy.io.savemat(root / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": blocks})
    scipy.io.savemat(root / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": blocks})


def _write_realblur_lists(root: Path, variant: str) -> None:
    """Scene 001 is the test split, every other scene the train split."""
    for split in ("train", "test"):
        lines = []
        for gt in sorted(root.glob("RealBlur-*/*/gt/*.png")):
            if (gt.parent.parent.name == "scene001") == (split == "test"):
                blur = gt.parent.parent / "blur" / gt.name.replace("gt_", "blur_")
                lines.append(f"{gt.relative_to(root).as_posix()} {blur.relative_to(root).as_posix()}")
        (root / f"RealBlur_{variant}_{split}_list.txt").write_text("\n".join(lines) + "\n")


def test_every_dataset_has_a_stand_in_and_a_script():
    assert set(STAND_INS) | {"DND"} == set(DATASETS)
    scripts = {p.name for p in (REPO / "data_prepare").glob("prepare_*.py")}
    for name in DATASETS:
        script = "prepare_" + "".join(c if c.isalnum() else "_" for c in name.lower()) + ".py"
        assert script in scripts, script


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_prepare_lays_out_stand_in(name, tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS[name])
    if name == "SIDD":
        _write_sidd_validation(source)
    if name.startswith("RealBlur"):
        _write_realblur_lists(source, name[-1])
    counts = prepare(DATASETS[name], source, output)
    spec = DATASETS[name]
    for rule in spec.rules:
        split_dir = output / spec.name / rule.split
        targets = sorted(p.stem for p in (split_dir / "target").iterdir())
        assert len(targets) > 0
        if rule.inputs is not None:
            inputs = sorted(p.stem for p in (split_dir / rule.input_folder).iterdir())
            assert inputs == targets, (rule.split, inputs, targets)
        assert counts[rule.split] > 0
    # --check: the layout pairs up; the only problems are counts against the real dataset
    problems = check(spec, output)
    assert problems and all("the real dataset has" in p for p in problems), problems


def test_gopro_pairs_by_sequence_and_frame(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["GoPro"])
    prepare(DATASETS["GoPro"], source, output)
    names = sorted(p.name for p in (output / "GoPro/train/input").iterdir())
    assert names == ["GOPR0372_07_00_000001.png", "GOPR0372_07_00_000002.png",
                     "GOPR0374_11_00_000001.png", "GOPR0374_11_00_000002.png"]
    blur = cv2.imread(str(source / "GOPRO_Large/train/GOPR0374_11_00/blur/000002.png"))
    linked = cv2.imread(str(output / "GoPro/train/input/GOPR0374_11_00_000002.png"))
    np.testing.assert_array_equal(blur, linked)


def test_many_to_one_targets_are_linked_per_input(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["RESIDE_ITS"])
    prepare(DATASETS["RESIDE_ITS"], source, output)
    target_a = cv2.imread(str(output / "ITS/train/target/1_1_0.81.png"))
    target_b = cv2.imread(str(output / "ITS/train/target/1_2_0.82.png"))
    clear = cv2.imread(str(source / "ITS/clear/1.png"))
    np.testing.assert_array_equal(target_a, clear)
    np.testing.assert_array_equal(target_b, clear)


def test_side_by_side_split(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["DID-Data"])
    prepare(DATASETS["DID-Data"], source, output)
    joined = cv2.imread(str(source / "DID-MDN-test/1.jpg"))[:, :, ::-1]
    rainy = cv2.imread(str(output / "DID-Data/test/input/1.png"))[:, :, ::-1]
    clean = cv2.imread(str(output / "DID-Data/test/target/1.png"))[:, :, ::-1]
    np.testing.assert_array_equal(rainy, joined[:, :8])
    np.testing.assert_array_equal(clean, joined[:, 8:16])


def test_sidd_validation_blocks(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["SIDD"])
    _write_sidd_validation(source)
    prepare(DATASETS["SIDD"], source, output)
    names = sorted(p.name for p in (output / "SIDD/val/input").iterdir())
    assert names[:2] == ["0000_00.png", "0000_01.png"] and len(names) == 6


def test_realblur_split_follows_list_files(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["RealBlur_J"])
    _write_realblur_lists(source, "J")
    prepare(DATASETS["RealBlur_J"], source, output)
    assert sorted(p.stem for p in (output / "RealBlur_J/test/input").iterdir()) == ["scene001_1", "scene001_2"]
    assert sorted(p.stem for p in (output / "RealBlur_J/train/target").iterdir()) == ["scene002_1", "scene002_2"]


def test_missing_target_is_reported_with_its_name(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["Rain100H"])
    (source / "test/Rain100H/target/2.png").unlink()
    with pytest.raises(PrepareError, match=r"test/Rain100H/input/2.png"):
        prepare(DATASETS["Rain100H"], source, output)


def test_check_reports_unpaired_files(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["Rain100H"])
    prepare(DATASETS["Rain100H"], source, output)
    (output / "Rain100H/test/target/1.png").unlink()
    problems = check(DATASETS["Rain100H"], output)
    assert "test: input '1' has no target" in problems


def test_script_check_mode_exit_codes(tmp_path):
    source, output = tmp_path / "download", tmp_path / "datasets"
    _write_stand_in(source, STAND_INS["Kodak24"])
    assert main("Kodak24", ["--source", str(source), "--output", str(output)]) == 1  # 2 of 24 images
    assert main("Kodak24", ["--check", "--output", str(tmp_path / "empty")]) == 1
    assert main("Kodak24", ["--source", str(tmp_path / "nowhere"), "--output", str(output)]) == 2
    result = subprocess.run(
        [sys.executable, str(REPO / "data_prepare/prepare_kodak24.py"), "--check", "--output", str(output)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "the real dataset has 24" in result.stderr


def test_dataset_preparation_doc_names_every_dataset_and_script():
    doc = (REPO / "data_prepare/DatasetPreparation.md").read_text()
    for name in DATASETS:
        script = "prepare_" + "".join(c if c.isalnum() else "_" for c in name.lower()) + ".py"
        assert f"| {name} |" in doc and script in doc, name

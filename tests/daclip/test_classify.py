"""classify-degradation prints one row per image and survives a corrupt one; evaluate-daclip writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from textualdeg.daclip.classify import confusion_matrix, evaluate_classifier, main, main_evaluate
from textualdeg.imageio import read_image, write_image


@pytest.fixture(scope="module")
def tiny_daclip(tmp_path_factory) -> Path:
    from textualdeg.daclip.tiny import save_tiny_daclip

    return Path(save_tiny_daclip(tmp_path_factory.mktemp("tiny") / "daclip", seed=0))


def _photo(seed: int, size: int = 40) -> np.ndarray:
    from textualdeg.demo.scenes import photo_scenes

    scenes = list(photo_scenes("astronaut", size).values())
    return scenes[seed % len(scenes)]


def test_a_folder_gets_one_row_per_image_and_a_corrupt_image_is_named(tiny_daclip, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    for i in range(2):
        write_image(folder / f"good_{i}.png", _photo(i))
    write_image(folder / "sub" / "nested.jpg", _photo(2))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    status = main(["--input", str(folder), "--daclip", str(tiny_daclip), "--json", str(tmp_path / "out.json")])
    out, err = capsys.readouterr()
    assert status == 1
    lines = out.strip().splitlines()
    assert lines[0].split() == ["image", "degradation", "probability"] and len(lines) == 5
    for name in ("good_0.png", "good_1.png", "nested.jpg"):
        (row,) = [line for line in lines if name in line]
        _, degradation, probability = row.split()
        assert 0.0 < float(probability) <= 1.0 and degradation != "UNREADABLE"
    assert any("broken.png" in line and "UNREADABLE" in line for line in lines)
    assert "broken.png" in err
    record = json.loads((tmp_path / "out.json").read_text())
    assert len(record["predictions"]) == 3 and record["unreadable"][0]["image"].endswith("broken.png")
    probabilities = record["predictions"][0]["probabilities"]
    assert set(probabilities) == set(record["degradations"]) and abs(sum(probabilities.values()) - 1) < 1e-4


def test_a_single_file(tiny_daclip, tmp_path, capsys) -> None:
    write_image(tmp_path / "one.png", _photo(0))
    assert main(["--input", str(tmp_path / "one.png"), "--daclip", str(tiny_daclip)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        main(["--input", str(tmp_path / "nothing"), "--daclip", str(tiny_daclip)])


def _labelled(root: Path) -> dict[str, int]:
    from textualdeg.data.degradations import degrade

    counts = {}
    for kind, name in (("noise", "noisy"), ("haze", "hazy"), ("rain", "rainy")):
        for i in range(3):
            image = np.clip(degrade(_photo(i), kind, np.random.default_rng(i)), 0, 1)
            write_image(root / name / f"{i}.png", image)
        counts[name] = 3
    return counts


def test_evaluation_writes_accuracy_per_class_and_a_confusion_matrix(tiny_daclip, tmp_path, capsys) -> None:
    counts = _labelled(tmp_path / "labelled")
    status = main_evaluate(["--daclip", str(tiny_daclip), "--data", str(tmp_path / "labelled"),
                            "--out", str(tmp_path / "report")])
    assert status == 0
    out = capsys.readouterr().out
    assert "overall accuracy" in out and "hazy" in out
    record = json.loads((tmp_path / "report" / "classification.json").read_text())
    assert record["per_class_count"] == counts and set(record["per_class_accuracy"]) == set(counts)
    matrix = np.array(record["confusion_matrix"])
    assert matrix.shape == (len(record["classes"]),) * 2 and matrix.sum() == 9
    assert record["overall_accuracy"] == pytest.approx(np.trace(matrix) / 9)
    for name, accuracy in record["per_class_accuracy"].items():
        k = record["classes"].index(name)
        assert accuracy == pytest.approx(matrix[k, k] / 3)
    png = read_image(tmp_path / "report" / "confusion_matrix.png")
    assert png.shape[0] > 100 and png.shape[1] > 100 and png.std() > 0.01


def test_evaluation_reads_a_csv_and_refuses_unknown_folders(tiny_daclip, tmp_path) -> None:
    _labelled(tmp_path / "labelled")
    csv = tmp_path / "labelled" / "val.csv"
    csv.write_text("filepath\ttitle\nnoisy/0.png\tan astronaut: noisy\nhazy/1.png\tan astronaut: hazy\n")
    record = evaluate_classifier(tiny_daclip, csv, tmp_path / "report")
    assert record["num_images"] == 2 and set(record["per_class_count"]) == {"noisy", "hazy"}
    write_image(tmp_path / "labelled" / "foggy" / "0.png", _photo(0))
    with pytest.raises(ValueError, match=r"\['foggy'\] are not degradations"):
        evaluate_classifier(tiny_daclip, tmp_path / "labelled", tmp_path / "report")


def test_confusion_matrix_rows_are_truth_columns_predictions() -> None:
    matrix = confusion_matrix(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
    assert matrix.tolist() == [[1, 1], [0, 1]]

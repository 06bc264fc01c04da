"""DA-CLIP as a degradation classifier: classify images, and evaluate it on a labelled set.

``textualdeg classify-degradation --input DIR_OR_FILE --daclip PATH [--device cpu] [--json OUT]``
prints one row per image: the predicted degradation and its probability (the softmax over
the degradation names of the DA-CLIP, zero-shot as in the official ``evaluate.py``:
the image's degradation embedding against the text embeddings of the names). An image
that cannot be read is named on stderr; the others are still classified and the exit
status is 1 at the end.

``textualdeg evaluate-daclip --daclip PATH --data ROOT_OR_CSV --out DIR`` scores it on a
labelled set: ``ROOT/<degradation>/*.png`` (one folder per degradation name) or a DA-CLIP
CSV (``filepath<TAB>title``, ``title = "caption: degradation"``). It prints and writes the
overall and per-class accuracy and the confusion matrix (``confusion_matrix.png`` and
``classification.json``). See docs/daclip.md.

DA-CLIP: "Controlling Vision-Language Models for Multi-Task Image Restoration"
(Luo et al., ICLR 2024), arXiv:2310.01018.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textualdeg.imageio import IMAGE_EXTENSIONS, ImageReadError, image_to_tensor, list_images, read_image
from textualdeg.log import get_logger, setup_logging

logger = get_logger(__name__)

__all__ = ["Prediction", "classify_images", "confusion_matrix", "evaluate_classifier", "load_classifier",
           "main", "main_evaluate"]

JSON_NAME = "classification.json"
PNG_NAME = "confusion_matrix.png"


@dataclass(frozen=True)
class Prediction:
    """One classified image: the best degradation, its probability, and every class's probability."""

    image: str
    degradation: str
    probability: float
    probabilities: dict[str, float]


def load_classifier(daclip_path: str | os.PathLike, device: str = "cpu") -> tuple[Any, tuple[str, ...]]:
    """A ``DAClipEmbedder`` on ``device`` and the degradation names it chooses from.

    The names are those stored by ``save_daclip`` (``read_degradations``), else the official ten.
    """
    from textualdeg.daclip.embedder import DAClipEmbedder

    embedder = DAClipEmbedder.from_pretrained(daclip_path, device=device)
    return embedder, tuple(embedder.degradations)


@torch.no_grad()
def classify_image(embedder: Any, image: np.ndarray, degradations: Sequence[str]) -> dict[str, float]:
    """(H, W, 3) float image in [0, 1] -> {degradation: probability}."""
    batch = image_to_tensor(image)[None]  # (1, 3, H, W)
    probabilities = embedder.classify(batch, degradations=tuple(degradations))  # (1, K)
    return {name: float(p) for name, p in zip(degradations, probabilities[0].float().cpu().tolist())}


def classify_images(embedder: Any, paths: Sequence[Path], degradations: Sequence[str]
                    ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Classify every readable image; returns the predictions and the (path, reason) of unreadable ones."""
    predictions, failures = [], []
    for path in paths:
        try:
            image = read_image(path, "rgb")
        except ImageReadError as error:
            logger.error("cannot read %s: %s (skipped; the other images are classified)", path, error)
            failures.append((path, str(error)))
            continue
        probabilities = classify_image(embedder, image, degradations)
        best = max(probabilities, key=probabilities.get)
        predictions.append(Prediction(str(path), best, probabilities[best], probabilities))
    return predictions, failures


def _input_images(source: Path) -> list[Path]:
    """A file as is; a folder's images (recursively), sorted."""
    if source.is_file():
        return [source]
    if source.is_dir():
        paths = list_images(source, recursive=True)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {source}")
        return paths
    raise FileNotFoundError(f"--input {source} is neither an image file nor a folder")


def format_table(predictions: Sequence[Prediction], failures: Sequence[tuple[Path, str]] = ()) -> str:
    """The printed table: image, predicted degradation, probability (unreadable images last)."""
    names = [p.image for p in predictions] + [str(path) for path, _ in failures]
    width = max([len("image"), *map(len, names)])
    lines = [f"{'image':<{width}}  {'degradation':<16}  probability"]
    lines += [f"{p.image:<{width}}  {p.degradation:<16}  {p.probability:.4f}" for p in predictions]
    lines += [f"{str(path):<{width}}  {'UNREADABLE':<16}  -" for path, _ in failures]
    return "\n".join(lines)


def _classify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textualdeg classify-degradation",
                                     description="Predict the degradation of images with a DA-CLIP.")
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--daclip", required=True, help="a DA-CLIP folder (save_daclip) or official .pt")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the predictions to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``textualdeg classify-degradation``; returns 0, or 1 when an image could not be read."""
    args = _classify_parser().parse_args(argv)
    setup_logging()
    paths = _input_images(args.input)
    embedder, degradations = load_classifier(args.daclip, args.device)
    predictions, failures = classify_images(embedder, paths, degradations)
    print(format_table(predictions, failures))
    if args.json is not None:
        record = {"daclip": str(args.daclip), "degradations": list(degradations),
                  "predictions": [p.__dict__ for p in predictions],
                  "unreadable": [{"image": str(path), "error": reason} for path, reason in failures]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
    if failures:
        print(f"{len(failures)} image(s) could not be read: " + ", ".join(str(p) for p, _ in failures),
              file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- evaluation


def labelled_images(source: str | os.PathLike, degradations: Sequence[str]) -> list[tuple[Path, str]]:
    """(image, true degradation) pairs of ``ROOT/<degradation>/*`` or of a DA-CLIP CSV.

    Raises:
        ValueError: a sub-folder (or CSV degradation) that is not one of ``degradations``,
            or no labelled image at all.
    """
    from textualdeg.daclip.data import read_daclip_csv

    source = Path(source)
    if source.is_file():
        return [(row.path, row.degradation) for row in read_daclip_csv(source, degradations)]
    if not source.is_dir():
        raise FileNotFoundError(f"labelled set {source} is neither a folder nor a CSV file")
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f.name for f in folders if f.name not in degradations]
    if unknown:
        raise ValueError(f"{source}: sub-folder(s) {unknown} are not degradations of the DA-CLIP "
                         f"{list(degradations)}; expected ROOT/<degradation>/*.png")
    pairs = [(path, folder.name) for folder in folders for path in list_images(folder)]
    if not pairs:
        raise ValueError(f"{source}: no images in ROOT/<degradation>/ folders (names: {list(degradations)})")
    return pairs


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    index = {name: k for k, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, predicted):
        matrix[index[t], index[p]] += 1
    return matrix


def _plot_confusion(matrix: np.ndarray, classes: Sequence[str], accuracy: float, path: Path) -> None:
    """The confusion matrix as a PNG (matplotlib, Agg backend), counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.2 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    rows = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))  # (K, K) row-normalised
    im = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"DA-CLIP degradation classification\naccuracy {accuracy:.3f} ({int(matrix.sum())} images)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(record: dict[str, Any]) -> str:
    """Overall and per-class accuracy and the confusion matrix as text."""
    classes = record["classes"]
    corner = "true \\ predicted"
    width = max(len(corner), *map(len, classes))
    lines = [f"overall accuracy {record['overall_accuracy']:.4f} ({record['num_images']} images, "
             f"chance {1 / max(1, len(record['per_class_accuracy'])):.3f})"]
    lines += [f"  {name:<{width}}  {acc:.4f}  ({record['per_class_count'][name]} images)"
              for name, acc in record["per_class_accuracy"].items()]
    cell = max(6, *map(len, classes))
    lines.append(f"{corner:<{width}}  " + "  ".join(f"{c:>{cell}}" for c in classes))
    for name, row in zip(classes, record["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def evaluate_classifier(daclip_path: str | os.PathLike, labelled_root: str | os.PathLike,
                        out_dir: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """Accuracy (overall and per class) and confusion matrix of a DA-CLIP on a labelled set.

    Args:
        daclip_path: a DA-CLIP folder (``save_daclip``) or official checkpoint.
        labelled_root: ``ROOT/<degradation>/*.png`` or a DA-CLIP CSV.
        out_dir: receives ``classification.json`` and ``confusion_matrix.png``.
        device: torch device.

    Returns:
        The JSON record: ``overall_accuracy``, ``per_class_accuracy``, ``per_class_count``,
        ``classes`` (the true classes, then any other predicted ones, in the model's order),
        ``confusion_matrix`` (rows true, columns predicted), ``predictions``, ``unreadable``.
    """
    embedder, degradations = load_classifier(daclip_path, device)
    pairs = labelled_images(labelled_root, degradations)
    label_of = {str(path): label for path, label in pairs}
    predictions, failures = classify_images(embedder, [p for p, _ in pairs], degradations)
    truth = [label_of[p.image] for p in predictions]
    guessed = [p.degradation for p in predictions]
    classes = [d for d in degradations if d in set(truth) | set(guessed)]
    matrix = confusion_matrix(truth, guessed, classes)
    per_class = {c: float(matrix[k, k] / matrix[k].sum()) for k, c in enumerate(classes) if matrix[k].sum()}
    overall = float(np.trace(matrix) / max(1, matrix.sum()))
    record = {
        "daclip": str(daclip_path), "data": str(labelled_root), "num_images": len(predictions),
        "overall_accuracy": overall, "per_class_accuracy": per_class,
        "per_class_count": {c: int(matrix[k].sum()) for k, c in enumerate(classes) if matrix[k].sum()},
        "classes": classes, "confusion_matrix": matrix.tolist(),
        "predictions": [{**p.__dict__, "label": label_of[p.image]} for p in predictions],
        "unreadable": [{"image": str(path), "error": reason} for path, reason in failures],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_NAME).write_text(json.dumps(record, indent=2))
    _plot_confusion(matrix, classes, overall, out_dir / PNG_NAME)
    logger.info("wrote %s and %s", out_dir / JSON_NAME, out_dir / PNG_NAME)
    return record


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textualdeg evaluate-daclip",
                                     description="Accuracy and confusion matrix of a DA-CLIP degradation classifier.")
    parser.add_argument("--daclip", required=True, help="a DA-CLIP folder (save_daclip) or official .pt")
    parser.add_argument("--data", required=True, help="ROOT/<degradation>/*.png or a DA-CLIP CSV")
    parser.add_argument("--out", required=True, type=Path, help="folder for classification.json and the PNG")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def main_evaluate(argv: Sequence[str] | None = None) -> int:
    """``textualdeg evaluate-daclip``: prints the report; 1 when an image could not be read."""
    args = _evaluate_parser().parse_args(argv)
    setup_logging()
    record = evaluate_classifier(args.daclip, args.data, args.out, args.device)
    print(format_report(record))
    print(f"confusion matrix: {args.out / PNG_NAME}; per image: {args.out / JSON_NAME}")
    return 1 if record["unreadable"] else 0

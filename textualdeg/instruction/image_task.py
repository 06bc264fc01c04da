"""Which degradation an image shows, from image statistics: the instruction when none is given.

``textualdeg restore`` without ``--instruction`` still has to prompt a text-prompted network.
:class:`ImageTaskClassifier` guesses the task from nine statistics of the image (noise
level from the finest diagonal differences, gradient energy and its fine/coarse ratio,
dark channel, contrast, saturation, brightness, bright thin structures from a white
top-hat, and the horizontal/vertical gradient ratio of rain streaks) with a softmax
regression; :func:`fit_on_demo_photographs` fits it on the demo's degradations (noise,
motion blur, haze, rain from ``textualdeg.data.degradations``) of the scikit-image
*training* photographs, so its accuracy on the demo's test photographs is a held-out
number (docs/textpromptir.md). The prediction becomes the task's canonical instruction.

It is a baseline: the statistics are measured at the image's own resolution, and the
classifier knows only the four synthetic degradations of the demo.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEGRADATION_TASKS", "ImageTaskClassifier", "image_features", "fit_on_demo_photographs",
           "demo_accuracy"]

#: the demo's degradations -> instruction tasks
DEGRADATION_TASKS = {"noise": "denoise", "blur": "deblur", "haze": "dehaze", "rain": "derain"}


def image_features(image: np.ndarray) -> np.ndarray:
    """Nine statistics of an (H, W, 3) float image in [0, 1] (H, W >= 8); returns (9,) float64."""
    import cv2

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise ValueError(f"expected an (H, W, 3) image of at least 8 x 8 pixels, got shape {image.shape}")
    gray = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)
    diag = gray[1:, 1:] - gray[1:, :-1] - gray[:-1, 1:] + gray[:-1, :-1]  # (H-1, W-1), noise-dominated
    noise = np.median(np.abs(diag)) / 0.6745 / 2.0
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    grad = float(np.mean(np.hypot(gx, gy)))
    small = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    grad_coarse = float(np.mean(np.hypot(cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1))))
    kernel = np.ones((5, 5), np.uint8)
    dark = float(np.mean(cv2.erode(image.min(axis=2), kernel)))
    tophat = float(np.mean(gray - cv2.dilate(cv2.erode(gray, kernel), kernel)))
    high, low = image.max(axis=2), image.min(axis=2)
    saturation = float(np.mean((high - low) / (high + 1e-3)))
    eps = 1e-4
    anisotropy = float((np.mean(np.abs(gx)) + eps) / (np.mean(np.abs(gy)) + eps))
    return np.array([np.log(noise + eps), np.log(grad + eps), np.log((grad + eps) / (grad_coarse + eps)), dark,
                     float(gray.std()), saturation, float(gray.mean()), np.log(tophat + eps), np.log(anisotropy)],
                    dtype=np.float64)


@dataclass
class ImageTaskClassifier:
    """Softmax regression over standardised :func:`image_features`.

    Attributes:
        tasks: the task names, in class order.
        mean, std: (F,) feature standardisation.
        weights: (F + 1, T) coefficients (last row: biases).
    """

    tasks: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: Sequence[int], tasks: Sequence[str], steps: int = 2000,
            lr: float = 0.5, l2: float = 1e-3) -> ImageTaskClassifier:
        """Fit on (N, F) features and N labels (indices into ``tasks``) by full-batch gradient descent."""
        x = np.asarray(features, np.float64)
        y = np.eye(len(tasks))[np.asarray(labels)]  # (N, T) one-hot
        mean, std = x.mean(0), x.std(0) + 1e-8
        z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])  # (N, F + 1)
        w = np.zeros((z.shape[1], len(tasks)))
        for _ in range(steps):
            p = _softmax(z @ w)
            w -= lr * (z.T @ (p - y) / len(z) + l2 * w)
        return cls(tuple(tasks), mean, std, w)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(T,) class probabilities of one (H, W, 3) image in [0, 1]."""
        z = np.append((image_features(image) - self.mean) / self.std, 1.0)
        return _softmax(z[None] @ self.weights)[0]

    def predict(self, image: np.ndarray, allowed: Sequence[str] | None = None) -> tuple[str, float]:
        """The most probable task (among ``allowed`` if given) and its renormalised probability."""
        probs = self.probabilities(image)
        keep = [i for i, t in enumerate(self.tasks) if allowed is None or t in allowed]
        if not keep:
            raise ValueError(f"none of the tasks {list(allowed or [])} is one this classifier knows: {self.tasks}")
        sub = probs[keep] / probs[keep].sum()
        best = int(np.argmax(sub))
        return self.tasks[keep[best]], float(sub[best])


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _demo_inputs(root: Path, split: str) -> tuple[list[np.ndarray], list[str]]:
    from textualdeg.imageio import read_image

    paths = sorted((root / split / "input").glob("*.png"))
    return [read_image(p) for p in paths], [p.stem.split("_", 1)[0] for p in paths]


@functools.lru_cache(maxsize=4)
def fit_on_demo_photographs(seeds: tuple[int, ...] = (1, 2, 3, 4)) -> ImageTaskClassifier:
    """Fit on the demo's degraded *training* scenes, built with each of ``seeds`` (the demo itself uses 0).

    Cached per ``seeds`` (a process fits once; about 25 s on 2 cores for 4 seeds).
    """
    from textualdeg.demo.scenes import build_demo_dataset

    features, labels, tasks = [], [], tuple(DEGRADATION_TASKS.values())
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            build_demo_dataset(Path(tmp) / str(seed), seed=seed)
            images, kinds = _demo_inputs(Path(tmp) / str(seed), "train")
            features += [image_features(im) for im in images]
            labels += [tasks.index(DEGRADATION_TASKS[k]) for k in kinds]
    return ImageTaskClassifier.fit(np.stack(features), labels, tasks)


def demo_accuracy(classifier: ImageTaskClassifier, seed: int = 0) -> tuple[float, dict[str, float]]:
    """Accuracy on the demo's test scenes (held-out photographs, the demo's own seed): overall and per degradation."""
    from textualdeg.demo.scenes import build_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        build_demo_dataset(Path(tmp), seed=seed)
        images, kinds = _demo_inputs(Path(tmp), "test")
    hits = {k: [] for k in DEGRADATION_TASKS}
    for image, kind in zip(images, kinds):
        hits[kind].append(classifier.predict(image)[0] == DEGRADATION_TASKS[kind])
    per_kind = {k: float(np.mean(v)) for k, v in hits.items()}
    return float(np.mean([h for v in hits.values() for h in v])), per_kind

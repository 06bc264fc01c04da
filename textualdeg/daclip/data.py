"""The DA-CLIP training data: the official tab-separated CSV of (LQ image, "caption: degradation").

The official format (``daclip_train.csv`` / ``daclip_val.csv`` of Algolzw/daclip-uir,
read by ``CsvDataset`` with ``sep="\\t"``, ``--csv-img-key filepath --csv-caption-key
title``)::

    filepath<TAB>title
    LQ/GOPR0384_11_00_000001.png<TAB>people walking on a city street: motion-blurry

The title is the clean caption and the degradation name joined by ``": "``; the
degradation is the text after the last ``": "`` (the official code splits on every
``": "`` and fails on a caption that holds one). Relative paths are relative to the CSV's
folder. The whole CSV is checked when the dataset is built, before training starts: a
wrong header, a row without a tab, a title without ``": "``, an image that is missing or
a degradation outside the run's list is an error naming the line of the CSV; a caption
longer than the text context is cut, with a warning (``tokenize``).

Training images get the official open_clip training transform, ``RandomResizedCrop(size,
scale=(0.9, 1.0), ratio=(3/4, 4/3), bicubic)`` then normalisation, with the crop drawn
from a generator seeded by ``(seed, epoch, index)`` (``sample_seed``), so a resumed run
and any number of workers see the same crops. Validation images get the official
validation transform: the shortest side resized to ``size`` (bicubic), the central
square kept. See docs/daclip.md.

DA-CLIP: "Controlling Vision-Language Models for Multi-Task Image Restoration"
(Luo et al., ICLR 2024), arXiv:2310.01018.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from textualdeg.data.sampling import sample_seed
from textualdeg.imageio import image_to_tensor, read_image
from textualdeg.log import get_logger

logger = get_logger(__name__)

__all__ = [
    "CSV_COLUMNS",
    "CROP_RATIO",
    "CROP_SCALE",
    "DaClipCsvDataset",
    "DaClipCsvError",
    "DaClipRow",
    "collate",
    "normalize",
    "random_resized_crop",
    "read_daclip_csv",
    "resize_center_crop",
    "split_title",
]

CSV_COLUMNS = ("filepath", "title")
CROP_SCALE = (0.9, 1.0)  # open_clip's AugmentationCfg.scale
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default
TITLE_SEPARATOR = ": "
_CROP_STREAM = 21  # the sample_seed stream of the training crops
_MAX_LISTED = 10  # problems listed in one error message


class DaClipCsvError(ValueError):
    """A DA-CLIP CSV that does not follow the official format (the message names the lines)."""


@dataclass(frozen=True)
class DaClipRow:
    """One checked CSV row.

    Attributes:
        line: the line of the CSV file (the header is line 1).
        path: the LQ image, resolved against the CSV's folder.
        caption: the clean-content caption.
        degradation: the degradation name.
    """

    line: int
    path: Path
    caption: str
    degradation: str


def split_title(title: str) -> tuple[str, str]:
    """``"a cat on a sofa: noisy"`` -> ``("a cat on a sofa", "noisy")`` (split at the last ``": "``).

    Raises:
        ValueError: the title holds no ``": "``, or the caption or degradation is empty.
    """
    caption, separator, degradation = title.rpartition(TITLE_SEPARATOR)
    caption, degradation = caption.strip(), degradation.strip()
    if not separator or not caption or not degradation:
        raise ValueError(f"title {title!r} is not 'caption: degradation'")
    return caption, degradation


def _check_header(header: list[str] | None, csv_path: Path) -> None:
    """The first line must be exactly ``filepath<TAB>title``."""
    if header is None:
        raise DaClipCsvError(f"{csv_path} is empty: expected the header 'filepath<TAB>title' and one row per image")
    if [h.strip() for h in header] == list(CSV_COLUMNS):
        return
    hint = ""
    if len(header) == 1 and "," in header[0]:
        hint = " (the columns are separated by commas; the official format separates them by a tab)"
    raise DaClipCsvError(f"{csv_path} line 1: header {header!r}, expected the two tab-separated columns "
                         f"{list(CSV_COLUMNS)} (the official daclip_train.csv format){hint}")


def _resolve(path_text: str, folder: Path) -> Path:
    """An absolute path as is; a relative one against the CSV's folder."""
    path = Path(os.path.expanduser(path_text.strip()))
    return path if path.is_absolute() else folder / path


def _parse_row(fields: list[str], line: int, folder: Path, allowed: set[str]) -> tuple[DaClipRow | None, str | None]:
    """One data row -> (row, None) or (None, the problem)."""
    if len(fields) != 2:
        return None, f"line {line}: {len(fields)} tab-separated fields {fields!r}, expected 2 (filepath, title)"
    path_text, title = fields
    try:
        caption, degradation = split_title(title)
    except ValueError as error:
        return None, f"line {line}: {error}"
    if degradation not in allowed:
        return None, (f"line {line}: degradation {degradation!r} is not one of the run's degradations "
                      f"{sorted(allowed)} (datasets.degradations)")
    path = _resolve(path_text, folder)
    if not path.is_file():
        return None, f"line {line}: image {path} does not exist (filepath {path_text!r})"
    return DaClipRow(line, path, caption, degradation), None


def read_daclip_csv(csv_path: str | os.PathLike, degradations: Sequence[str]) -> list[DaClipRow]:
    """Read and check a DA-CLIP CSV; every row is checked before anything trains.

    Args:
        csv_path: the tab-separated CSV (columns ``filepath``, ``title``).
        degradations: the degradation names the rows may use.

    Returns:
        The rows in file order.

    Raises:
        FileNotFoundError: no such CSV.
        DaClipCsvError: a wrong header, no rows, or bad rows (the first ten are listed,
            each with its line, and the image path or the degradation name).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"DA-CLIP CSV {csv_path} does not exist")
    allowed = set(degradations)
    rows, problems = [], []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        _check_header(next(reader, None), csv_path)
        for fields in reader:
            if not fields or not "".join(fields).strip():
                continue  # a blank line
            row, problem = _parse_row(fields, reader.line_num, csv_path.parent, allowed)
            if problem is not None:
                problems.append(problem)
            else:
                rows.append(row)
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DaClipCsvError(f"{csv_path}: {len(problems)} bad row(s):\n  {listed}{more}")
    if not rows:
        raise DaClipCsvError(f"{csv_path} has a header but no rows")
    return rows


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, H, W) normalised by the CLIP mean and std."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean_t) / std_t


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, h, w) -> (3, height, width), bicubic with antialiasing (as PIL's), clamped to [0, 1]."""
    if image.shape[-2:] == (height, width):
        return image
    out = F.interpolate(image[None], size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)


def crop_box(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE,
             ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random-resized crop (torchvision's ``RandomResizedCrop.get_params``)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the central crop of the clamped ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): a crop of 90-100 % of the area, ratio 3/4..4/3, resized bicubic."""
    top, left, h, w = crop_box(image.shape[-2], image.shape[-1], rng)
    return _resize(image[:, top:top + h, left:left + w], size, size)


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): the shortest side resized to ``size``, the central square kept."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, int(round(height * scale))), max(size, int(round(width * scale)))
    image = _resize(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[:, top:top + size, left:left + size]


class DaClipCsvDataset(Dataset):
    """A checked DA-CLIP CSV: (image, caption tokens, degradation tokens) per row.

    Items are indexed by ``(epoch, index)`` (``EpochSampler``, training: a seeded random
    crop) or by a plain ``index`` (validation: resize and central crop).

    Args:
        csv_path: the tab-separated CSV.
        degradations: the run's degradation names (a row with another name is an error).
        image_size: the CLIP input side.
        mean, std: the CLIP normalisation.
        seed: ``manual_seed`` (the crops depend on it, the epoch and the index only).
        train: the training transform (else the validation one).
        context_length: tokens per text (longer captions are cut with a warning).

    Raises:
        DaClipCsvError: see :func:`read_daclip_csv`.
    """

    def __init__(self, csv_path: str | os.PathLike, degradations: Sequence[str], image_size: int,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, train: bool = True,
                 context_length: int = 77) -> None:
        from textualdeg.daclip.model import tokenize

        self.csv_path = Path(csv_path)
        self.degradations = tuple(degradations)
        self.rows = read_daclip_csv(self.csv_path, self.degradations)
        self.image_size, self.seed, self.train = int(image_size), int(seed), bool(train)
        self.mean, self.std = tuple(mean), tuple(std)
        self.caption_tokens = tokenize([r.caption for r in self.rows], context_length)  # (N, L)
        self.degradation_tokens = tokenize([r.degradation for r in self.rows], context_length)  # (N, L)
        logger.info("%s: %d rows, degradations %s", self.csv_path, len(self.rows),
                    {d: n for d, n in self.counts().items() if n})

    def counts(self) -> dict[str, int]:
        """Rows per degradation name (in the run's order)."""
        counts = dict.fromkeys(self.degradations, 0)
        for row in self.rows:
            counts[row.degradation] += 1
        return counts

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int, epoch: int | None = None) -> torch.Tensor:
        """The normalised (3, S, S) image of row ``index`` (a seeded crop when ``epoch`` is given)."""
        image = image_to_tensor(read_image(self.rows[index].path, "rgb"))  # (3, H, W)
        if epoch is None:
            image = resize_center_crop(image, self.image_size)
        else:
            rng = np.random.default_rng(sample_seed(_CROP_STREAM, self.seed, epoch, index))
            image = random_resized_crop(image, self.image_size, rng)
        return normalize(image, self.mean, self.std)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            epoch, index = key
            image = self.load(index, epoch if self.train else None)
        else:
            index, image = key, self.load(key)
        return {"image": image, "caption": self.caption_tokens[index], "degradation": self.degradation_tokens[index],
                "index": index}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the items: image (B, 3, S, S), caption and degradation tokens (B, L), index (B,)."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "caption": torch.stack([it["caption"] for it in items]),
        "degradation": torch.stack([it["degradation"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }

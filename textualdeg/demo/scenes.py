"""The demo's scenes: 64 x 64 crops of the photographs that ship with scikit-image.

A *scene* is one square crop of one photograph. Each photograph's central square is
resized to 128 x 128 and cut into its four 64 x 64 quadrants, so a photograph gives four
scenes (``<photo>-<quadrant>``, quadrants ``tl tr bl br``). Training and test scenes
come from different photographs, so the restoration numbers are on photographs the
backbone never saw.

The images are square and exactly the guidance resolution (64), so a guidance image
covers its input pixel for pixel: the layout the method assumes once a guidance image
is generated for every input (docs/demo.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

DEGRADATIONS = ("noise", "blur", "haze", "rain")
TRAIN_PHOTOS = ("astronaut", "coffee", "motorcycle", "camera", "immunohistochemistry", "hubble_deep_field")
TEST_PHOTOS = ("rocket", "chelsea")
QUADRANTS = ("tl", "tr", "bl", "br")
SCENE_SIZE = 64
_DEGRADATION_KWARGS = {"noise": {"sigma": 25.0}, "blur": {"kernel_size": 9, "length": (3.0, 7.0)}}
#: demo degradation -> DA-CLIP's name for it (textualdeg.daclip.model.DEGRADATIONS)
DACLIP_NAMES = {"noise": "noisy", "blur": "motion-blurry", "haze": "hazy", "rain": "rainy"}


def photograph(name: str) -> np.ndarray:
    """A scikit-image photograph as float32 (H, W, 3) in [0, 1] (grey ones repeated to RGB)."""
    from skimage import data

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3].astype(np.float32) / 255.0


def _central_square(image: np.ndarray, side: int) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    short = min(height, width)
    top, left = (height - short) // 2, (width - short) // 2
    square = image[top : top + short, left : left + short]
    return cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)


def photo_scenes(photo: str, size: int = SCENE_SIZE) -> dict[str, np.ndarray]:
    """The four quadrant scenes of one photograph: ``{"<photo>-tl": (size, size, 3), ...}``."""
    square = _central_square(photograph(photo), 2 * size)  # (2 size, 2 size, 3)
    scenes = {}
    for index, quadrant in enumerate(QUADRANTS):
        row, col = divmod(index, 2)
        scenes[f"{photo}-{quadrant}"] = np.ascontiguousarray(
            square[row * size : (row + 1) * size, col * size : (col + 1) * size]
        )
    return scenes


def demo_scenes(photos: tuple[str, ...] = TRAIN_PHOTOS + TEST_PHOTOS, size: int = SCENE_SIZE) -> dict[str, np.ndarray]:
    """Every scene of ``photos``, in a fixed order (the tiny prior's training set)."""
    scenes: dict[str, np.ndarray] = {}
    for photo in photos:
        scenes.update(photo_scenes(photo, size))
    return scenes


def build_demo_dataset(root: Path, size: int = SCENE_SIZE, seed: int = 0) -> dict[str, int]:
    """Write ``root/{train,test}/{input,target}/<degradation>_<scene>.png``.

    Every scene is degraded once by each degradation (seeded by scene and degradation).
    Also writes ``root/clean/<scene>.png``: every clean scene, train and test, the images
    the tiny prior knows (stage 1 learns words for them), and ``root/clean_test/`` (the
    test scenes alone). Returns the pairs per split.
    """
    from textualdeg.data.degradations import degrade
    from textualdeg.imageio import write_image

    counts = {}
    for split, photos in (("train", TRAIN_PHOTOS), ("test", TEST_PHOTOS)):
        scenes = demo_scenes(photos, size)
        for scene_index, (scene, clean) in enumerate(scenes.items()):
            write_image(root / "clean" / f"{scene}.png", clean)
            if split == "test":
                write_image(root / "clean_test" / f"{scene}.png", clean)
            for kind_index, kind in enumerate(DEGRADATIONS):
                rng = np.random.default_rng([seed, scene_index, kind_index, split == "test"])
                degraded = np.clip(degrade(clean, kind, rng, **_DEGRADATION_KWARGS.get(kind, {})), 0.0, 1.0)
                stem = f"{kind}_{scene}"
                write_image(root / split / "input" / f"{stem}.png", degraded)
                write_image(root / split / "target" / f"{stem}.png", clean)
        counts[split] = len(scenes) * len(DEGRADATIONS)
    return counts


def split_by_degradation(data_root: Path, folders: tuple[str, ...] = ("input", "target", "guidance")) -> None:
    """Hard-link ``<split>/<folder>/<kind>_*`` into ``<split>_<kind>/<folder>/`` for every folder present."""
    for split in ("train", "test"):
        for kind in DEGRADATIONS:
            for folder in folders:
                if not (data_root / split / folder).is_dir():
                    continue
                destination = data_root / f"{split}_{kind}" / folder
                destination.mkdir(parents=True, exist_ok=True)
                for source in sorted((data_root / split / folder).glob(f"{kind}_*")):
                    if (destination / source.name).exists():
                        continue
                    try:
                        os.link(source, destination / source.name)
                    except OSError:  # another file system: copy
                        shutil.copy2(source, destination / source.name)


def write_daclip_csvs(data_root: Path) -> dict[str, Path]:
    """Write ``data_root/daclip_{train,test}.csv``: every degraded input of the split, DA-CLIP's format.

    Tab-separated ``filepath`` (relative to the CSV) and ``title`` = ``"<caption>: <degradation>"``;
    the caption names the photograph ("a photo of the rocket"), the degradation is DA-CLIP's
    name of the demo degradation (``DACLIP_NAMES``). Returns split -> CSV path.
    """
    paths = {}
    for split in ("train", "test"):
        lines = ["filepath\ttitle"]
        for source in sorted((data_root / split / "input").glob("*.png")):
            kind, scene = source.stem.split("_", 1)
            photo = scene.rsplit("-", 1)[0].replace("_", " ")
            lines.append(f"{split}/input/{source.name}\ta photo of the {photo}: {DACLIP_NAMES[kind]}")
        paths[split] = data_root / f"daclip_{split}.csv"
        paths[split].write_text("\n".join(lines) + "\n")
    return paths

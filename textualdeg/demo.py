"""``make demo``: the whole method, stages 1 to 5, on photographs that ship with scikit-image.

What it does, through the same scripts and option files a user runs (``options/demo/``):

0. writes tiny random-weight Stable Diffusion / CLIP / DINOv2 folders
   (``textualdeg make-tiny``) and a demo dataset: scikit-image photographs degraded by
   Gaussian noise, motion blur, synthetic haze and synthetic rain streaks;
1. trains the image-to-text mapper (``scripts/train/train_i2t_mapping.py``);
2. trains the textual-restoration mapper (``scripts/train/train_tr_mapping.py``);
3. generates a guidance image for every degraded image (``scripts/generate/generate_reference.py``);
4. trains one tiny guided NAFNet per degradation (``scripts/train/train_restoration.py``,
   the variable ``DEMO_DEGRADATION`` picks the data folders of ``options/demo/*.yml``);
5. evaluates each (``scripts/eval/evaluate.py``) and writes ``<output>/report.md`` with a
   PSNR/SSIM table per degradation, a comparison picture and the loss curves.

The text-to-image models are tiny and random, so their guidance images are noise; the
restoration backbone still learns, which is what the table shows.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from textualdeg.log import get_logger, setup_logging

logger = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEGRADATIONS = ("noise", "blur", "haze", "rain")
TRAIN_PHOTOS = ("astronaut", "coffee", "motorcycle", "camera")
TEST_PHOTOS = ("rocket", "chelsea")
_DEGRADATION_KWARGS = {"noise": {"sigma": 25.0}, "blur": {"kernel_size": 9, "length": (3.0, 7.0)}}


def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph as float32 (H, W, 3) in [0, 1]."""
    from skimage import data

    if name == "motorcycle":
        image = data.stereo_motorcycle()[0]
    else:
        image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3].astype(np.float32) / 255.0


def _resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def build_demo_dataset(root: Path, train_short_side: int = 128, test_short_side: int = 96, seed: int = 0) -> dict[str, int]:
    """Write ``root/{train,test}/{input,target}/<degradation>_<photo>.png``.

    Train and test use different photographs. Returns the number of pairs per split.
    """
    from textualdeg.data.degradations import degrade
    from textualdeg.imageio import write_image

    counts = {}
    for split, photos, short_side in (
        ("train", TRAIN_PHOTOS, train_short_side),
        ("test", TEST_PHOTOS, test_short_side),
    ):
        for photo_index, photo in enumerate(photos):
            clean = _resize_short_side(_photo(photo), short_side)
            for kind_index, kind in enumerate(DEGRADATIONS):
                rng = np.random.default_rng([seed, photo_index, kind_index, split == "test"])
                degraded = np.clip(degrade(clean, kind, rng, **_DEGRADATION_KWARGS.get(kind, {})), 0.0, 1.0)
                stem = f"{kind}_{photo}"
                write_image(root / split / "input" / f"{stem}.png", degraded)
                write_image(root / split / "target" / f"{stem}.png", clean)
        counts[split] = len(photos) * len(DEGRADATIONS)
    return counts


# Stages 1-3 run once over the whole demo dataset; stages 4-5 once per degradation (the
# environment variable DEMO_DEGRADATION selects its folders in options/demo/*.yml).
GUIDANCE_STAGES = (
    ("stage 1: image-to-text mapper", "scripts/train/train_i2t_mapping.py", "options/demo/train_i2t.yml"),
    ("stage 2: textual-restoration mapper", "scripts/train/train_tr_mapping.py", "options/demo/train_tr.yml"),
    ("stage 3: guidance generation", "scripts/generate/generate_reference.py", "options/demo/generate.yml"),
)
RESTORATION_STAGES = (
    ("stage 4: guided restoration training", "scripts/train/train_restoration.py", "options/demo/train_restoration.yml"),
    ("stage 5: evaluation", "scripts/eval/evaluate.py", "options/demo/evaluate.yml"),
)

EVALUATION_NAME = "demo_evaluation"  # results/<name>_<degradation>/ (options/demo/evaluate.yml)
# TensorBoard folders whose train/loss curves go into the report, per stage.
LOSS_LOGS = {
    "stage 1 (I2T mapper)": ["experiments/demo_i2t_mapping"],
    "stage 2 (TR mapper)": ["experiments/demo_tr_mapping"],
    "stage 4 (guided NAFNet)": [f"experiments/demo_restoration_{kind}" for kind in DEGRADATIONS],
}


def run_stage(title: str, script: str, option_file: str, degradation: str | None = None) -> float:
    """Run one stage's script in a fresh process from the repository root; returns seconds."""
    env = dict(os.environ)
    prefix = ""
    if degradation is not None:
        env["DEMO_DEGRADATION"] = degradation
        prefix = f"DEMO_DEGRADATION={degradation} "
    command = f"{prefix}python {script} -opt {option_file}"
    logger.info("=== %s: %s", title, command)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, script, "-opt", option_file], cwd=REPO_ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{title} failed (exit code {result.returncode}): {command}")
    return time.perf_counter() - start


def split_by_degradation(data_root: Path) -> None:
    """Hard-link ``<split>/{input,target,guidance}/<kind>_*`` into ``<split>_<kind>/`` folders."""
    for split in ("train", "test"):
        for kind in DEGRADATIONS:
            for folder in ("input", "target", "guidance"):
                destination = data_root / f"{split}_{kind}" / folder
                destination.mkdir(parents=True, exist_ok=True)
                for source in sorted((data_root / split / folder).glob(f"{kind}_*")):
                    try:
                        os.link(source, destination / source.name)
                    except OSError:  # another file system: copy
                        shutil.copy2(source, destination / source.name)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def score_table(output: Path) -> list[dict[str, float | str]]:
    """Mean input and restored PSNR/SSIM per degradation on the demo test split."""
    from textualdeg.imageio import read_image
    from textualdeg.metrics import compute_metrics

    rows = []
    for kind in DEGRADATIONS:
        results_dir = output / "results" / f"{EVALUATION_NAME}_{kind}"
        per_image = {row["image"]: row for row in _read_csv(next(results_dir.glob("*/per_image.csv")))}
        stems = sorted(per_image)
        inputs = [
            compute_metrics(
                read_image(output / "data/test/input" / f"{s}.png"),
                read_image(output / "data/test/target" / f"{s}.png"),
                "textualdeg",
            )
            for s in stems
        ]
        rows.append({
            "degradation": kind,
            "images": len(stems),
            "input_psnr": float(np.mean([m["psnr"] for m in inputs])),
            "input_ssim": float(np.mean([m["ssim"] for m in inputs])),
            "restored_psnr": float(np.mean([float(per_image[s]["psnr"]) for s in stems])),
            "restored_ssim": float(np.mean([float(per_image[s]["ssim"]) for s in stems])),
        })
    return rows


def _table_markdown(rows: list[dict[str, float | str]]) -> str:
    lines = [
        "| degradation | images | input PSNR | restored PSNR | gain (dB) | input SSIM | restored SSIM |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['degradation']} | {r['images']} | {r['input_psnr']:.2f} | {r['restored_psnr']:.2f} | "
            f"{r['restored_psnr'] - r['input_psnr']:+.2f} | {r['input_ssim']:.4f} | {r['restored_ssim']:.4f} |"
        )
    return "\n".join(lines)


def comparison_picture(output: Path, path: Path, photo: str = TEST_PHOTOS[0]) -> None:
    """One row per degradation: input | guidance | restored | target."""
    import cv2

    from textualdeg.imageio import read_image, write_image

    rows = []
    for kind in DEGRADATIONS:
        images_dir = next((output / "results" / f"{EVALUATION_NAME}_{kind}").glob("*/images"))
        stem = f"{kind}_{photo}"
        target = read_image(output / "data/test/target" / f"{stem}.png")
        height, width = target.shape[:2]
        guidance = cv2.resize(read_image(output / "data/test/guidance" / f"{stem}.png"), (width, height),
                              interpolation=cv2.INTER_NEAREST)
        restored = read_image(next(images_dir.glob(f"{stem}.*")))
        tiles = [read_image(output / "data/test/input" / f"{stem}.png"), guidance, restored, target]
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for t in tiles], 1))
    write_image(path, np.concatenate(rows, 0))


def _scalars(log_dir: Path, tag: str = "train/loss") -> tuple[list[int], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps, values = [], []
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                steps.append(event.step)
                values.append(event.value)
        break
    return steps, values


def loss_curves(output: Path, path: Path) -> None:
    """Plot train/loss of stages 1, 2 and 4 from their TensorBoard logs into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(LOSS_LOGS), figsize=(4 * len(LOSS_LOGS), 3))
    for axis, (title, folders) in zip(axes, LOSS_LOGS.items()):
        found = False
        for folder in folders:
            steps, values = _scalars(output / folder)
            found = found or bool(steps)
            axis.plot(steps, values, label=folder.rsplit("_", 1)[-1] if len(folders) > 1 else None)
        if len(folders) > 1:
            axis.legend(fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.set_ylabel("train/loss")
        if not found:
            axis.text(0.5, 0.5, "no TensorBoard scalars found", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_report(output: Path, rows: list[dict[str, float | str]], timings: dict[str, float]) -> Path:
    """``<output>/report.md`` with the table, the comparison picture and the loss curves."""
    from textualdeg.fileio import atomic_write_text

    comparison_picture(output, output / "comparison.png")
    loss_curves(output, output / "loss_curves.png")
    timing_lines = "\n".join(f"| {title} | {seconds:.0f} |" for title, seconds in timings.items())
    text = f"""# textualdeg demo report

The whole method ran on scikit-image photographs: stages 1-3 on tiny **random-weight**
Stable Diffusion / CLIP models (so the guidance images are noise, not restored
photographs), stage 4 trained one tiny guided NAFNet per degradation, stage 5 scored each on held-out
photographs ({", ".join(TEST_PHOTOS)}) with the `textualdeg` metric protocol
(RGB, no border crop, 3-D Gaussian SSIM, outputs rounded to 8 bit).

## PSNR / SSIM per degradation (test photographs)

{_table_markdown(rows)}

## Input | guidance | restored | target

![comparison](comparison.png)

## Training loss

![loss curves](loss_curves.png)

## Time per stage (seconds)

| stage | seconds |
|---|---:|
{timing_lines}
"""
    return atomic_write_text(output / "report.md", text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0 when the restored PSNR beats the input PSNR for every degradation."""
    parser = argparse.ArgumentParser(description="textualdeg end-to-end demo (tiny models, CPU)")
    parser.add_argument("--output", type=Path, default=Path("demo_output"),
                        help="demo folder (the options/demo files expect demo_output)")
    args = parser.parse_args(argv)
    setup_logging()
    output = (REPO_ROOT / args.output).resolve() if not args.output.is_absolute() else args.output
    if output != (REPO_ROOT / "demo_output").resolve():
        parser.error("options/demo/*.yml read and write demo_output/ under the repository root; keep --output demo_output")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    from textualdeg.guidance.tiny import make_tiny

    if output.exists():  # a fresh run every time: stages resume and skip what exists otherwise
        shutil.rmtree(output)
    timings["models and data"] = _timed(lambda: (make_tiny(output / "models"), build_demo_dataset(output / "data")))
    for title, script, option_file in GUIDANCE_STAGES:
        timings[title] = run_stage(title, script, option_file)
    split_by_degradation(output / "data")
    for kind in DEGRADATIONS:
        for title, script, option_file in RESTORATION_STAGES:
            timings[f"{title} ({kind})"] = run_stage(f"{title} ({kind})", script, option_file, kind)
    rows = score_table(output)
    report = write_report(output, rows, timings)
    table = _table_markdown(rows)
    print(f"\n{table}\n\nreport: {report}  (total {time.perf_counter() - start:.0f} s)")
    return 0 if all(r["restored_psnr"] > r["input_psnr"] for r in rows) else 1


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())

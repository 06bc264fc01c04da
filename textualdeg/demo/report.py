"""The demo report: the guidance table, the guided-versus-plain ablation, the pictures and the loss curves.

Everything is read back from what the stages wrote under the demo folder (images, the
evaluation's ``per_image.csv`` files, TensorBoard event files), so the report says what
the runs did, not what the demo expected.

Layout it reads (``<out>`` is the demo folder)::

    data/test/{input,target,guidance,guidance_without_tr}/<degradation>_<scene>.png
    data/clean_test/guidance/<scene>.png             guidance from the clean scene's words
    results/<run>/*/per_image.csv, results/<run>/*/images/<stem>.png   stage 5, one per run
    experiments/<experiment>/logs/**/events.out.tfevents.*            TensorBoard
    daclip/classification.json, daclip/confusion_matrix.png          DA-CLIP on the test inputs
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textualdeg.demo.scenes import DACLIP_NAMES, DEGRADATIONS

#: The ablation's rows, in order: (variant key, label, guidance folder or None).
VARIANTS = (
    ("plain", "(a) no guidance (plain NAFNet)", None),
    ("guidance", "(b) generated guidance (stage 3)", "guidance"),
    ("target", "(c) oracle guidance (the clean target)", "target"),
)


def run_name(degradation: str, variant: str, seed: int) -> str:
    """Folder name of one stage-4/5 run: ``<degradation>_<variant>_seed<seed>``."""
    return f"{degradation}_{variant}_seed{seed}"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


def _psnr_against(image_path: Path, target_path: Path) -> float:
    """PSNR (textualdeg protocol) of an image against its target, resized to the target if needed."""
    import cv2

    from textualdeg.imageio import read_image
    from textualdeg.metrics import compute_metrics

    image, target = read_image(image_path), read_image(target_path)
    if image.shape != target.shape:
        image = cv2.resize(image, (target.shape[1], target.shape[0]), interpolation=cv2.INTER_AREA)
    return float(compute_metrics(image, target, "textualdeg")["psnr"])


def test_stems(out: Path, degradation: str) -> list[str]:
    """Stems ``<degradation>_<scene>`` of the test inputs of one degradation."""
    return sorted(p.stem for p in (out / "data/test/input").glob(f"{degradation}_*.png"))


def guidance_rows(out: Path) -> list[dict[str, float | str]]:
    """Per degradation, the mean PSNR against the clean test target of the input and of each guidance.

    Columns: ``input`` (the degraded input), ``without_tr`` (guidance from the I2T words of
    the degraded input, no TR mapper), ``guidance`` (stage 3: I2T + TR) and ``clean_words``
    (guidance from the I2T words of the clean scene itself: the best stages 1 and 3 can do).
    """
    rows = []
    for kind in DEGRADATIONS:
        stems = test_stems(out, kind)
        target = {s: out / "data/test/target" / f"{s}.png" for s in stems}
        scene = {s: s.split("_", 1)[1] for s in stems}
        row: dict[str, float | str] = {"degradation": kind, "images": len(stems)}
        for column, path_of in (
            ("input", lambda s: out / "data/test/input" / f"{s}.png"),
            ("without_tr", lambda s: out / "data/test/guidance_without_tr" / f"{s}.png"),
            ("guidance", lambda s: out / "data/test/guidance" / f"{s}.png"),
            ("clean_words", lambda s: out / "data/clean_test/guidance" / f"{scene[s]}.png"),
        ):
            paths = [path_of(s) for s in stems]
            row[column] = float(np.mean([_psnr_against(p, target[s]) for p, s in zip(paths, stems)])) if all(
                p.is_file() for p in paths) else float("nan")
        rows.append(row)
    return rows


def guidance_markdown(rows: Sequence[Mapping[str, float | str]]) -> str:
    lines = [
        "| degradation | images | input | guidance without TR mapper | guidance (I2T + TR) | from the clean scene's words |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['degradation']} | {r['images']} | {r['input']:.2f} | {r['without_tr']:.2f} | "
                     f"{r['guidance']:.2f} | {r['clean_words']:.2f} |")
    return "\n".join(lines)


def per_image_scores(out: Path, run: str) -> dict[str, dict[str, float]]:
    """``{stem: {"psnr", "ssim"}}`` from a run's stage-5 ``per_image.csv``.

    Raises:
        FileNotFoundError: naming the run whose evaluation wrote no ``per_image.csv``.
    """
    found = sorted((out / "results" / run).glob("*/per_image.csv"))
    if not found:
        raise FileNotFoundError(f"no per_image.csv under {out / 'results' / run}: did stage 5 of {run} run?")
    return {row["image"]: {"psnr": float(row["psnr"]), "ssim": float(row["ssim"])} for row in _read_csv(found[0])}


@dataclass(frozen=True)
class AblationRow:
    """One (degradation, variant) cell: mean and spread over seeds of the per-seed mean scores."""

    degradation: str
    variant: str
    label: str
    seeds: int
    psnr: float
    psnr_std: float
    ssim: float
    ssim_std: float
    gain: float          # mean over seeds of (this variant - plain) PSNR, same seed
    gain_std: float


def ablation_rows(out: Path, seeds: Sequence[int], path_label: str) -> list[AblationRow]:
    """The ablation table from the stage-5 results of every (degradation, variant, seed) run."""
    rows = []
    for kind in DEGRADATIONS:
        means = {}
        for variant, _, _ in VARIANTS:
            per_seed = []
            for seed in seeds:
                scores = per_image_scores(out, run_name(kind, variant, seed))
                per_seed.append((np.mean([s["psnr"] for s in scores.values()]),
                                 np.mean([s["ssim"] for s in scores.values()])))
            means[variant] = np.array(per_seed)  # (seeds, 2)
        for variant, label, folder in VARIANTS:
            psnr, psnr_std = _mean_std(means[variant][:, 0])
            ssim, ssim_std = _mean_std(means[variant][:, 1])
            gain, gain_std = _mean_std(means[variant][:, 0] - means["plain"][:, 0])
            full_label = label if folder is None else f"{label}, {path_label}"
            rows.append(AblationRow(kind, variant, full_label, len(seeds), psnr, psnr_std, ssim, ssim_std,
                                    gain, gain_std))
    return rows


def _pm(value: float, std: float, seeds: int, digits: int) -> str:
    return f"{value:.{digits}f}" if seeds < 2 else f"{value:.{digits}f} ± {std:.{digits}f}"


def ablation_markdown(rows: Sequence[AblationRow], input_psnr: Mapping[str, float]) -> str:
    lines = [
        "| degradation | model | PSNR | SSIM | PSNR gain over (a) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        gain = "—" if r.variant == "plain" else _pm(r.gain, r.gain_std, r.seeds, 2)
        lines.append(f"| {r.degradation} (input {input_psnr[r.degradation]:.2f}) | {r.label} | "
                     f"{_pm(r.psnr, r.psnr_std, r.seeds, 2)} | {_pm(r.ssim, r.ssim_std, r.seeds, 4)} | {gain} |")
    return "\n".join(lines)


#: smallest mean PSNR difference the verdicts call a difference (dB)
MIN_GAIN_DB = 0.1


def verdict(gain: float, gain_std: float, seeds: int) -> str:
    """``helps`` / ``hurts`` / ``no clear difference`` for a mean gain over ``seeds`` seeds.

    A difference needs |mean| >= ``MIN_GAIN_DB`` and, with two seeds or more, the mean two
    standard deviations (over seeds) away from zero; with one seed the verdict says so.
    """
    margin = 2 * gain_std if seeds > 1 else 0.0
    suffix = " on this seed" if seeds == 1 else ""
    if gain >= MIN_GAIN_DB and gain - margin > 0:
        return "helps" + suffix
    if gain <= -MIN_GAIN_DB and gain + margin < 0:
        return "hurts" + suffix
    return "no clear difference" + suffix


def verdicts(rows: Sequence[AblationRow]) -> list[str]:
    """One sentence per degradation: does the generated guidance beat no guidance, and the oracle?"""
    lines = []
    for kind in DEGRADATIONS:
        cells = {r.variant: r for r in rows if r.degradation == kind}
        generated, oracle = cells["guidance"], cells["target"]
        spread = f" ± {generated.gain_std:.2f}" if generated.seeds > 1 else ""
        answer = verdict(generated.gain, generated.gain_std, generated.seeds)
        lines.append(f"- **{kind}**: generated guidance: **{answer}** ({generated.gain:+.2f}{spread} dB over no "
                     f"guidance); oracle guidance: {verdict(oracle.gain, oracle.gain_std, oracle.seeds)} "
                     f"({oracle.gain:+.2f} dB).")
    if rows and rows[0].seeds == 1:
        lines.append("- One seed: no spread is known; `python -m textualdeg.demo --seeds 3` gives mean ± std.")
    return lines


def _tile(image: np.ndarray, side: int) -> np.ndarray:
    import cv2

    if image.shape[:2] != (side, side):
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_NEAREST)
    return np.pad(image, ((2, 2), (2, 2), (0, 0)), constant_values=1.0)


def restored_image(out: Path, run: str, stem: str) -> Path:
    """The stage-5 output image of ``stem`` in ``run``."""
    found = sorted((out / "results" / run).glob(f"*/images/{stem}.*"))
    if not found:
        raise FileNotFoundError(f"no restored image {stem} under {out / 'results' / run}")
    return found[0]


def _picture(out: Path, path: Path, scenes: Sequence[str], tile_paths, zoom: int) -> Path:
    """One row per (scene, degradation) of the images ``tile_paths(stem, scene)`` names, each zoomed."""
    from textualdeg.imageio import read_image, write_image

    rows = []
    for scene in scenes:
        for kind in DEGRADATIONS:
            stem = f"{kind}_{scene}"
            side = read_image(out / "data/test/target" / f"{stem}.png").shape[0] * zoom
            rows.append(np.concatenate([_tile(read_image(p), side) for p in tile_paths(stem, scene)], 1))
    return write_image(path, np.concatenate(rows, 0))


COMPARISON_COLUMNS = ("input", "guidance", "restored without guidance", "restored with guidance", "target")


def comparison_picture(out: Path, path: Path, scenes: Sequence[str], seed: int, zoom: int = 2) -> Path:
    """One row per (scene, degradation): input | guidance | restored without | restored with | target."""
    test = out / "data/test"
    return _picture(out, path, scenes, lambda stem, scene: [
        test / "input" / f"{stem}.png",
        test / "guidance" / f"{stem}.png",
        restored_image(out, run_name(stem.split("_", 1)[0], "plain", seed), stem),
        restored_image(out, run_name(stem.split("_", 1)[0], "guidance", seed), stem),
        test / "target" / f"{stem}.png",
    ], zoom)


GUIDANCE_COLUMNS = ("input", "guidance without TR mapper", "guidance (I2T + TR)", "from the clean scene's words", "target")


def guidance_picture(out: Path, path: Path, scenes: Sequence[str], zoom: int = 2) -> Path:
    """One row per (scene, degradation): input | without TR | with TR | from clean words | target."""
    test = out / "data/test"
    return _picture(out, path, scenes, lambda stem, scene: [
        test / "input" / f"{stem}.png",
        test / "guidance_without_tr" / f"{stem}.png",
        test / "guidance" / f"{stem}.png",
        out / "data/clean_test/guidance" / f"{scene}.png",
        test / "target" / f"{stem}.png",
    ], zoom)


def scalars(log_dir: Path, tag: str = "train/loss") -> tuple[list[int], list[float]]:
    """Every ``tag`` scalar of every TensorBoard events file under ``log_dir``, sorted by step.

    A resumed run writes one events file per process start; all of them are read, and a
    step logged twice (before a kill and again after the resume) keeps its last value.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    by_step: dict[int, tuple[float, float]] = {}  # step -> (wall time, value)
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                number = value.simple_value if value.HasField("simple_value") else _tensor_value(value)
                if event.step not in by_step or event.wall_time >= by_step[event.step][0]:
                    by_step[event.step] = (event.wall_time, float(number))
    steps = sorted(by_step)
    return steps, [by_step[s][1] for s in steps]


def _tensor_value(value) -> float:
    from tensorboard.util import tensor_util

    return float(tensor_util.make_ndarray(value.tensor))


def loss_curves(out: Path, path: Path, panels: Mapping[str, Sequence[str]]) -> Path:
    """Plot train/loss of each panel's experiment folders (all their event files) into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for axis, (title, folders) in zip(axes[0], panels.items()):
        found = False
        for folder in folders:
            steps, values = scalars(out / folder)
            found = found or bool(steps)
            axis.plot(steps, values, label=Path(folder).name.removeprefix("demo_restoration_") if len(folders) > 1 else None,
                      linewidth=0.8)
        if len(folders) > 1:
            axis.legend(fontsize=6)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("train/loss")
        if not found:
            axis.text(0.5, 0.5, "no TensorBoard scalars found", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def daclip_markdown(out: Path, scenes: Sequence[str]) -> str | None:
    """The DA-CLIP section's tables from ``<out>/daclip/classification.json``; None when it is absent.

    Per demo degradation: the test inputs, how many DA-CLIP classified right, and its accuracy
    (chance: one over the classes); then the prediction and its probability for every
    degradation of ``scenes``.
    """
    path = out / "daclip" / "classification.json"
    if not path.is_file():
        return None
    import json

    record = json.loads(path.read_text())
    chance = 1.0 / max(1, len(record["per_class_accuracy"]))
    lines = ["| degradation (DA-CLIP name) | test inputs | classified right | accuracy |", "|---|---:|---:|---:|"]
    for kind in DEGRADATIONS:
        name = DACLIP_NAMES[kind]
        count = record["per_class_count"].get(name, 0)
        accuracy = record["per_class_accuracy"].get(name, 0.0)
        lines.append(f"| {kind} ({name}) | {count} | {round(accuracy * count)} | {accuracy:.2f} |")
    lines.append(f"| **all** | {record['num_images']} | {round(record['overall_accuracy'] * record['num_images'])} "
                 f"| **{record['overall_accuracy']:.2f}** (chance {chance:.2f}) |")
    by_stem = {Path(p["image"]).stem: p for p in record["predictions"]}
    lines += ["", "| test input | true | predicted (probability) |", "|---|---|---|"]
    for scene in scenes:
        for kind in DEGRADATIONS:
            prediction = by_stem.get(f"{kind}_{scene}")
            if prediction is not None:
                lines.append(f"| {kind}_{scene} | {prediction['label']} | {prediction['degradation']} "
                             f"({prediction['probability']:.2f}) |")
    return "\n".join(lines)

"""DA-CLIP training: exact resume under the engine, and the controller learns to classify degradations.

The learning test degrades real photographs shipped with scikit-image with the project's
noise, motion blur, haze and rain (the demo's settings), trains the tiny DA-CLIP's
controller on some photographs and classifies degraded versions of *other* photographs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from textualdeg.daclip.train import main

REPO = Path(__file__).resolve().parents[2]
OPTIONS = REPO / "options" / "train_daclip" / "daclip_tiny_cpu.yml"

#: the demo degradations and their DA-CLIP names
KINDS = {"noise": "noisy", "blur": "motion-blurry", "haze": "hazy", "rain": "rainy"}
CAPTIONS = {
    "astronaut": "a woman astronaut in a space suit in front of a flag",
    "coffee": "a cup of coffee on a saucer with a spoon",
    "motorcycle": "a motorcycle parked in a garage",
    "camera": "a man with a camera on a tripod in a field",
    "immunohistochemistry": "a microscope image of stained tissue cells",
    "hubble_deep_field": "many galaxies in the dark night sky",
    "brick": "a wall of grey bricks",
    "clock": "a clock hanging on a wall",
    "rocket": "a rocket on a launch pad under a blue sky",
    "chelsea": "a ginger cat looking to the side",
    "coins": "old coins lying on a table",
    "colorwheel": "a colour wheel with all hues",
}
TRAIN_PHOTOS = ("astronaut", "coffee", "motorcycle", "camera", "immunohistochemistry", "hubble_deep_field",
                "brick", "clock")
HELD_OUT_PHOTOS = ("rocket", "chelsea", "coins", "colorwheel")


def degraded_photographs(root: Path, photos: tuple[str, ...], variants: int = 1, seed: int = 0,
                         size: int = 64) -> list[tuple[Path, str, str]]:
    """Write every quadrant scene of ``photos`` degraded by each demo degradation; (path, caption, name) rows."""
    from textualdeg.data.degradations import degrade
    from textualdeg.demo.scenes import _DEGRADATION_KWARGS, photo_scenes
    from textualdeg.imageio import write_image

    rows = []
    for photo_index, photo in enumerate(photos):
        for scene_index, (scene, clean) in enumerate(photo_scenes(photo, size).items()):
            for kind_index, (kind, name) in enumerate(KINDS.items()):
                for variant in range(variants):
                    rng = np.random.default_rng([seed, photo_index, scene_index, kind_index, variant])
                    image = np.clip(degrade(clean, kind, rng, **_DEGRADATION_KWARGS.get(kind, {})), 0.0, 1.0)
                    path = root / name / f"{scene}_{variant}.png"
                    write_image(path, image)
                    rows.append((path, CAPTIONS[photo], name))
    return rows


def write_csv(path: Path, rows: list[tuple[Path, str, str]]) -> Path:
    """The official DA-CLIP CSV (tab-separated filepath, title = 'caption: degradation'), paths relative."""
    lines = ["filepath\ttitle"] + [f"{p.relative_to(path.parent)}\t{caption}: {name}" for p, caption, name in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_daclip(tmp_path_factory) -> Path:
    from textualdeg.daclip.tiny import save_tiny_daclip

    return Path(save_tiny_daclip(tmp_path_factory.mktemp("tiny") / "daclip", seed=0))


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    return write_csv(root / "train.csv", degraded_photographs(root / "images", ("astronaut", "coffee"), size=32))


def _common(tiny_daclip: Path, csv: Path) -> list[str]:
    return ["-opt", str(OPTIONS), "--set", f"path.pretrained_clip={tiny_daclip}",
            "--set", f"datasets.train_csv={csv}", "--set", f"datasets.val_csv={csv}",
            "--set", "datasets.batch_size_per_gpu=8", "--set", "logger.print_freq=1"]


def test_a_run_stopped_after_step_2_resumes_to_the_uninterrupted_weights(tiny_daclip, small_csv, tmp_path,
                                                                           monkeypatch) -> None:
    from safetensors.torch import load_file

    import textualdeg.daclip.train as train_module

    common = [*_common(tiny_daclip, small_csv), "--set", "val.val_freq=100", "--set", "logger.save_checkpoint_freq=2",
              "--set", "train.warmup_iter=2", "--set", "train.total_iter=4"]
    whole = main([*common, "--set", f"path.experiments_root={tmp_path / 'whole'}"])
    calls, daclip_loss = [], train_module.daclip_loss

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed at step 3")
        return daclip_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "daclip_loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        main([*common, "--set", f"path.experiments_root={tmp_path / 'parts'}"])
    monkeypatch.setattr(train_module, "daclip_loss", daclip_loss)
    parts = main([*common, "--set", f"path.experiments_root={tmp_path / 'parts'}"])  # auto-resumes step 2
    starts = (tmp_path / "parts" / "starts.jsonl").read_text().splitlines()
    assert len(starts) == 2 and json.loads(starts[-1])["step"] == 2
    a, b = load_file(whole / "daclip.safetensors"), load_file(parts / "daclip.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = load_file(tiny_daclip / "daclip.safetensors")
    changed = [k for k in a if not torch.equal(a[k], before[k])]
    assert changed and all("visual_control" in k or "logit_scale" in k for k in changed), changed


def test_the_output_folder_loads_with_the_run_degradations(tiny_daclip, small_csv, tmp_path) -> None:
    from textualdeg.daclip.checkpoint import read_degradations
    from textualdeg.daclip.embedder import DAClipEmbedder

    folder = main([*_common(tiny_daclip, small_csv), "--set", "train.total_iter=2", "--set", "val.val_freq=1",
                   "--set", f"path.experiments_root={tmp_path / 'run'}"])
    assert folder == tmp_path / "run" / "daclip"
    assert tuple(read_degradations(folder)) == ("noisy", "motion-blurry", "hazy", "rainy")
    embedder = DAClipEmbedder.from_pretrained(folder)
    assert embedder.classify(torch.rand(2, 3, 40, 40), degradations=("noisy", "hazy")).shape == (2, 2)
    records = [json.loads(line) for line in (tmp_path / "run" / "logs" / "val_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"degradation_accuracy", "caption_retrieval_accuracy", "accuracy/noisy"} <= records[-1].keys()


def test_a_bad_row_stops_the_run_before_training(tiny_daclip, tmp_path) -> None:
    from textualdeg.daclip.data import DaClipCsvError

    rows = degraded_photographs(tmp_path / "images", ("coffee",), size=32)
    csv = write_csv(tmp_path / "train.csv", rows)
    csv.write_text(csv.read_text() + "images/noisy/missing.png\ta cup: noisy\n")
    with pytest.raises(DaClipCsvError, match=r"line 18: image .*missing\.png does not exist"):
        main([*_common(tiny_daclip, csv), "--set", "train.total_iter=2",
              "--set", f"path.experiments_root={tmp_path / 'run'}"])
    assert not (tmp_path / "run" / "daclip").exists()


def test_option_files_validate() -> None:
    from textualdeg.daclip.schema import DACLIP_SCHEMA
    from textualdeg.options import OptionsError, load_options

    real = load_options(OPTIONS.parent / "daclip_vit_b_32.yml", DACLIP_SCHEMA)
    assert real.train.lr == 2e-5 and real.train.weight_decay == 0.05 and real.datasets.batch_size_per_gpu == 784
    assert len(real.datasets.degradations) == 10
    tiny = load_options(OPTIONS, DACLIP_SCHEMA)
    assert tiny.path.pretrained_clip is None and tiny.path.model["vision_cfg"]["image_size"] == 64
    with pytest.raises(OptionsError, match="train_csv"):
        load_options(OPTIONS, DACLIP_SCHEMA, ["datasets.train_cvs=x.csv"])


@pytest.mark.slow
def test_the_controller_learns_to_classify_degradations_of_unseen_photographs(tmp_path) -> None:
    """Chance is 0.25 (4 classes); the held-out photographs are never trained on.

    The tiny option file's random 64-px CLIP (seed 0); 300 steps take ~35 s on one CPU
    thread. Held-out accuracy for manual_seed 0, 1, 2, 3: 0.73, 0.67, 0.63, 0.67
    (before training 0.27, 0.17, 0.11, 0.23; docs/daclip.md).
    """
    from textualdeg.daclip.checkpoint import save_daclip
    from textualdeg.daclip.classify import evaluate_classifier
    from textualdeg.daclip.model import build_daclip
    from textualdeg.daclip.schema import DACLIP_SCHEMA
    from textualdeg.daclip.train import model_spec
    from textualdeg.options import load_options

    opt = load_options(OPTIONS, DACLIP_SCHEMA)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opt.manual_seed)  # the random CLIP training starts from (path.pretrained_clip: null)
        start = save_daclip(build_daclip(model_spec(opt)), tmp_path / "start", opt.datasets.degradations)
    train_rows = degraded_photographs(tmp_path / "train", TRAIN_PHOTOS, variants=2)
    held_out = degraded_photographs(tmp_path / "held_out", HELD_OUT_PHOTOS, seed=1)
    csv = write_csv(tmp_path / "train.csv", train_rows)
    before = evaluate_classifier(start, tmp_path / "held_out", tmp_path / "before")["overall_accuracy"]
    folder = main(["-opt", str(OPTIONS), "--set", f"datasets.train_csv={csv}",
                   "--set", f"path.experiments_root={tmp_path / 'run'}"])
    record = evaluate_classifier(folder, tmp_path / "held_out", tmp_path / "after")
    assert record["num_images"] == len(held_out) == 64
    assert record["overall_accuracy"] >= 0.5 and record["overall_accuracy"] > before + 0.2, (before, record)
    assert min(record["per_class_accuracy"].values()) > 0.25, record["per_class_accuracy"]


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_the_doubled_batch(small_csv, tmp_path) -> None:
    """Features gathered over processes and the loss scaled by their number: the same steps as one process."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = ["-opt", str(OPTIONS), "--set", f"datasets.train_csv={small_csv}", "--set", "train.total_iter=3"]
    one = main([*common, "--set", "datasets.batch_size_per_gpu=8",
                "--set", f"path.experiments_root={tmp_path / 'one'}"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    accelerate = Path(sys.executable).parent / "accelerate"
    launcher = ([str(accelerate)] if accelerate.exists()
                else [sys.executable, "-m", "accelerate.commands.accelerate_cli"])
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [*launcher, "launch", "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
         "--main_process_port", str(port), str(REPO / "scripts" / "train" / "train_daclip.py"), *common,
         "--set", "datasets.batch_size_per_gpu=4", "--set", f"path.experiments_root={tmp_path / 'two'}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(one / "daclip.safetensors"), load_file(tmp_path / "two" / "daclip" / "daclip.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5

"""Kill campaign: SIGKILL a tiny stage-4 run at random moments and check what survives.

A run of ``options/train_restoration/tiny_cpu.yml`` on tiny photograph crops is trained once
without interruption, then again while being killed with SIGKILL at random moments
(start-up, steps, inside saves, inside validation) and restarted each time (auto-resume),
until it completes. The script prints, against the uninterrupted run measured in the same
invocation: whether the final weights are bit-identical, whether every validation the
uninterrupted run wrote is present (once) after the kills, and what was left on disk.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Run:
    python bench/kill_campaign.py --kills 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from skimage import data

from textualdeg.imageio import write_image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train" / "train_restoration.py"
OPTIONS = REPO / "options" / "train_restoration" / "tiny_cpu.yml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver before letting the run finish")
    parser.add_argument("--steps", type=int, default=700, help="total_iter of the tiny run")
    parser.add_argument("--min-delay", type=float, default=3.0, help="earliest kill after a (re)start, seconds")
    parser.add_argument("--max-delay", type=float, default=8.0, help="latest kill after a (re)start, seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for data and runs (default: a temp dir)")
    return parser.parse_args(argv)


def write_tiny_data(root: Path) -> dict[str, Path]:
    """64x64 training and 48x48 validation crops of four photographs, with blurred guidance."""
    folders = {k: root / k for k in ("train_gt", "train_ref", "val_gt", "val_ref")}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photo = getattr(data, name)().astype(np.float32) / 255.0
        photo = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2), interpolation=cv2.INTER_AREA)
        h, w = photo.shape[:2]
        for i in range(3):
            clean = photo[:64, i * (w - 64) // 2 : i * (w - 64) // 2 + 64]
            write_image(_mk(folders["train_gt"]) / f"{name}_{i}.png", clean)
            write_image(_mk(folders["train_ref"]) / f"{name}_{i}.png", _guidance(clean))
        clean = photo[h - 48 :, w - 48 :]
        write_image(_mk(folders["val_gt"]) / f"{name}.png", clean)
        write_image(_mk(folders["val_ref"]) / f"{name}.png", _guidance(clean))
    return folders


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _guidance(clean: np.ndarray) -> np.ndarray:
    return np.clip(cv2.resize(cv2.GaussianBlur(clean, (0, 0), 1.5), (48, 48), interpolation=cv2.INTER_AREA), 0, 1)


def command(folders: dict[str, Path], exp: Path, steps: int) -> list[str]:
    overrides = {
        "datasets.train.dataroot_gt": folders["train_gt"], "datasets.train.dataroot_ref": folders["train_ref"],
        "datasets.val.dataroot_gt": folders["val_gt"], "datasets.val.dataroot_ref": folders["val_ref"],
        "path.experiments_root": exp, "train.total_iter": steps, "train.scheduler.periods": f"[{steps}]",
        "logger.save_checkpoint_freq": 5, "val.val_freq": 10, "logger.print_freq": 5, "logger.use_tb_logger": False,
    }
    sets = [item for key, value in overrides.items() for item in ("--set", f"{key}={value}")]
    return [sys.executable, str(SCRIPT), "-opt", str(OPTIONS), *sets]


def run_to_completion(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def validations(exp: Path) -> list[tuple[int, str]]:
    record = exp / "logs" / "val_metrics.jsonl"
    if not record.exists():
        return []
    return [(e["step"], e["dataset"]) for e in map(json.loads, record.read_text().splitlines())]


def main(args: argparse.Namespace) -> dict:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    folders = write_tiny_data(work / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    whole, killed = work / "whole", work / "killed"
    start = time.perf_counter()
    run_to_completion(command(folders, whole, args.steps), env)
    baseline_s = time.perf_counter() - start
    rng = random.Random(args.seed)
    delivered, finished_early = [], 0
    while len(delivered) < args.kills:
        delay = rng.uniform(args.min_delay, args.max_delay)
        proc = subprocess.Popen(command(folders, killed, args.steps), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            finished_early += 1  # the run completed before its kill: start a fresh killed run
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            delivered.append(round(delay, 2))
    run_to_completion(command(folders, killed, args.steps), env)
    a = load_file(whole / "checkpoints" / "net_g_latest.safetensors")
    b = load_file(killed / "checkpoints" / "net_g_latest.safetensors")
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    val_whole, val_killed = validations(whole), validations(killed)
    leftovers = sorted(str(p.relative_to(killed)) for p in killed.rglob(".*") if p.name not in (".", ".."))
    report = {
        "kills": len(delivered), "kill_moments_s": delivered, "completed_before_kill": finished_early,
        "uninterrupted_run_s": round(baseline_s, 1), "final_weights_bit_identical": identical,
        "validations_uninterrupted": len(val_whole), "validations_after_kills": len(val_killed),
        "missing_validations": sorted(set(val_whole) - set(val_killed)),
        "duplicate_validations": len(val_killed) - len(set(val_killed)),
        "hidden_leftovers": leftovers, "workdir": str(work),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(parse_args())

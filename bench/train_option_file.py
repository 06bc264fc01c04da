"""Run a stage-4 option file for a few steps at its real sizes on synthetic data; print peak memory.

What a researcher's first step with an authors' option file costs on this machine: the
option file's network at its real width, its real crop and batch, the DINOv2 ViT-B/14
window selection at its real size (random weights from
``textualdeg.guidance.real_configs``), the real data pipeline (workers included), on a
few skimage photographs written at the resolution of the file's data set. Nothing is
downloaded. The training runs in a child process; a sampler reads the resident memory of
its whole process tree (data-loader workers included) five times a second.

Usage (the measurement in docs/memory.md)::

    python bench/train_option_file.py -opt options/train_restoration/002_nafnet_single_image_motion_deblurring.yml \
        --set train.micro_batches=8

Prints the wall time and the peak summed RSS of the process tree; the run is stopped once
the last step's state is saved (its end-of-run validation is not a training step). Paper: "Improving Image Restoration through Removing Degradations
in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """An skimage photograph resized to ``size`` (H, W), float32 RGB in [0, 1]."""
    import cv2
    from skimage import data

    image = getattr(data, name)()[..., :3].astype(np.float32) / 255.0
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def write_pairs(root: Path, size: tuple[int, int], ref_size: int) -> dict[str, Path]:
    """input/ (blurred), target/, guidance/ (ref_size square) folders of the photographs."""
    import cv2

    from textualdeg.imageio import write_image

    folders = {key: root / key for key in ("input", "target", "guidance")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        for flipped in (False, True):  # 8 pairs: one batch of the authors' files
            clean, guide = _photo(name, size), _photo(name, (ref_size, ref_size))
            if flipped:
                clean, guide = np.ascontiguousarray(clean[:, ::-1]), np.ascontiguousarray(guide[:, ::-1])
            stem = f"{name}_{int(flipped)}"
            write_image(folders["target"] / f"{stem}.png", clean)
            write_image(folders["input"] / f"{stem}.png", cv2.blur(clean, (9, 9)))
            write_image(folders["guidance"] / f"{stem}.png", guide)
    return folders


def write_dinov2(folder: Path) -> Path:
    """A random-weight DINOv2 ViT-B/14 in the transformers folder format (the real config)."""
    from textualdeg.guidance.real_configs import build_dinov2

    build_dinov2(device="cpu").save_pretrained(folder)
    return folder


def _tree_rss(pid: int) -> int:
    """Summed resident bytes of ``pid`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total


def run_sampled(cmd: list[str], env: dict[str, str], done: Path) -> tuple[bool, float, int]:
    """Run ``cmd`` until the folder ``done`` appears (the last step's saved state), then stop it.

    The end-of-run validation on full-size images is not part of a training step, so it is
    not measured. Returns (the step completed, wall seconds, peak summed RSS of the tree).
    """
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, cwd=REPO)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss(process.pid))
            if done.is_dir():
                process.terminate()
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    sampler.join()
    return done.is_dir(), time.perf_counter() - start, peak[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-opt", required=True, help="stage-4 option file")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps to run")
    parser.add_argument("--size", type=int, nargs=2, default=(720, 1280), help="H W of the synthetic images")
    parser.add_argument("--ref-size", type=int, default=512, help="side of the synthetic guidance images")
    parser.add_argument("--set", action="append", default=[], help="extra option overrides")
    parser.add_argument("--workdir", default=None, help="where data and the run go (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.workdir or scratch)
        pairs = write_pairs(work / "data", tuple(args.size), args.ref_size)
        dino = write_dinov2(work / "dinov2")
        overrides = [  # validation never runs: it would time the val set, not the step
            f"datasets.train.dataroot_lq={pairs['input']}", f"datasets.train.dataroot_gt={pairs['target']}",
            f"datasets.train.dataroot_ref={pairs['guidance']}", f"path.pretrain_dino={dino}",
            "path.pretrain_network_g=null", "path.resume_state=null", "path.auto_resume=false",
            f"path.experiments_root={work / 'run'}", f"train.total_iter={args.steps}",
            "val.val_freq=1000000000", "logger.save_checkpoint_freq=1000000000", "logger.use_tb_logger=false",
            "logger.print_freq=1", *args.set,
        ]
        for key in _dataset_keys(args.opt):  # validation sets read the same pictures (never run here)
            if key != "train":
                overrides += [f"datasets.{key}.dataroot_lq={pairs['input']}",
                              f"datasets.{key}.dataroot_gt={pairs['target']}",
                              f"datasets.{key}.dataroot_ref={pairs['guidance']}"]
        cmd = [sys.executable, str(REPO / "scripts" / "train" / "train_restoration.py"), "-opt", args.opt]
        cmd += [item for value in overrides for item in ("--set", value)]
        print("running:", " ".join(cmd), flush=True)
        finished, wall, peak = run_sampled(cmd, dict(os.environ), work / "run" / "state" / f"step_{args.steps:08d}")
        print(f"\n{Path(args.opt).name}: {args.steps} step(s) {'done' if finished else 'FAILED'} in {wall:.0f} s "
              f"(start, data, DINOv2 windows, steps, state save), peak RSS of the process tree "
              f"{peak / 2**30:.2f} GiB (workers' shared pages counted once per process)")
        print("overrides:", " ".join(args.set) or "(none)")
        return 0 if finished else 1


def _dataset_keys(option_file: str) -> list[str]:
    import yaml

    return list((yaml.safe_load(Path(option_file).read_text()) or {}).get("datasets", {}))


if __name__ == "__main__":
    raise SystemExit(main())

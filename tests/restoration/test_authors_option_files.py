"""The option files of the SFNet, DRSformer and DSRIR rows train on CPU and resume bit-identically.

Each file is loaded as a user would load it; only what cannot run here is overridden: the
network's widths (tiny, from ``archs/tiny_configs.py``), the dataset folders (tiny
photograph crops written in the naming the file expects: ``0001_0.8_0.2`` hazy images,
``norain-1x2`` rainy ones...), the crop size, the guidance crop (``resize``; ``dino``
needs DINOv2 weights) and the step counts. The network type, the reference arguments, the
optimizer, the scheduler type, the losses and the validation metrics stay the file's.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
from textualdeg.checkpoint import load_weights
from textualdeg.imageio import write_image
from textualdeg.options import load_options
from textualdeg.restoration.schema import RESTORATION_SCHEMA
from textualdeg.restoration.train import train

sys.path.insert(0, str(Path(__file__).parent / "archs"))
from tiny_configs import TINY_CONFIGS  # noqa: E402

OPTION_DIR = Path(__file__).resolve().parents[2] / "options" / "train_restoration"
OPTION_FILES = sorted(
    p for p in OPTION_DIR.glob("*.yml") if p.name[:3] in {"005", "006", "007", "008", "009", "010"} or "dsrir" in p.name
)
CROP = 32
#: reference branch small enough for 32x32 crops (pad_multiple = 2**(levels-1) * 4)
TINY_REFERENCE = {"ext_n_blocks": None, "lr_block_size": 4, "dilations": [1, 2], "nf": None}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _photo_crops(n: int, seed: int) -> list[np.ndarray]:
    """``n`` clean CROP x CROP crops of scikit-image photographs, (H, W, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = getattr(data, ("astronaut", "coffee", "chelsea", "rocket")[i % 4])().astype(np.float32) / 255
        photo = cv2.resize(photo, (photo.shape[1] // 4, photo.shape[0] // 4), interpolation=cv2.INTER_AREA)
        top, left = (int(rng.integers(0, s - CROP)) for s in photo.shape[:2])
        crops.append(photo[top : top + CROP, left : left + CROP])
    return crops


def _degrade(clean: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "haze":
        return clean * 0.6 + 0.35
    if kind == "rain":
        streaks = (rng.random(clean.shape[:2]) > 0.97).astype(np.float32)
        streaks = cv2.filter2D(streaks, -1, np.eye(5, dtype=np.float32) / 2)[..., None]
        return np.clip(clean + 0.6 * streaks, 0, 1)
    return np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1)


def _write_split(root: Path, ds: dict, n: int, seed: int) -> dict[str, str]:
    """LQ/GT/guidance folders in the naming ``ds`` (a dataset section of the file) expects."""
    rng = np.random.default_rng(seed)
    folders = {k: root / k for k in ("lq", "gt", "ref")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    kind = "haze" if "Dehaze" in ds["type"] else "rain"
    for i, clean in enumerate(_photo_crops(n, seed)):
        gt_stem = f"{i:04d}" if kind == "haze" else f"norain-{i}"
        lq_stem = f"{gt_stem}_0.8_0.2" if kind == "haze" else (ds.get("filename_tmpl") or "{}").format(gt_stem)
        write_image(folders["gt"] / f"{gt_stem}.png", clean)
        write_image(folders["lq"] / f"{lq_stem}.png", _degrade(clean, kind, rng))
        write_image(folders["ref"] / f"{lq_stem}.png", cv2.GaussianBlur(clean, (0, 0), 1.0))
    return {f"dataroot_{k}": str(v) for k, v in folders.items()}


def _tiny_overrides(path: Path, root: Path, exp: Path, total_iter: int) -> dict:
    raw = load_options(path, RESTORATION_SCHEMA)
    net = raw.network_g.to_dict()
    tiny = TINY_CONFIGS[net["type"]]
    out = {f"network_g.{k}": list(v) if isinstance(v, tuple) else v for k, v in tiny.items()}
    for key, value in TINY_REFERENCE.items():
        if key in net and f"network_g.{key}" not in out:
            out[f"network_g.{key}"] = value
    if "ext_n_blocks" in net:
        out["network_g.ext_n_blocks"] = [1] * len(net["ext_n_blocks"])
    for phase, n in (("train", 6), ("val", 2)):
        ds = raw.datasets[phase].to_dict()
        for key, value in _write_split(root / phase, ds, n, seed=len(phase)).items():
            out[f"datasets.{phase}.{key}"] = value
    half = total_iter // 2
    out.update({
        "datasets.train.gt_size": CROP, "datasets.train.ref_crop": "resize", "datasets.train.ref_size": CROP,
        "datasets.train.batch_size_per_gpu": 2, "datasets.train.num_worker_per_gpu": 0,
        "datasets.train.pin_memory": False, "train.total_iter": total_iter, "train.scheduler.periods": [half, half],
        "val.val_freq": 4, "val.max_vis_images": 1, "logger.print_freq": 2, "logger.save_checkpoint_freq": 2,
        "logger.use_tb_logger": False, "path.experiments_root": str(exp),
    })
    return out


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.stem)
def test_option_file_trains_a_few_steps_and_resumes_bit_identically(path, tmp_path):
    assert len(OPTION_FILES) >= 6
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(load_options(path, RESTORATION_SCHEMA, _tiny_overrides(path, tmp_path / "data", whole, 4)))
    train(load_options(path, RESTORATION_SCHEMA, _tiny_overrides(path, tmp_path / "data", parts, 4)
                       | {"train.total_iter": 2}))
    train(load_options(path, RESTORATION_SCHEMA, _tiny_overrides(path, tmp_path / "data", parts, 4)))
    a = load_weights(whole / "checkpoints" / "net_g_latest.safetensors")
    b = load_weights(parts / "checkpoints" / "net_g_latest.safetensors")
    first = load_weights(whole / "checkpoints" / "net_g_2.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("masa_") for k in a)
    assert any(not torch.equal(a[k], first[k]) for k in a)  # it trained
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert "psnr" in (whole / "logs" / "val_metrics.jsonl").read_text()

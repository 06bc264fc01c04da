"""The option files of the paper's rows train on CPU and resume bit-identically.

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
#: every option file of a paper row (the authors' 001-019 and DSRIR's), except the dual-pixel
#: 004_0, whose left/right folders the tests of data/ cover
OPTION_FILES = sorted(p for p in OPTION_DIR.glob("*.yml")
                      if (p.name[:3].isdigit() or "dsrir" in p.name) and not p.name.startswith("004_0"))
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


def _write_pairs(roots: dict[str, Path], kind: str, n: int, seed: int, tmpl: str | None = None) -> None:
    """Write ``n`` (LQ, GT, guidance) triples into the folders of ``roots`` (roles lq/gt/ref).

    Names follow the datasets' pairing: hazy ``0003_0.8_0.2`` -> clear ``0003``, rainy
    ``tmpl.format(gt stem)`` -> ``norain-3``, guidance named after the LQ (or GT) stem.
    """
    rng = np.random.default_rng(seed)
    for folder in roots.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i, clean in enumerate(_photo_crops(n, seed)):
        gt_stem = {"haze": f"{i:04d}", "rain": f"norain-{i}"}.get(kind, f"img-{i}")
        lq_stem = {"haze": f"{gt_stem}_0.8_0.2", "rain": (tmpl or "{}").format(gt_stem)}.get(kind, gt_stem)
        write_image(roots["gt"] / f"{gt_stem}.png", clean)
        if "lq" in roots:
            write_image(roots["lq"] / f"{lq_stem}.png", _degrade(clean, kind, rng))
        if "ref" in roots:
            write_image(roots["ref"] / f"{lq_stem}.png", cv2.GaussianBlur(clean, (0, 0), 1.0))


def _write_section(root: Path, ds: dict, n: int, seed: int) -> dict[str, str]:
    """Tiny folders for every ``dataroot_*`` key a dataset section sets; returns the overrides."""
    groups: dict[str, dict[str, Path]] = {}
    for key, value in ds.items():
        if key.startswith("dataroot_") and value is not None:
            parts = key.split("_")  # dataroot_<role> or dataroot_<task>_<role>
            task, role = (parts[1], parts[2]) if len(parts) == 3 else ("", parts[1])
            groups.setdefault(task, {})[role] = root / (task or "pairs") / role
    for task, roots in groups.items():
        if task == "denoise" or ds["type"] == "GaussianDenoisingRefDataset":
            _write_pairs(roots, "noise", n, seed)
        elif task == "dehaze" or "Dehaze" in ds["type"]:
            _write_pairs(roots, "haze", n, seed)
        else:
            _write_pairs(roots, "rain", n, seed, ds.get("derain_filename_tmpl") or ds.get("filename_tmpl"))
    return {f"dataroot_{task + '_' if task else ''}{role}": str(path)
            for task, roots in groups.items() for role, path in roots.items()}


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
    for name in raw.datasets:
        ds = raw.datasets[name].to_dict()
        n = 6 if name == "train" else 2
        for key, value in _write_section(root / name, ds, n, seed=len(name)).items():
            out[f"datasets.{name}.{key}"] = value
    half = total_iter // 2
    train = {"gt_size": CROP, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0, "pin_memory": False}
    if raw.datasets.train.ref_crop is not None:
        train |= {"ref_crop": "resize", "ref_size": CROP}
    if raw.datasets.train.iters:  # progressive patches and batches: two stages
        train |= {"iters": [half, half], "gt_sizes": [24, CROP], "mini_batch_sizes": [2, 1]}
    if raw.datasets.train.dataset_length:
        train["dataset_length"] = 12
    out.update({f"datasets.train.{k}": v for k, v in train.items()})
    if "vgg_weights" in raw.train.pixel_opt:
        out["train.pixel_opt.vgg_weights"] = None  # random VGG19 (no ImageNet weights here)
    if raw.train.warmup_iter > total_iter:
        out["train.warmup_iter"] = half
    periods = [half, half] if len(raw.train.scheduler.periods) == 2 else [total_iter]
    out["path.pretrain_network_g"] = None  # the official backbone checkpoints are not here
    out.update({
        "train.total_iter": total_iter, "train.scheduler.periods": periods,
        "val.val_freq": 4, "val.max_vis_images": 1, "logger.print_freq": 2, "logger.save_checkpoint_freq": 2,
        "logger.use_tb_logger": False, "path.experiments_root": str(exp),
    })
    return out


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.stem)
def test_option_file_trains_a_few_steps_and_resumes_bit_identically(path, tmp_path):
    assert len(OPTION_FILES) >= 22
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(load_options(path, RESTORATION_SCHEMA, _tiny_overrides(path, tmp_path / "data", whole, 4)))
    train(load_options(path, RESTORATION_SCHEMA, _tiny_overrides(path, tmp_path / "data", parts, 4)
                       | {"train.total_iter": 2}))
    train(load_options(path, RESTORATION_SCHEMA, _tiny_overrides(path, tmp_path / "data", parts, 4)))
    a = load_weights(whole / "checkpoints" / "net_g_latest.safetensors")
    b = load_weights(parts / "checkpoints" / "net_g_latest.safetensors")
    first = load_weights(whole / "checkpoints" / "net_g_2.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("masa_") for k in a) == ("guided" in path.stem
                                                                             or path.stem[:3].isdigit())
    assert any(not torch.equal(a[k], first[k]) for k in a)  # it trained
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert "psnr" in (whole / "logs" / "val_metrics.jsonl").read_text()


def test_wrong_network_key_and_wrong_variant_checkpoint_are_named(tmp_path):
    from textualdeg.checkpoint import CheckpointError, save_weights
    from textualdeg.restoration.train import build_model

    sfnet = OPTION_DIR / "005_sfnet_image_dehazing_indoor.yml"
    with pytest.raises(TypeError, match=r"arch 'SFNetRefFusion'.*unknown argument 'num_ress' \(did you mean 'num_res'\?\)"):
        build_model(load_options(sfnet, RESTORATION_SCHEMA, {"network_g.num_ress": 4}))
    # a wrong value: the authors' string mode (D36(f)) and a fusion list of the wrong length
    with pytest.raises(ValueError, match=r"arch 'SFNetRefFusion': mode must be a list \[phase, scene\]"):
        build_model(load_options(sfnet, RESTORATION_SCHEMA, {"network_g.mode": "train"}))
    with pytest.raises(ValueError, match=r"arch 'DRSformerRefFusion': reffusion_n_blocks must give 4 block counts"):
        build_model(load_options(OPTION_DIR / "009_drsformer_image_deraining_diddata.yml", RESTORATION_SCHEMA,
                                 {"network_g.reffusion_n_blocks": [2, 2, 2]}))
    # a Rain200L/SPA checkpoint (no MEFC) given to the full DRSformer of option 008
    from textualdeg.restoration.archs import DRSformer200LSPA

    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_CONFIGS["DRSformer"].items()}
    path = tmp_path / "drsformer_rain200l.safetensors"
    save_weights(DRSformer200LSPA(**tiny).state_dict(), path)
    rain200h = OPTION_DIR / "008_drsformer_image_deraining_rain200h.yml"
    overrides = {f"network_g.{k}": v for k, v in tiny.items()} | {
        "network_g.nf": None, "network_g.lr_block_size": 4, "network_g.dilations": [1, 2],
        "network_g.ext_n_blocks": [1] * 4, "path.pretrain_network_g": str(path), "path.strict_load_g": True}
    with pytest.raises(CheckpointError, match=r"drsformer_rain200l\.safetensors: does not fit GuidedDRSformer: "
                                              r"\d+ of its \d+ tensors missing \(first: encoder_level0\."):
        build_model(load_options(rain200h, RESTORATION_SCHEMA, overrides))

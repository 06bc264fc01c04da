"""Oracle-guidance benchmark: does the reference path help when the reference is perfect?

Trains a tiny plain NAFNet and a tiny guided NAFNet (GuidedNAFNet: NAFNet plus the
coarse-to-fine reference matching and ``masa_*`` fusion) with the same budget (steps,
batch, crops, learning rates, seed) through the real training loop
(``textualdeg.restoration.train.train``) on Gaussian denoising at sigma 50 of
scikit-image photographs. The guided one gets an oracle reference: the clean photograph
shifted by a few pixels and resized to 512x512, i.e. what a perfect text-to-image
generator could give, with the misalignment and rescaling a generated image has. The
training crops (64x64) and the validation images (crops of a held-out photograph) must
be located in that whole-photo reference. As in the authors' training, each 64x64
training crop gets the reference window that matches it (``ref_crop: dino``, the window
scaled by reference size / image size); here the DINOv2 patch tokens are replaced by
14x14 mean-colour tokens (``MeanColourTokens``), so no DINOv2 weights are needed, and the
network's own coarse-to-fine matching does the fine alignment. Validation feeds the whole
512x512 reference, as the authors do. Prints both validation PSNRs (RGB, uint8, crop 0)
and their difference. No text-to-image model is involved.

    python bench/oracle_guidance.py                  # 300 steps each (about 7 minutes on 2 cores)
    python bench/oracle_guidance.py --iters 100 --workdir /tmp/oracle

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from skimage import data

from textualdeg.data import GaussianDenoisingRefDataset
from textualdeg.imageio import write_image
from textualdeg.options import options_from_dict
from textualdeg.registry import DATASET_REGISTRY
from textualdeg.restoration.dino_window import DinoWindowSelector
from textualdeg.restoration.schema import RESTORATION_SCHEMA
from textualdeg.restoration.train import train

REPO = Path(__file__).resolve().parents[1]
TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SHIFT = (5, -4)  # (rows, columns) the oracle reference is moved by
REF_SIZE = 512


class MeanColourTokens:
    """Stand-in for DINOv2 patch tokens: the mean colour of every 14x14 patch, (N, P, 3)."""

    patch_size = 14

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.patch_size).flatten(2).transpose(1, 2)  # (N, P, 3)


@DATASET_REGISTRY.register()
class OracleWindowDenoisingDataset(GaussianDenoisingRefDataset):
    """GaussianDenoisingRefDataset whose ``dino`` window choice uses ``MeanColourTokens``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(dino_selector=DinoWindowSelector(MeanColourTokens(), stride_divisor=2), **kwargs)


def _load(name: str) -> np.ndarray:
    if name == "motorcycle":
        image = data.stereo_motorcycle()[0]
    else:
        image = getattr(data, name)()
    return image.astype(np.float32) / 255.0  # (H, W, 3) in [0, 1]


def oracle_reference(clean: np.ndarray, shift: tuple[int, int] = SHIFT, size: int = REF_SIZE) -> np.ndarray:
    """The clean photograph translated by ``shift`` pixels (edges replicated), resized to size x size."""
    matrix = np.float32([[1, 0, shift[1]], [0, 1, shift[0]]])
    moved = cv2.warpAffine(clean, matrix, (clean.shape[1], clean.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    return np.clip(cv2.resize(moved, (size, size), interpolation=cv2.INTER_AREA), 0.0, 1.0)


def make_folders(root: Path, val_crop: int = 96) -> dict[str, Path]:
    """Whole training photographs, crops of a held-out one for validation, and oracle references."""
    folders = {k: root / k for k in ("train_gt", "train_ref", "val_gt", "val_ref")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_PHOTOS:
        clean = _load(name)
        write_image(folders["train_gt"] / f"{name}.png", clean)
        write_image(folders["train_ref"] / f"{name}.png", oracle_reference(clean))
    clean = _load("motorcycle")
    ref = oracle_reference(clean)
    for i, (top, left) in enumerate(val_boxes(clean.shape[:2])):
        write_image(folders["val_gt"] / f"motorcycle_{i}.png", clean[top : top + val_crop, left : left + val_crop])
        write_image(folders["val_ref"] / f"motorcycle_{i}.png", ref)
    return folders


def val_boxes(hw: tuple[int, int]) -> list[tuple[int, int]]:
    """(top, left) of the four validation crops of the held-out photograph."""
    h, w = hw
    return [(h // 4, w // 5), (h // 2, w // 2), (h // 5, 3 * w // 5), (2 * h // 3, w // 8)]


@torch.no_grad()
def window_psnr(exp: Path, crop: int = 96) -> float:
    """Validation PSNR of a trained guided run when fed the aligned window of the oracle reference.

    The run's own validation (the authors' protocol) feeds the whole 512x512 reference; this
    feeds the part of it that shows the crop, resized to the crop size, which is what the
    training crops received. Same images and noise (seed 0) as the validation set.
    """
    import textualdeg.restoration.archs  # noqa: F401
    from safetensors import safe_open

    from textualdeg.checkpoint import load_weights
    from textualdeg.metrics import Protocol, psnr
    from textualdeg.registry import ARCH_REGISTRY

    path = exp / "checkpoints" / "net_g_latest.safetensors"
    with safe_open(str(path), "pt") as handle:
        spec = json.loads(handle.metadata()["network_g"])
    net = ARCH_REGISTRY.build(spec).eval()
    net.load_state_dict(load_weights(path))
    clean = _load("motorcycle")
    ref = oracle_reference(clean)
    h, w = clean.shape[:2]
    sy, sx = REF_SIZE / h, REF_SIZE / w
    protocol = Protocol(channels="rgb", crop_border=0, ssim_variant="gaussian3d", quantize="uint8")
    scores = []
    for top, left in val_boxes((h, w)):
        gt = clean[top : top + crop, left : left + crop]
        lq = (gt + np.random.RandomState(0).normal(0.0, 50 / 255, gt.shape)).astype(np.float32)
        y0, x0 = top + SHIFT[0], left + SHIFT[1]
        window = ref[int(y0 * sy) : int((y0 + crop) * sy), int(x0 * sx) : int((x0 + crop) * sx)]
        window = cv2.resize(window, (crop, crop), interpolation=cv2.INTER_AREA)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        out = net(as_tensor(lq), as_tensor(window))[0].clamp(0, 1).permute(1, 2, 0).numpy()
        scores.append(psnr(out, gt, protocol).value)
    return float(np.mean(scores))


def options(folders: dict[str, Path], exp: Path, guided: bool, iters: int, seed: int) -> dict:
    """tiny_cpu.yml retargeted: sigma 50, whole 512x512 references, plain or guided NAFNet."""
    opt = yaml.safe_load((REPO / "options" / "train_restoration" / "tiny_cpu.yml").read_text())
    opt["name"] = f"oracle_{'guided' if guided else 'plain'}"
    opt["manual_seed"] = seed
    for key, split in (("train", "train"), ("val", "val")):
        ds = opt["datasets"][key]
        ds.update(dataroot_gt=str(folders[f"{split}_gt"]), dataroot_ref=str(folders[f"{split}_ref"]),
                  sigma_range=50, sigma_test=50)
    # the plain network never reads the reference: skip the window choice for it
    opt["datasets"]["train"].update(type="OracleWindowDenoisingDataset", gt_size=64,
                                    ref_crop="dino" if guided else "full", dino_window="relative",
                                    batch_size_per_gpu=4)
    opt["datasets"]["train"].pop("ref_size")
    if not guided:
        keep = ("img_channel", "width", "middle_blk_num", "enc_blk_nums", "dec_blk_nums")
        opt["network_g"] = {"type": "NAFNet", **{k: opt["network_g"][k] for k in keep}}
    opt["path"]["experiments_root"] = str(exp)
    opt["train"].update(total_iter=iters)
    opt["train"]["scheduler"]["periods"] = [iters]
    opt["train"]["optim_g"]["ref_lr"] = opt["train"]["optim_g"]["lr"]  # one lr for every parameter
    opt["val"].update(val_freq=iters, max_vis_images=4)
    opt["logger"].update(save_checkpoint_freq=iters, print_freq=max(1, iters // 10))
    return opt


def run(guided: bool, folders: dict[str, Path], root: Path, iters: int, seed: int) -> tuple[float, float]:
    exp = root / ("guided" if guided else "plain")
    start = time.perf_counter()
    train(options_from_dict(options(folders, exp, guided, iters, seed), RESTORATION_SCHEMA))
    record = json.loads((exp / "logs" / "val_metrics.jsonl").read_text().splitlines()[-1])
    return record["psnr"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300, help="training steps of each model")
    parser.add_argument("--seed", type=int, default=100, help="manual_seed of both runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workdir", default=None, help="folder for data and runs (default: a temporary one)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        folders = make_folders(root / "data")
        plain, t_plain = run(False, folders, root, args.iters, args.seed)
        guided, t_guided = run(True, folders, root, args.iters, args.seed)
        windowed = window_psnr(root / "guided")
    print(f"sigma 50 denoising, {args.iters} steps x batch 4 of 64x64 crops, validation: 4 crops (96x96) "
          f"of a held-out photograph, RGB PSNR (uint8, crop 0)")
    print(f"plain NAFNet : {plain:.3f} dB  ({t_plain:.0f} s)")
    print(f"guided NAFNet: {guided:.3f} dB  ({t_guided:.0f} s)  oracle reference: clean photo shifted {SHIFT} px, "
          f"resized to {REF_SIZE}x{REF_SIZE}")
    print(f"difference   : {guided - plain:+.3f} dB")
    print(f"guided NAFNet fed the aligned window of the reference instead of the whole of it: {windowed:.3f} dB "
          f"({windowed - plain:+.3f} dB over plain)")


if __name__ == "__main__":
    main()

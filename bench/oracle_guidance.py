"""The standing benchmark of the reference path: how much does a guidance image help?

Sigma-50 Gaussian denoising of scikit-image photographs, tiny NAFNets trained through the
real training loop (``textualdeg.restoration.train.train``) with the same budget (steps,
batch 4 of 64x64 crops, learning rate, seed) in every cell, validated on four 96x96 crops
of a held-out photograph (RGB PSNR, uint8, the validation noise of the authors' protocol).

Reference cases (what each training crop and each validation crop is given):

* ``aligned``   the clean crop itself;
* ``shifted``   the clean image moved by (5, -4) px, same crop box;
* ``rescaled``  the clean image zoomed by 1.5 about the crop centre, same crop box;
* ``whole512``  the whole clean photograph resized to 512x512, as the authors feed it:
  in training the crop-sized window of it centred on the crop (a perfect DINOv2 window
  choice), in validation all of it;
* ``unrelated`` a crop of another photograph;
* ``noise``     uniform noise.

Models: ``plain`` (NAFNet, no reference: the same in every row), ``concat`` (NAFNet whose
first convolution also reads the reference resized to the input), ``faithful``
(GuidedNAFNet, ``reference_mode: masa``, the authors' path) and ``improved``
(GuidedNAFNet, ``reference_mode: refined`` with the correspondence loss). Each cell is the
mean and spread (sample standard deviation) over the seeds. For every guided run it also
prints diagnostics on the validation crops, at initialisation and after training: the
share of deepest-level matches within one cell of the true position (cases with a known
geometry), the PSNR of the reference image carried onto the input grid by the model's
matching (interior: one deepest cell left out at each border) against the clean crop, and
the mean cosine between the deepest input features of different positions (collapse).

    python bench/oracle_guidance.py --quick           # 1 seed, 3 cases, 300 steps (~3 min on 2 cores)
    python bench/oracle_guidance.py                   # 3 seeds, 6 cases, 300 steps (~20 min)
    python bench/oracle_guidance.py --iters 1000 --cases aligned --models plain faithful improved
    python bench/oracle_guidance.py --cases aligned --models improved --set train.use_grad_clip=false

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from skimage import data
from torch import nn

from textualdeg.data import GaussianDenoisingRefDataset
from textualdeg.data.transforms import pad_to_size, random_crop_box
from textualdeg.data.degradations import add_gaussian_noise, sample_sigma
from textualdeg.imageio import write_image
from textualdeg.options import options_from_dict
from textualdeg.registry import ARCH_REGISTRY, DATASET_REGISTRY
from textualdeg.restoration.archs.nafnet import NAFNet
from textualdeg.restoration.schema import RESTORATION_SCHEMA

REPO = Path(__file__).resolve().parents[1]
TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
VAL_PHOTO = "motorcycle"
SHIFT = (5, -4)  # (rows, columns) the content of the shifted reference is moved by
ZOOM = 1.5
REF_SIZE = 512
VAL_CROP = 96
SIGMA = 50
CASES = ("aligned", "shifted", "rescaled", "whole512", "unrelated", "noise")
MODELS = ("plain", "concat", "faithful", "improved")
CORRESPONDENCE_WEIGHT = 0.1


def load_photo(name: str) -> np.ndarray:
    """A scikit-image photograph as (H, W, 3) float32 in [0, 1]."""
    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return image.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------
# reference cases


def _affine_crop(image: np.ndarray, inverse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """out[v, u] = image at inverse @ (u, v, 1) (bilinear, edges replicated)."""
    h, w = size
    out = cv2.warpAffine(image, inverse.astype(np.float32), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return np.clip(out, 0.0, 1.0)


def ref_to_input_map(case: str, box: tuple[int, int, int, int], image_hw: tuple[int, int]) -> np.ndarray | None:
    """2x3 matrix taking input-crop pixel coordinates (x, y) to reference pixel coordinates.

    None where no geometric correspondence exists (``unrelated``, ``noise``).
    """
    top, left, h, w = box
    if case == "aligned":
        return np.float64([[1, 0, 0], [0, 1, 0]])
    if case == "shifted":
        return np.float64([[1, 0, SHIFT[1]], [0, 1, SHIFT[0]]])
    if case == "rescaled":
        cy, cx = (h - 1) / 2, (w - 1) / 2
        return np.float64([[ZOOM, 0, cx * (1 - ZOOM)], [0, ZOOM, cy * (1 - ZOOM)]])
    if case == "whole512":
        sy, sx = REF_SIZE / image_hw[0], REF_SIZE / image_hw[1]
        return np.float64([[sx, 0, (left + 0.5) * sx - 0.5], [0, sy, (top + 0.5) * sy - 0.5]])
    return None


def case_reference(case: str, image: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator,
                   others: list[np.ndarray], whole: bool = False) -> np.ndarray:
    """The reference a crop ``box`` = (top, left, h, w) of ``image`` gets in ``case``.

    ``whole`` (validation of ``whole512``): the whole 512x512 image instead of its window.
    """
    top, left, h, w = box
    if case == "aligned":
        return image[top : top + h, left : left + w].copy()
    if case == "shifted":
        return _affine_crop(image, np.float64([[1, 0, left - SHIFT[1]], [0, 1, top - SHIFT[0]]]), (h, w))
    if case == "rescaled":
        cy, cx = (h - 1) / 2, (w - 1) / 2
        inverse = np.float64([[1 / ZOOM, 0, left + cx * (1 - 1 / ZOOM)], [0, 1 / ZOOM, top + cy * (1 - 1 / ZOOM)]])
        return _affine_crop(image, inverse, (h, w))
    if case == "whole512":
        ref = np.clip(cv2.resize(image, (REF_SIZE, REF_SIZE), interpolation=cv2.INTER_AREA), 0.0, 1.0)
        if whole:
            return ref
        sy, sx = REF_SIZE / image.shape[0], REF_SIZE / image.shape[1]
        y0 = int(np.clip(round((top + h / 2) * sy - h / 2), 0, REF_SIZE - h))
        x0 = int(np.clip(round((left + w / 2) * sx - w / 2), 0, REF_SIZE - w))
        return ref[y0 : y0 + h, x0 : x0 + w].copy()
    if case == "unrelated":
        other = others[int(rng.integers(len(others)))]
        y0, x0 = int(rng.integers(other.shape[0] - h + 1)), int(rng.integers(other.shape[1] - w + 1))
        return other[y0 : y0 + h, x0 : x0 + w].copy()
    if case == "noise":
        return rng.random((h, w, 3), dtype=np.float32)
    raise ValueError(f"unknown reference case {case!r}; choose from {CASES}")


class CaseReferenceDenoisingDataset(GaussianDenoisingRefDataset):
    """Training crops of whole clean photographs, each with the reference of ``ref_case``
    (one registered subclass per case, ``case_dataset_name``, as the options schema of a
    dataset is closed)."""

    ref_case = "aligned"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._photos = [self._read(item.gt) for item in self.items]

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        if self.phase != "train":
            return super()._load(index, rng)
        paths, image = self.items[index], self._photos[index]
        padded = pad_to_size(image, self.gt_size)
        box = random_crop_box(padded.shape[:2], self.gt_size, rng)
        top, left, h, w = box
        gt = padded[top : top + h, left : left + w]
        others = [p for i, p in enumerate(self._photos) if i != index]
        ref = case_reference(self.ref_case, padded, box, rng, others)
        lq = add_gaussian_noise(gt, sample_sigma(rng, self.sigma_type, self.sigma_range), rng, clip=self.clip_noise)
        return self._finish(lq, gt, ref, rng, paths, image.shape[:2], lq_path=str(paths.gt))


def case_dataset_name(case: str) -> str:
    return f"OracleBench{case.capitalize()}Dataset"


for _case in CASES:
    DATASET_REGISTRY.register(type(case_dataset_name(_case), (CaseReferenceDenoisingDataset,), {"ref_case": _case}))


@ARCH_REGISTRY.register()
class ConcatRefNAFNet(NAFNet):
    """NAFNet reading ``cat([x, ref resized to x])``: its first convolution is split into
    ``intro`` (on x) and ``masa_ref_intro`` (on the reference), which is the same thing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.masa_ref_intro = nn.Conv2d(self.img_channel, self.width, 3, padding=1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        ref = F.interpolate(ref, size=(h, w), mode="bilinear", align_corners=False)  # (B, C, H, W)
        x, ref = self._pad(x), self._pad(ref)
        ref_feat = self.masa_ref_intro(ref)  # (B, width, H, W)
        out = self._forward_padded(x, fuse=lambda level, feat: feat + ref_feat if level == 0 else feat)
        return out[:, :, :h, :w]


# ---------------------------------------------------------------------------------------
# data, options, runs


def val_boxes(hw: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of the four validation crops of the held-out photograph."""
    h, w = hw
    return [(t, l, VAL_CROP, VAL_CROP) for t, l in ((h // 4, w // 5), (h // 2, w // 2), (h // 5, 3 * w // 5),
                                                  (2 * h // 3, w // 8))]


def make_folders(root: Path) -> dict[str, Path]:
    """Whole training photographs, validation crops and one validation-reference folder per case."""
    folders = {"train_gt": root / "train_gt", "val_gt": root / "val_gt"}
    folders.update({f"val_ref_{case}": root / f"val_ref_{case}" for case in CASES})
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    photos = [load_photo(name) for name in TRAIN_PHOTOS]
    for name, photo in zip(TRAIN_PHOTOS, photos):
        write_image(folders["train_gt"] / f"{name}.png", photo)
    clean = load_photo(VAL_PHOTO)
    for i, box in enumerate(val_boxes(clean.shape[:2])):
        top, left, h, w = box
        write_image(folders["val_gt"] / f"{VAL_PHOTO}_{i}.png", clean[top : top + h, left : left + w])
        for case in CASES:
            ref = case_reference(case, clean, box, np.random.default_rng(i), photos, whole=True)
            write_image(folders[f"val_ref_{case}"] / f"{VAL_PHOTO}_{i}.png", ref)
    return folders


def run_options(folders: dict[str, Path], exp: Path, case: str, model: str, iters: int, seed: int) -> dict:
    """tiny_cpu.yml retargeted to this benchmark's data, case and model."""
    opt = yaml.safe_load((REPO / "options" / "train_restoration" / "tiny_cpu.yml").read_text())
    opt["name"] = f"{model}_{case}_{seed}"
    opt["manual_seed"] = seed
    for key in ("train", "val"):
        opt["datasets"][key].update(dataroot_gt=str(folders[f"{key}_gt"]), sigma_range=SIGMA, sigma_test=SIGMA)
    opt["datasets"]["val"]["dataroot_ref"] = str(folders[f"val_ref_{case}"])
    # the authors' validation noise (seed 0 before every image), as the documented numbers used
    opt["datasets"]["val"]["val_noise_seed_mode"] = "fixed"
    train_ds = opt["datasets"]["train"]
    train_ds.update(type=case_dataset_name(case), dataroot_ref=None, gt_size=64,
                    ref_crop="full", batch_size_per_gpu=4)
    train_ds.pop("ref_size")
    net = opt["network_g"]
    backbone = {k: net[k] for k in ("img_channel", "width", "middle_blk_num", "enc_blk_nums", "dec_blk_nums")}
    if model == "plain":
        opt["network_g"] = {"type": "NAFNet", **backbone}
    elif model == "concat":
        opt["network_g"] = {"type": "ConcatRefNAFNet", **backbone}
    else:
        net["reference_mode"] = "masa" if model == "faithful" else "refined"
    if model == "improved":
        opt["train"]["correspondence_opt"] = {"loss_weight": CORRESPONDENCE_WEIGHT}
    opt["path"]["experiments_root"] = str(exp)
    opt["train"].update(total_iter=iters)
    opt["train"]["scheduler"]["periods"] = [iters]
    opt["train"]["optim_g"]["ref_lr"] = opt["train"]["optim_g"]["lr"]  # one lr for every parameter
    opt["val"].update(val_freq=iters, max_vis_images=0, save_img=False)
    opt["logger"].update(save_checkpoint_freq=iters, print_freq=max(1, iters // 5))
    return opt


def _validation_pairs(folders: dict[str, Path], case: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(noisy, reference, clean) tensors (1, 3, H, W) of the validation set of ``case``."""
    from textualdeg.imageio import read_image

    pairs = []
    for path in sorted(folders["val_gt"].iterdir()):
        gt = read_image(path)
        lq = (gt + np.random.RandomState(0).normal(0.0, SIGMA / 255.0, gt.shape)).astype(np.float32)
        ref = read_image(folders[f"val_ref_{case}"] / path.name)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        pairs.append((as_tensor(lq), as_tensor(ref), as_tensor(gt)))
    return pairs


@torch.no_grad()
def deepest_cells(net: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(2, H/s, W/s) reference cell (row, column) matched to each deepest input cell."""
    from textualdeg.restoration.reference.refined import RefinedMatcher

    x, ref = net._pad_pair(x, ref)
    feats_lq, feats_ref = net.masa_enc(x), net.masa_enc(ref)
    if isinstance(net.masa_matcher, RefinedMatcher):
        return net.masa_matcher(feats_lq, feats_ref)[-1].coords[0]
    match = net.masa_matcher(feats_lq[-1], feats_ref[-1])
    return torch.stack([match.ref_y[0], match.ref_x[0]])


@torch.no_grad()
def diagnostics(net: nn.Module, pairs, case: str, image_hw: tuple[int, int]) -> dict[str, float]:
    """Match accuracy, warped-reference interior PSNR and collapse measure on the validation pairs."""
    s = net.masa_enc.downsample_factor
    hits, total, mse, cosines = 0, 0, [], []
    for (lq, ref, gt), box in zip(pairs, val_boxes(image_hw)):
        warped = net.warp_reference_image(lq, ref)
        mse.append(float(((warped - gt)[..., s:-s, s:-s] ** 2).mean()))
        feat = net.masa_enc(net._zero_pad(lq))[-1][0].flatten(1)  # (C, P)
        unit = F.normalize(feat, dim=0)
        gram = unit.T @ unit  # (P, P)
        p = gram.shape[0]
        cosines.append(float((gram.sum() - gram.diagonal().sum()) / (p * (p - 1))))
        geometry = ref_to_input_map(case, box, image_hw)
        if geometry is None:
            continue
        cells = deepest_cells(net, lq, ref).double()  # (2, h, w)
        h, w = lq.shape[-2] // s, lq.shape[-1] // s
        cy, cx = torch.meshgrid(torch.arange(h) * s + (s - 1) / 2, torch.arange(w) * s + (s - 1) / 2, indexing="ij")
        true_x = geometry[0, 0] * cx + geometry[0, 1] * cy + geometry[0, 2]
        true_y = geometry[1, 0] * cx + geometry[1, 1] * cy + geometry[1, 2]
        centre_y = cells[0, :h, :w] * s + (s - 1) / 2
        centre_x = cells[1, :h, :w] * s + (s - 1) / 2
        ok = ((centre_y - true_y).abs() <= s) & ((centre_x - true_x).abs() <= s)
        hits, total = hits + int(ok.sum()), total + ok.numel()
    return {"match_acc": hits / total if total else float("nan"),
            "warp_psnr": -10 * math.log10(float(np.mean(mse))),
            "cosine": float(np.mean(cosines))}


def run_one(job: dict) -> dict:
    """Train one (case, model, seed) cell; return its PSNR and, for guided models, diagnostics."""
    from accelerate.utils import set_seed

    from textualdeg.restoration.train import build_model, train

    torch.set_num_threads(job["threads"])
    folders = {k: Path(v) for k, v in job["folders"].items()}
    case, model = job["case"], job["model"]
    exp = Path(job["root"]) / f"{model}_{case}_{job['seed']}"
    opt = options_from_dict(run_options(folders, exp, case, model, job["iters"], job["seed"]), RESTORATION_SCHEMA,
                            job["overrides"])
    result = {k: job[k] for k in ("case", "model", "seed", "iters", "overrides")}
    guided = model in ("faithful", "improved")
    pairs, image_hw = _validation_pairs(folders, case), load_photo(VAL_PHOTO).shape[:2]
    if guided:
        set_seed(opt.manual_seed)  # the loop seeds then builds: the same initial weights
        result["init"] = diagnostics(build_model(opt).eval(), pairs, case, image_hw)
    start = time.perf_counter()
    train(opt)
    result["seconds"] = time.perf_counter() - start
    result["psnr"] = json.loads((exp / "logs" / "val_metrics.jsonl").read_text().splitlines()[-1])["psnr"]
    if guided:
        from textualdeg.checkpoint import load_weights

        net = build_model(opt).eval()
        net.load_state_dict(load_weights(exp / "checkpoints" / "net_g_latest.safetensors"))
        result["end"] = diagnostics(net, pairs, case, image_hw)
    return result


# ---------------------------------------------------------------------------------------
# report


def _cell(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = float(np.mean(values))
    return f"{mean:.2f} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else f"{mean:.2f}"


def report(results: list[dict], cases: list[str], models: list[str]) -> str:
    """Markdown tables: PSNR (mean ± std over seeds) per case and model, then diagnostics."""
    by = lambda case, model, key="psnr": [r[key] for r in results if r["case"] == case and r["model"] == model]
    plain = [r["psnr"] for r in results if r["model"] == "plain"]
    lines = ["| reference | " + " | ".join(models) + " | improved - plain |",
             "|---|" + "---:|" * (len(models) + 1)]
    for case in cases:
        cells = [_cell(plain) if m == "plain" else _cell(by(case, m)) for m in models]
        plain_by_seed = {r["seed"]: r["psnr"] for r in results if r["model"] == "plain"}
        gain = _cell([r["psnr"] - plain_by_seed[r["seed"]] for r in results
                      if r["case"] == case and r["model"] == "improved" and r["seed"] in plain_by_seed])
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {gain} |")
    lines += ["", "| reference | model | match acc. init -> end | warped PSNR init -> end | "
              "cosine between positions init -> end |", "|---|---|---:|---:|---:|"]
    for case in cases:
        for model in ("faithful", "improved"):
            runs = [r for r in results if r["case"] == case and r["model"] == model]
            if not runs:
                continue
            fmt = lambda key: " -> ".join(_cell([r[t][key] for r in runs]) for t in ("init", "end"))
            lines.append(f"| {case} | {model} | {fmt('match_acc')} | {fmt('warp_psnr')} | {fmt('cosine')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, cases aligned/shifted/noise")
    parser.add_argument("--iters", type=int, default=None, help="training steps of every run (default 300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="manual seeds (default 100 101 102)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None, help="reference cases (default all)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each")
    parser.add_argument("--workdir", default=None, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write every run's result to this file")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="JSON",
                        help="results files (--json) of earlier runs: cells with the same case, model, seed, "
                             "steps and overrides are taken from them instead of trained again")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="option override applied to every run, e.g. train.grad_clip_norm=1.0 (repeatable)")
    args = parser.parse_args()
    iters = args.iters or 300
    seeds = args.seeds or ([100] if args.quick else [100, 101, 102])
    cases = args.cases or (["aligned", "shifted", "noise"] if args.quick else list(CASES))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        folders = {k: str(v) for k, v in make_folders(root / "data").items()}
        jobs = [{"case": case, "model": model, "seed": seed, "iters": iters, "threads": 1, "folders": folders,
                 "root": str(root / "runs"), "overrides": args.overrides}
                for seed in seeds for model in args.models for case in (cases[:1] if model == "plain" else cases)]
        key = lambda r: (r["case"], r["model"], r["seed"], r["iters"], list(r["overrides"]))
        earlier = [r for path in args.reuse for r in json.loads(Path(path).read_text())]
        reused = [next(r for r in earlier if key(r) == key(job)) for job in jobs if key(job) in map(key, earlier)]
        todo = [job for job in jobs if key(job) not in map(key, earlier)]
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            results = reused + list(pool.map(run_one, todo))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"sigma {SIGMA} denoising, {iters} steps x batch 4 of 64x64 crops, seeds {seeds}; validation: 4 crops "
          f"({VAL_CROP}x{VAL_CROP}) of a held-out photograph, RGB PSNR (uint8), mean ± std over seeds "
          f"({len(todo)} runs in {time.perf_counter() - start:.0f} s, {len(reused)} reused)" +
          (f"; overrides: {' '.join(args.overrides)}" if args.overrides else ""))
    print(report(results, cases, args.models))


if __name__ == "__main__":
    main()

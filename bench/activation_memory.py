"""Activation memory of the guided backbones per training setting, and whether batch 8 fits.

For each option file's ``network_g`` at its largest training crop (``datasets.train.gt_size``
or the largest of the progressive ``gt_sizes``), one training-mode forward per setting:

* ``plain``: float32, nothing recomputed;
* ``block`` / ``level``: ``train.activation_checkpointing`` (restoration/archs/memory.py);
* ``bf16``: ``train.mixed_precision: bf16`` (``torch.autocast``);
* ``block+bf16``: both.

It counts the bytes autograd keeps for backward (``memory.SavedTensorMeter``: the storages of
the tensors saved through ``torch.autograd.graph.saved_tensors_hooks``, each once, weights
left out) and divides by the input pixels (batch x crop x crop); autocast's bf16 weight
copies, a fixed size per step, are counted apart. On a GPU it also runs the backward and
reports the peak of ``torch.cuda.max_memory_allocated`` (on the CPU there is no allocator
peak to read: tracemalloc does not see torch's allocations). Then the arithmetic for batch 8
at the authors' crop: KiB/px x crop**2 x 8 + parameters x 16 bytes (float32 weight,
gradient, Adam m and v), plus the weight copies, against 80 GiB per GPU. Kept activations
are a lower bound of the real peak: backward adds activation gradients and, with
checkpointing, the recomputed region.

Bytes per pixel hardly depend on the crop (every activation is a per-pixel map; the
matching's few crop-squared tensors are tiny), so ``--crop`` measures at a smaller crop to
keep CPU runs short; ``--tiny`` swaps in tiny widths (smoke run). docs/memory.md has the
measured table and the command.

    python bench/activation_memory.py --crop 128 --threads 1    # every guided backbone, ~3 min on CPU
    python bench/activation_memory.py --crop 256 \
        --options options/train_restoration/002_nafnet_single_image_motion_deblurring.yml
    python bench/activation_memory.py --tiny --crop 64          # smoke

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
from textualdeg.options.yaml_files import compose_with_origins
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.memory import SavedTensorMeter, apply_activation_checkpointing

SETTINGS = ("plain", "block", "level", "bf16", "block+bf16")
OPTIONS_DIR = Path(__file__).resolve().parents[1] / "options" / "train_restoration"
# one option file per guided backbone (the others share its network_g up to channels)
DEFAULT_OPTIONS = (
    "002_nafnet_single_image_motion_deblurring.yml",
    "003_restormer_single_image_motion_deblurring.yml",
    "001_promptir_all_in_one_restoration.yml",
    "005_sfnet_image_dehazing_indoor.yml",
    "008_drsformer_image_deraining_rain200h.yml",
    "007_drsformer_image_deraining_rain200l.yml",
    "dsrir_all_in_one_3task_guided.yml",
)
GPU_GIB = 80  # A100/H100 80GB
BATCH = 8  # the authors' batch_size_per_gpu
# SFNet normalises its dynamic filters with BatchNorm over the batch: training needs 2 images
MIN_BATCH = {"GuidedSFNet": 2}

# Tiny widths for --tiny (same keys as the option files' network_g, reference branch small).
_TINY_REFERENCE = dict(ext_n_blocks=(1,), lr_block_size=4, dilations=(1, 2))
TINY_OVERRIDES: dict[str, dict] = {
    "GuidedNAFNet": dict(width=8, nf=8, enc_blk_nums=(1, 1, 1, 2), **_TINY_REFERENCE),
    "GuidedRestormer": dict(dim=8, nf=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
                            **_TINY_REFERENCE),
    "GuidedPromptIR": dict(dim=8, nf=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
                           prompt_dims=(8, 8, 16), prompt_sizes=(8, 4, 2), prompt_len=3, **_TINY_REFERENCE),
    "GuidedSFNet": dict(num_res=1, base_channel=16, nf=16, **_TINY_REFERENCE),
    "GuidedDRSformer": dict(dim=8, nf=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), **_TINY_REFERENCE),
    "GuidedDRSformer200LSPA": dict(dim=8, nf=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), **_TINY_REFERENCE),
    "GuidedDSRIR": dict(sn1_feats=4, sn2_feats=6, sn3_feats=6, feats_step1=2, feats_step2=2, reduction=2,
                        sn1_pab=(1, 1, 1), sn2_pab=(1, 1), sn3_pab=1, sn3_pa=((8, 8),), **_TINY_REFERENCE),
}


@dataclass
class Row:
    option: str
    arch: str
    params: int
    authors_crop: int
    crop: int
    batch: int
    setting: str
    kib_per_px: float | None = None
    weight_copy_mib: float = 0.0
    peak_gib: float | None = None
    seconds: float | None = None
    note: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--options", nargs="+", default=[str(OPTIONS_DIR / f) for f in DEFAULT_OPTIONS],
                        help="training option files (default: one per guided backbone)")
    parser.add_argument("--crop", type=int, default=None,
                        help="measure at this crop instead of the option file's (KiB/px barely depends on it)")
    parser.add_argument("--batch", type=int, default=1, help="images per measured forward (GuidedSFNet: >= 2)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (smoke run)")
    parser.add_argument("--backward", action="store_true",
                        help="also run (and time) the backward on the CPU (always done on CUDA, for the peak)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.batch < 1 or (args.crop is not None and args.crop < 8):
        parser.error(f"--batch must be >= 1 and --crop >= 8, got {args.batch}, {args.crop}")
    return args


def read_option_file(path: str) -> tuple[dict, int]:
    """``network_g`` and the largest training crop of an option file (``base:`` resolved)."""
    data, _ = compose_with_origins(Path(path))
    train = data["datasets"]["train"]
    crops = [train["gt_size"]] if "gt_size" in train else []
    crops += list(train.get("gt_sizes") or [])
    return dict(data["network_g"]), max(crops)


def build(network_g: dict, tiny: bool) -> nn.Module:
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build(network_g)
    if tiny:
        model = ARCH_REGISTRY.build({**network_g, **TINY_OVERRIDES[type(model).__name__]})
    return model


def _inputs(model: nn.Module, batch: int, crop: int, device: torch.device) -> tuple[tuple, dict]:
    """Random (x, ref) of the crop size (the DINOv2 window is crop-sized), plus ``clean`` in
    the refined mode (its correspondence loss is part of the training forward)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, model.image_channels, crop, crop, generator=g).to(device)
    ref = torch.rand(batch, model.ref_channels, crop, crop, generator=g).to(device)
    kwargs = {}
    if model.reference_mode == "refined":
        clean = torch.rand(batch, model.ref_channels, crop, crop, generator=g).to(device)
        kwargs = dict(clean=clean, generator=torch.Generator().manual_seed(1))
    return (x, ref), kwargs


def measure(model: nn.Module, setting: str, batch: int, crop: int, device: torch.device,
            backward: bool = False) -> tuple[float, float, float | None, float]:
    """(kept activation KiB per input pixel, MiB of bf16 weight copies (per step, not per
    pixel), peak GiB of forward+backward on CUDA or None, seconds)."""
    apply_activation_checkpointing(model, "block" if "block" in setting else "level" if "level" in setting else "none")
    model.train()
    inputs, kwargs = _inputs(model, batch, crop, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in setting else nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with SavedTensorMeter(model) as meter, autocast:
        out = model(*inputs, **kwargs)
    kept, copies = meter.kept_bytes(), meter.weight_copy_bytes()
    peak = None
    if backward or device.type == "cuda":
        # a pixel loss on the output, plus the correspondence loss in the refined mode
        loss = out.float().square().mean() if isinstance(out, torch.Tensor) else out[0].float().square().mean() + out[1]
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    seconds = time.perf_counter() - start
    del out, meter  # frees the graph
    model.zero_grad(set_to_none=True)
    gc.collect()
    return kept / (batch * crop * crop) / 1024, copies / 2**20, peak, seconds


def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    rows: list[Row] = []
    for path in args.options:
        network_g, authors_crop = read_option_file(path)
        model = build(network_g, args.tiny).to(device)
        arch = type(model).__name__
        crop = args.crop or authors_crop
        batch = max(args.batch, MIN_BATCH.get(arch, 1))
        params = sum(p.numel() for p in model.parameters())
        for setting in args.settings:
            row = Row(Path(path).stem, arch, params, authors_crop, crop, batch, setting)
            try:
                row.kib_per_px, row.weight_copy_mib, row.peak_gib, row.seconds = measure(
                    model, setting, batch, crop, device, args.backward)
            except Exception as err:  # noqa: BLE001  (report and go on)
                row.note = f"failed: {type(err).__name__}: {err}"[:160]
            rows.append(row)
            print(format_row(row, rows), flush=True)
        del model
        gc.collect()
    return rows


def _plain(row: Row, rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.option == row.option and r.setting == "plain" and r.kib_per_px), None)


def format_row(r: Row, rows: list[Row]) -> str:
    if r.kib_per_px is None:
        size = f"{r.crop}x{r.batch}"
        return f"| {r.option:<46} | {r.arch:<22} | {size:>12} | {r.setting:<10} | - | - | - | - | {r.note}"
    plain = _plain(r, rows)
    ratio = f"{plain.kib_per_px / r.kib_per_px:.1f}x" if plain else "-"
    peak = f"{r.peak_gib:.2f}" if r.peak_gib is not None else "-"
    return (f"| {r.option:<46} | {r.arch:<22} | {f'{r.crop}x{r.batch}':>12} | {r.setting:<10} | {r.kib_per_px:>8.2f} | "
            f"{ratio:>6} | {peak:>6} | {r.seconds:>6.1f} | {r.note}")


def fit_lines(rows: list[Row]) -> list[str]:
    """Batch 8 at the authors' crop: activations + 16 bytes per parameter (+ the bf16 weight
    copies) vs 80 GiB.

    ``tight`` marks totals within 10% of the GPU: kept activations are a lower bound of the
    peak (backward adds activation gradients, checkpointing one recomputed region).
    """
    lines = [f"| option | arch | setting | activations GiB | + states GiB | total GiB | fits {GPU_GIB} GiB |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        if r.kib_per_px is None:
            continue
        acts = r.kib_per_px * 1024 * r.authors_crop**2 * BATCH / 2**30
        states = r.params * 16 / 2**30 + r.weight_copy_mib / 2**10
        total = acts + states
        lines.append(f"| {r.option} | {r.arch} | {r.setting} | {acts:.1f} | {states:.2f} | {total:.1f} | "
                     f"{'yes' if total < 0.9 * GPU_GIB else 'tight' if total < GPU_GIB else 'no'} |")
    return lines


def main(args: argparse.Namespace) -> list[Row]:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"crop {args.crop or 'the option file'}, {'tiny' if args.tiny else 'real'} widths; kept activation KiB "
          f"per input pixel (saved-tensor storages, weights excluded), ratio to plain, peak GiB (CUDA only), "
          f"seconds (forward{'+backward' if args.backward or args.device.startswith('cuda') else ''})")
    print(f"| {'option':<46} | {'arch':<22} | crop x batch | {'setting':<10} | {'KiB/px':>8} | {'ratio':>6} | "
          f"{'peak':>6} | {'s':>6} | note")
    print(f"|{'-' * 48}|{'-' * 24}|{'-' * 14}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 8}|------")
    rows = run(args)
    print(f"\n# batch {BATCH} at the option file's crop: KiB/px x crop**2 x {BATCH} + parameters x 16 bytes "
          f"(+ bf16 weight copies)")
    for line in fit_lines(rows):
        print(line)
    return rows


if __name__ == "__main__":
    main(parse_args())

"""Training-step throughput of the restoration backbones, plain and guided.

Measures forward + backward images/s of each model at each input size in four modes, all
in the same process so the ratios are fair: eager fp32 (the baseline), channels_last
memory format, ``torch.compile`` and bf16 autocast. A mode the device does not support, or
one that fails, is reported in the table instead of aborting the run.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Run:
    python bench/backbones.py --device cuda --sizes 128 256 --batch 4 --iters 20
    python bench/backbones.py --device cpu --tiny --sizes 64 --batch 2 --iters 3   # smoke
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

import textualdeg.restoration.archs as archs

MODES = ("eager", "channels_last", "compile", "bf16")

# Official configurations (NAFNet: GoPro width 64, as in the paper's deblurring setting).
FULL_CONFIGS: dict[str, dict] = {
    "NAFNet": dict(width=64, middle_blk_num=1, enc_blk_nums=(1, 1, 1, 28), dec_blk_nums=(1, 1, 1, 1)),
    "Restormer": dict(),
    "PromptIR": dict(decoder=True),
    "GuidedNAFNet": dict(
        width=64, middle_blk_num=1, enc_blk_nums=(1, 1, 1, 28), dec_blk_nums=(1, 1, 1, 1), nf=64,
        ext_n_blocks=(4, 4, 4, 4), reffusion_n_blocks=(2, 2, 2, 2), reffusion_n_blocks_middle=1,
    ),
    "GuidedRestormer": dict(),
    "GuidedPromptIR": dict(),
    # options 005/006 (SFNet dehazing), 007-010 (DRSformer deraining), DSRIR's all-in-one recipe
    "SFNet": dict(mode=("train", "Indoor"), num_res=16),
    "DRSformer": dict(),
    "DRSformer200LSPA": dict(),
    "DSRIR": dict(),
    "GuidedSFNet": dict(mode=("train", "Indoor"), num_res=16),
    "GuidedDRSformer": dict(),
    "GuidedDRSformer200LSPA": dict(),
    "GuidedDSRIR": dict(),
}

_RESTORMER_TINY = dict(
    dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2), ffn_expansion_factor=2.0
)
_PROMPTIR_TINY = dict(_RESTORMER_TINY, prompt_dims=(8, 8, 16), prompt_sizes=(8, 4, 2), prompt_len=3)
_NAFNET_TINY = dict(width=8, middle_blk_num=1, enc_blk_nums=(1, 1, 1, 1), dec_blk_nums=(1, 1, 1, 1))
_GUIDE_TINY = dict(nf=8, ext_n_blocks=(1, 1, 1, 1), reffusion_n_blocks=(1, 1, 1, 1))
_SFNET_TINY = dict(mode=("train", "Indoor"), num_res=1, base_channel=16)
_DRSFORMER_TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), ffn_expansion_factor=2.0)
_DSRIR_TINY = dict(sn1_feats=4, sn2_feats=6, sn3_feats=6, feats_step1=2, feats_step2=2, reduction=2,
                   sn1_pab=(1, 1, 1), sn2_pab=(1, 1), sn3_pab=1, sn3_pa=((8, 8),))
TINY_CONFIGS: dict[str, dict] = {
    "NAFNet": _NAFNET_TINY,
    "Restormer": _RESTORMER_TINY,
    "PromptIR": _PROMPTIR_TINY,
    "GuidedNAFNet": dict(_NAFNET_TINY, **_GUIDE_TINY, reffusion_n_blocks_middle=1),
    "GuidedRestormer": dict(_RESTORMER_TINY, **_GUIDE_TINY),
    "GuidedPromptIR": dict(_PROMPTIR_TINY, **_GUIDE_TINY),
    "SFNet": _SFNET_TINY,
    "DRSformer": _DRSFORMER_TINY,
    "DRSformer200LSPA": _DRSFORMER_TINY,
    "DSRIR": _DSRIR_TINY,
    "GuidedSFNet": dict(_SFNET_TINY, nf=16, ext_n_blocks=(1, 1, 1), reffusion_n_blocks=(1, 1, 1)),
    "GuidedDRSformer": dict(_DRSFORMER_TINY, **_GUIDE_TINY),
    "GuidedDRSformer200LSPA": dict(_DRSFORMER_TINY, **_GUIDE_TINY),
    "GuidedDSRIR": dict(_DSRIR_TINY, ext_n_blocks=(1, 1, 1), reffusion_n_blocks=(1, 1, 1)),
}


@dataclass
class Result:
    model: str
    size: int
    mode: str
    images_per_s: float | None = None
    peak_mib: float | None = None
    note: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="square input sizes")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    parser.add_argument("--models", nargs="+", default=list(FULL_CONFIGS), choices=list(FULL_CONFIGS),
                        help="models to run (guided ones are skipped when not importable)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="modes to run")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("batch", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes must be positive, got {args.sizes}")
    return args


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"  # tried; failures are caught and reported


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_guided(model: nn.Module) -> bool:
    import inspect

    return "ref" in inspect.signature(model.forward).parameters


def _measure(model: nn.Module, mode: str, size: int, args: argparse.Namespace, device: torch.device,
             guided: bool) -> tuple[float, float | None]:
    """Return (images/s, peak MiB or None) of forward+backward steps in ``mode``."""
    model = copy.deepcopy(model).to(device).train()
    memory_format = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    if mode == "channels_last":
        # Module.to(memory_format=...) rejects PromptIR's 5-D prompt bank: convert 4-D weights only.
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(args.batch, 3, size, size, generator=g).to(device).contiguous(memory_format=memory_format)
    target = torch.rand(args.batch, 3, size, size, generator=g).to(device)
    inputs = (x, torch.rand(args.batch, 3, size, size, generator=g).to(device)) if guided else (x,)
    step_model = torch.compile(model) if mode == "compile" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else nullcontext()

    def step() -> None:
        with autocast:
            loss = (step_model(*inputs).float() - target).abs().mean()
        loss.backward()
        for p in model.parameters():
            p.grad = None

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return args.batch * args.iters / elapsed, peak


def run(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    configs = TINY_CONFIGS if args.tiny else FULL_CONFIGS
    results: list[Result] = []
    for name in args.models:
        cls = getattr(archs, name, None)
        if cls is None:
            results.append(Result(name, 0, "-", note="not importable from textualdeg.restoration.archs: skipped"))
            continue
        try:
            torch.manual_seed(0)
            model = cls(**configs[name])
        except Exception as err:  # noqa: BLE001  (report and go on)
            results.append(Result(name, 0, "-", note=f"build failed: {type(err).__name__}: {err}"[:160]))
            continue
        guided = _is_guided(model)
        for size in args.sizes:
            for mode in args.modes:
                if mode == "bf16" and not _bf16_supported(device):
                    results.append(Result(name, size, mode, note="bf16 not supported on this device"))
                    continue
                try:
                    ips, peak = _measure(model, mode, size, args, device, guided)
                    results.append(Result(name, size, mode, ips, peak))
                except Exception as err:  # noqa: BLE001
                    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    results.append(Result(name, size, mode, note=f"failed: {type(err).__name__}: {msg}"[:160]))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(_format_row(results[-1], results), flush=True)
    return results


def _format_row(r: Result, results: list[Result]) -> str:
    eager = next((e for e in results if e.model == r.model and e.size == r.size and e.mode == "eager"), None)
    if r.images_per_s is None:
        return f"| {r.model:<22} | {r.size:>4} | {r.mode:<13} | {'-':>9} | {'-':>6} | {'-':>8} | {r.note}"
    ratio = f"{r.images_per_s / eager.images_per_s:.2f}x" if eager and eager.images_per_s else "-"
    peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "-"
    return f"| {r.model:<22} | {r.size:>4} | {r.mode:<13} | {r.images_per_s:>9.2f} | {ratio:>6} | {peak:>8} | {r.note}"


def main(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# torch {torch.__version__}, device {device} ({desc}), threads {torch.get_num_threads()}, "
          f"batch {args.batch}, iters {args.iters} (+{args.warmup} warmup), "
          f"{'tiny' if args.tiny else 'official'} configs; forward+backward images/s, ratio to eager")
    print(f"| {'model':<22} | {'size':>4} | {'mode':<13} | {'img/s':>9} | {'ratio':>6} | {'peak MiB':>8} | note")
    print(f"|{'-' * 24}|{'-' * 6}|{'-' * 15}|{'-' * 11}|{'-' * 8}|{'-' * 10}|------")
    results = run(args)
    for r in results:
        if r.size == 0:
            print(_format_row(r, results))
    return results


if __name__ == "__main__":
    main(parse_args())

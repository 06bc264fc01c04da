"""Real-size benchmark of all five stages, with random weights and nothing downloaded.

Every model is built from its real configuration on the meta device, then allocated and
initialised once on the target device (``textualdeg.guidance.real_configs``): SD 2.1-base
(UNet, VAE, text encoder), CLIP ViT-H/14, DINOv2 ViT-B/14, and each stage-4 network from
its option file's ``network_g``. Then, through the package's own code paths:

1. one stage-1 training step (I2T mapper + global K/V; ``guidance.train.training_step``);
2. one stage-2 training step (TR mapper, frozen I2T mapper);
3. one generation batch (``GuidancePipeline``, DDIM with classifier-free guidance);
4. one training step of every guided backbone at its option file's crop size
   (``restoration.train.training_step``), after the DINOv2 window selection of
   ``ref_crop: dino`` files;
5. one evaluation image (``evaluation.evaluate_dataset`` on a 1280x720 pair, GoPro's size).

Each row gives the wall time of one call (the fastest of ``--repeat``; training rows run
one untimed step first, so that the optimizer's state is in the peak), peak host memory
(the process's resident high-water mark, reset before each call), on a GPU peak device
memory, and images/s (stage 3 also UNet image-evaluations/s: a batched-CFG call on B
images counts 2B).

Two rows are ratios against the authors' code paths, measured in the same run on the
same weights, ours and theirs alternating call by call (``--no-baseline`` skips them,
``--ratio-only`` runs only them in stage 4):

* generation: theirs = two UNet calls per DDIM step (unconditional, then conditional) at
  batch 1, one image after the other, with their attention arithmetic on every layer
  (``AuthorsAttention``: (Q K^T) * scale, softmax, @ V as batched matmuls, D5), in fp16
  on a GPU; ours = one batched-CFG call per step on the whole batch, SDPA kernels, bf16.
  On a CPU both run in ``--dtype`` (equal numerics) and the outputs are compared.
* guided-NAFNet training step (option 002): theirs = ``authors_guided_nafnet`` below, their
  ``NAFNetRefFusion.forward`` rebuilt from their arithmetic on our modules' weights (the
  whole-reference coarse search, a Python loop building the window grids, per-level
  advanced-index gathers, the in-window search, and the transfer as unfold (kernel 3s,
  stride s) -> gather -> fold / fold(ones) per level; their LayerNorm2d keeping its
  normalised output for backward); ours = ``GuidedNAFNet`` (gather transfer, vectorised
  windows, a LayerNorm that recomputes its statistics). Same weights, same input: the
  outputs are compared too.

Targets: on a GPU generation >= 3x and the guided step >= 1.5x; on a CPU ours
is never slower at equal numerics. docs/real_size.md has the measured tables.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334. The rebuilt baselines follow
mrluin/TextualDegRemoval@e755c39 ``models/archs/network_nafnet_guided_arch.py`` and
``scripts/generate/main_generate_reference.py`` (no license file upstream; re-written).

Run:
    python bench/real_size.py --device cuda                     # all stages, real size
    python bench/real_size.py --device cpu --stages 3 --resolution 256 --steps 2
    python bench/real_size.py --device cpu --stages 1 --size half --gradient-checkpointing
    python bench/real_size.py --device cpu --threads 1 --stages 4 --ratio-only
    python bench/real_size.py --tiny                            # CI: tiny models, CPU, seconds
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import re
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
OPTIONS = REPO / "options"
#: one option file per guided backbone (stage 4); the crop and batch are the file's
STAGE4_FILES = (
    "002_nafnet_single_image_motion_deblurring.yml",
    "001_promptir_all_in_one_restoration.yml",
    "003_restormer_single_image_motion_deblurring.yml",
    "005_sfnet_image_dehazing_indoor.yml",
    "007_drsformer_image_deraining_rain200l.yml",
    "008_drsformer_image_deraining_rain200h.yml",
    "dsrir_all_in_one_3task_guided.yml",
)
STAGE5_FILE = "deblur_gopro.yml"
GUIDED_NAFNET_FILE = STAGE4_FILES[0]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: reference arguments that let the tiny stage-4 networks take crops of a few dozen pixels
_TINY_REFERENCE = {"lr_block_size": 4, "dilations": [1, 2]}


# ---------------------------------------------------------------------------------------
# measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_peak_mib() -> float | None:
    """The process's resident high-water mark (VmHWM), MiB; None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def _reset_host_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); elsewhere the peak stays process-wide."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


@dataclass
class Row:
    """One measured phase."""

    stage: str
    what: str
    seconds: float
    host_mib: float | None
    device_mib: float | None
    images: int = 0
    unet_evals: int = 0
    note: str = ""

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.images and self.seconds > 0 else None

    @property
    def unet_per_s(self) -> float | None:
        return self.unet_evals / self.seconds if self.unet_evals and self.seconds > 0 else None


class Meter:
    """Wall time (per call) and peak memory of a function, or of two compared side by side."""

    def __init__(self, device: torch.device, warmup: int, repeat: int):
        self.device, self.warmup, self.repeat = device, warmup, repeat

    def _reset(self) -> None:
        gc.collect()
        _reset_host_peak()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def _timed(self, fn: Callable[[], Any]) -> tuple[float, float | None, float | None, Any]:
        """One call: (seconds, peak host MiB, peak device MiB, output), peaks reset before it."""
        self._reset()
        start = time.perf_counter()
        out = fn()
        _sync(self.device)
        seconds = time.perf_counter() - start
        device_mib = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return seconds, _host_peak_mib(), device_mib, out

    def __call__(self, stage: str, what: str, fn: Callable[[], Any], images: int = 0, unet_evals: int = 0,
                 note: str = "", warmup: int | None = None) -> tuple[Row, Any]:
        """``warmup`` untimed calls, then the fastest of ``repeat`` timed ones; the peak over the timed ones.

        ``warmup`` overrides the default (training rows take one, so AdamW's state is in the peak).
        """
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        calls = [self._timed(fn) for _ in range(self.repeat)]
        row = self._row(stage, what, calls, images, unet_evals, note)
        return row, calls[-1][3]

    def compare(self, stage: str, ours: tuple[str, Callable[[], Any]], theirs: tuple[str, Callable[[], Any]],
                images: int = 0, unet_evals: int = 0) -> tuple[Row, Row, Any, Any]:
        """Ours and theirs alternately (one warm-up each, then ``repeat`` pairs), so that a load
        change on a shared machine hits both sides alike; the fastest call of each side counts."""
        ours[1](), theirs[1]()
        pairs = [(self._timed(ours[1]), self._timed(theirs[1])) for _ in range(self.repeat)]
        row_ours = self._row(stage, ours[0], [p[0] for p in pairs], images, unet_evals, "")
        row_theirs = self._row(stage, theirs[0], [p[1] for p in pairs], images, unet_evals, "")
        return row_ours, row_theirs, pairs[-1][0][3], pairs[-1][1][3]

    @staticmethod
    def _row(stage: str, what: str, calls: list, images: int, unet_evals: int, note: str) -> Row:
        def peak(values: list) -> float | None:
            values = [v for v in values if v is not None]
            return max(values) if values else None

        row = Row(stage, what, min(c[0] for c in calls), peak([c[1] for c in calls]), peak([c[2] for c in calls]),
                  images, unet_evals, note)
        print(_format(row), flush=True)
        return row


def _format(row: Row) -> str:
    def num(value: float | None, fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    return (f"| {row.stage:<7} | {row.what:<44} | {row.seconds:>9.3f} | {num(row.host_mib, '>9.0f')} | "
            f"{num(row.device_mib, '>9.0f')} | {num(row.images_per_s, '>8.3f')} | {num(row.unet_per_s, '>8.2f')} | "
            f"{row.note}")


HEADER = ("| stage   | what                                         | seconds   | host MiB  | dev MiB   | img/s    "
          "| UNet/s   | note\n|---------|----------------------------------------------|-----------|-----------|"
          "-----------|----------|----------|------")


# ---------------------------------------------------------------------------------------
# models of stages 1-3


def _half_configs() -> dict[str, Any]:
    """The intermediate size: SD 2.1-base and CLIP ViT-H/14 with every width halved, depths and
    attention heads kept (so attention score matrices have their real size)."""
    from textualdeg.guidance.real_configs import (
        SD21_BASE_TEXT_ENCODER_CONFIG,
        SD21_BASE_UNET_CONFIG,
        SD21_BASE_VAE_CONFIG,
        clip_vision_config,
    )

    unet = dict(SD21_BASE_UNET_CONFIG, block_out_channels=(160, 320, 640, 640), cross_attention_dim=512)
    vae = dict(SD21_BASE_VAE_CONFIG, block_out_channels=(64, 128, 256, 256))
    text = dict(SD21_BASE_TEXT_ENCODER_CONFIG, hidden_size=512, intermediate_size=2048, num_attention_heads=8)
    vision = clip_vision_config()
    vision.hidden_size, vision.intermediate_size, vision.num_attention_heads = 640, 2560, 8
    return {"unet": unet, "vae": vae, "text": text, "vision": vision, "hidden_dim": 640}


def _tiny_configs() -> dict[str, Any]:
    from transformers import CLIPVisionConfig

    from textualdeg.guidance.tiny import TINY_TEXT_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
    return {"unet": TINY_UNET_CONFIG, "vae": TINY_VAE_CONFIG, "text": TINY_TEXT_CONFIG, "vision": vision,
            "hidden_dim": 32}


def build_guidance_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, tmp: Path):
    """(sd, image_encoder, mapper hidden width) at ``args.size`` in ``dtype`` on ``device``."""
    from textualdeg.guidance.real_configs import build_clip_vision, build_stable_diffusion

    configs = _tiny_configs() if args.tiny else _half_configs() if args.size == "half" else {"hidden_dim": 1280}
    sd = build_stable_diffusion(tmp / "tokenizer", device=device, dtype=dtype, unet_config=configs.get("unet"),
                                vae_config=configs.get("vae"), text_config=configs.get("text"))
    encoder = build_clip_vision(device=device, dtype=dtype, config=configs.get("vision"))
    for module in (sd.unet, sd.vae, sd.text_encoder, encoder):
        module.requires_grad_(False)
    return sd, encoder, configs["hidden_dim"]


# ---------------------------------------------------------------------------------------
# stages 1 and 2


def mapper_step(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, sd, encoder, hidden: int,
                stage: str, meter: Meter) -> list[Row]:
    """One training step of the stage-1 (``i2t``) or stage-2 (``tr``) mapper, as ``train_mapper`` runs it."""
    from textualdeg.guidance.injection import build_injection_prompt
    from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper
    from textualdeg.guidance.memory import attention_backend
    from textualdeg.guidance.processors import global_kv_processors
    from textualdeg.guidance.train import FrozenModels, MapperTrainingModel, cast_frozen, training_step

    processors = global_kv_processors(sd.unet)
    torch.manual_seed(0)
    i2t = ImageToTextMapper.for_models(encoder, sd.text_encoder, 20, hidden)
    if stage == "i2t":
        frozen, mapper, trained_kv = FrozenModels(sd, encoder), i2t, processors
    else:
        frozen = FrozenModels(sd, encoder, i2t.requires_grad_(False).eval())
        mapper, trained_kv = TextRestorationMapper.for_models(sd.text_encoder, 20, hidden), None
    for processor in processors.values():
        processor.requires_grad_(stage == "i2t")
    prompt = build_injection_prompt(sd.tokenizer, "a photo of a {}", "S")
    model = MapperTrainingModel(frozen, mapper.train(), prompt, trained_kv).to(device)
    cast_frozen(model, device, dtype)
    if args.gradient_checkpointing:
        sd.unet.enable_gradient_checkpointing()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-6)
    batch_size, res = args.batch or (4 if device.type == "cuda" else 1), args.resolution
    g = torch.Generator().manual_seed(0)
    batch = {"target": torch.rand(batch_size, 3, res, res, generator=g).to(device),
             "clip_input": torch.rand(batch_size, 3, 224, 224, generator=g).to(device)}
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def step() -> float:
        generator = torch.Generator(device=device).manual_seed(1)
        with attention_backend(args.attention):
            with autocast:
                loss = training_step(model, frozen, batch, generator)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    label = "1 I2T" if stage == "i2t" else "2 TR"
    what = (f"train step, batch {batch_size} at {res} px, {str(dtype)[6:]}"
            f"{', grad ckpt' if args.gradient_checkpointing else ''}, {args.attention}")
    count = sum(p.numel() for p in trained)
    # one untimed step first: the peak is the steady state's, with AdamW's state allocated
    row, _ = meter(label, what, step, images=batch_size, note=f"{count / 1e6:.1f} M trained parameters",
                   warmup=max(1, args.warmup))
    if args.gradient_checkpointing:
        sd.unet.disable_gradient_checkpointing()
    for processor in processors.values():
        processor.requires_grad_(False)
    return [row]


# ---------------------------------------------------------------------------------------
# stage 3


class AuthorsAttention:
    """The authors' attention on every UNet layer (their class-level patch, D5), rebuilt.

    Queries, keys and values as (B*heads, N, d), scores ``(Q K^T) * scale`` materialised,
    softmax, ``@ V``; keys/values from the trained global projections on cross-attention
    and from the layer's own on self-attention. A plain processor (same call signature as
    diffusers' processors), installed for the baseline only.

    Args:
        global_kv: the layer's ``GlobalKVAttnProcessor`` (cross-attention) or None.
    """

    def __init__(self, global_kv: nn.Module | None = None):
        self.global_kv = global_kv

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        query = attn.to_q(hidden_states)  # (B, N, inner)
        if encoder_hidden_states is None or self.global_kv is None:
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            key, value = attn.to_k(context), attn.to_v(context)  # (B, L, inner)
        else:
            key = self.global_kv.to_k_global(encoder_hidden_states)  # (B, L, inner)
            value = self.global_kv.to_v_global(encoder_hidden_states)  # (B, L, inner)
        batch, n, inner = query.shape
        heads, head_dim = attn.heads, inner // attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1, heads, head_dim).permute(0, 2, 1, 3).reshape(batch * heads, -1, head_dim)

        scores = torch.matmul(split(query), split(key).transpose(-1, -2)) * attn.scale  # (B*h, N, L)
        out = torch.matmul(scores.softmax(dim=-1), split(value))  # (B*h, N, d)
        out = out.reshape(batch, heads, n, head_dim).permute(0, 2, 1, 3).reshape(batch, n, inner)  # (B, N, inner)
        return attn.to_out[1](attn.to_out[0](out))


def install_authors_attention(unet) -> dict:
    """Put :class:`AuthorsAttention` on every attention layer; returns the processors to put back."""
    from textualdeg.guidance.processors import global_kv_processors

    saved = dict(unet.attn_processors)
    global_kv = global_kv_processors(unet)
    unet.set_attn_processor({name: AuthorsAttention(global_kv.get(name[: -len(".processor")]))
                             for name in saved})
    return saved


def _pipeline(sd, encoder, hidden: int, device: torch.device, dtype: torch.dtype):
    from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper
    from textualdeg.guidance.pipeline import GuidancePipeline

    torch.manual_seed(0)
    i2t = ImageToTextMapper.for_models(encoder, sd.text_encoder, 20, hidden)
    tr = TextRestorationMapper.for_models(sd.text_encoder, 20, hidden)
    for mapper in (i2t, tr):
        mapper.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return GuidancePipeline(sd, encoder, i2t, tr)


def _copy_pipeline(pipeline, dtype: torch.dtype):
    """The same weights in another dtype (the GPU baseline runs fp16 beside our bf16)."""
    from textualdeg.guidance.models import StableDiffusionModels
    from textualdeg.guidance.pipeline import GuidancePipeline

    sd = pipeline.sd
    parts = {name: copy.deepcopy(getattr(sd, name)).to(dtype) for name in ("unet", "vae", "text_encoder")}
    sd_copy = StableDiffusionModels(tokenizer=sd.tokenizer, scheduler=sd.scheduler, **parts)
    return GuidancePipeline(sd_copy, copy.deepcopy(pipeline.image_encoder).to(dtype),
                            copy.deepcopy(pipeline.i2t_mapper).to(dtype), copy.deepcopy(pipeline.tr_mapper).to(dtype))


def generation(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, sd, encoder, hidden: int,
               meter: Meter) -> list[Row]:
    """Stage 3: one batch of guidance images, ours (and the authors' way unless ``--no-baseline``)."""
    from textualdeg.guidance.memory import attention_backend

    pipeline = _pipeline(sd, encoder, hidden, device, dtype)
    batch = args.batch or (8 if device.type == "cuda" else 1)
    steps = args.steps or (20 if device.type == "cuda" else 2)
    images = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0)).to(device)
    seeds = list(range(batch))
    call = {"num_inference_steps": steps, "guidance_scale": 5.0, "resolution": args.resolution}

    def ours() -> torch.Tensor:
        with torch.no_grad(), attention_backend(args.attention):
            return pipeline(images, seeds, batched_cfg=True, **call)

    what = f"ours: batch {batch}, batched CFG, {args.attention}, {str(dtype)[6:]}, {steps} steps, {args.resolution} px"
    if args.no_baseline:
        row, _ = meter("3 gen", what, ours, images=batch, unet_evals=2 * batch * steps)
        return [row]
    theirs_dtype = torch.float16 if device.type == "cuda" else dtype
    theirs_pipeline = _copy_pipeline(pipeline, theirs_dtype) if theirs_dtype != dtype else pipeline

    def theirs() -> torch.Tensor:
        saved = install_authors_attention(theirs_pipeline.sd.unet)
        try:
            with torch.no_grad():
                return torch.cat([theirs_pipeline(images[i : i + 1], seeds[i : i + 1], batched_cfg=False, **call)
                                  for i in range(batch)])
        finally:
            theirs_pipeline.sd.unet.set_attn_processor(saved)

    what_theirs = f"theirs: batch 1 x {batch}, 2 UNet calls/step, explicit attn, {str(theirs_dtype)[6:]}"
    row_ours, row_theirs, out_ours, out_theirs = meter.compare(
        "3 gen", (what, ours), (what_theirs, theirs), images=batch, unet_evals=2 * batch * steps)
    rows = [row_ours, row_theirs]
    diff = (out_ours.float() - out_theirs.float()).abs().max().item()
    same = "equal numerics" if theirs_dtype == dtype else f"{str(dtype)[6:]} vs {str(theirs_dtype)[6:]}"
    rows.append(_ratio("3 gen", "generation speed-up, ours / theirs", row_ours, row_theirs,
                       f"{same}; max |ours - theirs| = {diff:.2e} (pixels in [0, 1])", 3.0, device))
    return rows


def _ratio(stage: str, what: str, ours: Row, theirs: Row, note: str, gpu_target: float, device: torch.device) -> Row:
    """Theirs / ours per image, with the target: ``gpu_target`` on a GPU, never slower on a CPU."""
    ratio = theirs.seconds / ours.seconds
    per_image = (theirs.seconds / max(theirs.images, 1)) / (ours.seconds / max(ours.images, 1))
    target = gpu_target if device.type == "cuda" else 1.0
    verdict = "met" if per_image >= target else "NOT met"
    row = Row(stage, what, 0.0, None, None, note=f"{per_image:.2f}x per image ({ratio:.2f}x wall), target "
              f">= {target:g}x on {device.type}: {verdict}; {note}")
    print(_format(row), flush=True)
    return row


# ---------------------------------------------------------------------------------------
# the authors' guided NAFNet, rebuilt from their arithmetic


class _AuthorsLayerNorm2d(torch.autograd.Function):
    """NAFNet's LayerNorm2d as the authors' code runs it: keeps the normalised output and the
    variance for backward (ours keeps only the input and recomputes)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mu = x.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (x - mu).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
        y = (x - mu) / (var + eps).sqrt()  # (B, C, H, W)
        ctx.eps = eps
        ctx.save_for_backward(y, var, weight)
        return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        y, var, weight = ctx.saved_tensors
        g = grad * weight.view(1, -1, 1, 1)
        gx = (g - y * (g * y).mean(1, keepdim=True) - g.mean(1, keepdim=True)) / (var + ctx.eps).sqrt()
        return gx, (grad * y).sum((0, 2, 3)), grad.sum((0, 2, 3)), None


def _authors_nafblock(block: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """A NAFBlock forward with the authors' LayerNorm2d (same weights)."""
    def norm(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return _AuthorsLayerNorm2d.apply(t, layer.weight, layer.bias, layer.eps)

    x = block.conv2(block.conv1(norm(block.norm1, inp)))  # (B, 2C, H, W)
    a, b = x.chunk(2, dim=1)
    x = a * b  # (B, C, H, W)
    x = block.conv3(x * block.sca(x))
    y = inp + x * block.beta
    a, b = block.conv4(norm(block.norm2, y)).chunk(2, dim=1)
    return y + block.conv5(a * b) * block.gamma


def _authors_blocks(blocks: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = _authors_nafblock(block, x)
    return x


def _authors_grid(x1: torch.Tensor, y1: torch.Tensor, diam_x: int, diam_y: int, s: int):
    """Row and column indices of every window, one window per loop iteration (their make_grid)."""
    xs = (x1 * s).view(-1, 1) + torch.arange(diam_x * s, device=x1.device).view(1, -1)  # (N*P, dx*s)
    ys = (y1 * s).view(-1, 1) + torch.arange(diam_y * s, device=y1.device).view(1, -1)  # (N*P, dy*s)
    rows, cols = [], []
    for i in range(xs.shape[0]):
        grid_y, grid_x = torch.meshgrid(ys[i], xs[i], indexing="ij")
        rows.append(grid_y.reshape(-1))
        cols.append(grid_x.reshape(-1))
    return torch.cat(rows), torch.cat(cols)


def _authors_transfer(feat: torch.Tensor, index: torch.Tensor, conf: torch.Tensor, s: int) -> torch.Tensor:
    """unfold (kernel 3s, stride s) -> pick the matched patches -> fold (padding s) / fold(ones) x confidence."""
    k = 3 * s
    unfolded = F.unfold(feat, kernel_size=k, stride=s)  # (N*P, C*k*k, L)
    picked = torch.gather(unfolded, 2, index.view(index.shape[0], 1, -1).expand(-1, unfolded.shape[1], -1))
    hi, wi = index.shape[1:]
    size = (hi * s, wi * s)
    out = F.fold(picked, output_size=size, kernel_size=k, padding=s, stride=s)  # (N*P, C, hi*s, wi*s)
    divisor = F.fold(torch.ones_like(picked), output_size=size, kernel_size=k, padding=s, stride=s)
    return out / divisor * F.interpolate(conf, size=size, mode="bilinear")


def authors_guided_nafnet(model: nn.Module, inp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Their ``NAFNetRefFusion.forward`` rebuilt from their arithmetic, on ``model``'s weights.

    Args:
        model: a ``GuidedNAFNet`` with ``reference_mode: masa`` and ``psize`` 3.
        inp: (N, C, H, W) input in [0, 1]; H, W multiples of ``model.pad_multiple``.
        ref: (N, C, Hr, Wr) guidance, same constraint, a window no larger than it (D55).

    Returns:
        (N, C, H, W), equal to ``model(inp, ref)`` up to float rounding.
    """
    matcher, k = model.masa_matcher, model.lr_block_size
    feats_lq, feats_ref = model.masa_enc(inp), model.masa_enc(ref)
    deep, deep_ref = feats_lq[-1], feats_ref[-1]
    n, c, h, w = deep.shape
    hr, wr = deep_ref.shape[2:]
    py, px = h // k, w // k
    diam_y, diam_x = matcher.diameters((h, w), (hr, wr))
    # coarse: the dilated 3x3 samples around each block centre against the whole reference
    blocks = F.unfold(F.pad(deep, (1, 1, 1, 1), mode="replicate"), kernel_size=k + 2, stride=k)
    blocks = blocks.view(n, c, k + 2, k + 2, py * px).permute(0, 4, 1, 2, 3)  # (N, P, C, k+2, k+2)
    centre, corr = (k + 2) // 2, 0
    for d in matcher.dilations:
        lq_p = blocks[:, :, :, centre - d : centre + d + 1 : d, centre - d : centre + d + 1 : d]
        lq_p = F.normalize(lq_p.reshape(n, py * px, c * 9), dim=2)  # (N, P, C*9)
        ref_p = F.normalize(F.unfold(deep_ref, kernel_size=3, padding=d, dilation=d), dim=1)  # (N, C*9, Hr*Wr)
        corr = corr + torch.bmm(lq_p, ref_p)  # (N, P, Hr*Wr)
    best = torch.topk(corr, 1, dim=-1).indices[:, :, 0]  # (N, P)
    # their window corners: 0/1 masks instead of clamps, x then y
    x1, y1 = best % wr - diam_x // 2 - 1, best // wr - diam_y // 2 - 1
    x2, y2 = best % wr + diam_x // 2 + 1, best // wr + diam_y // 2 + 1
    m = (x1 < 0).long()
    x1 = x1 * (1 - m)
    x2 = x2 * (1 - m) + (diam_x + 1) * m
    m = (x2 > wr - 1).long()
    x2 = x2 * (1 - m) + (wr - 1) * m
    x1 = x1 * (1 - m) + (x2 - (diam_x + 1)) * m
    m = (y1 < 0).long()
    y1 = y1 * (1 - m)
    y2 = y2 * (1 - m) + (diam_y + 1) * m
    m = (y2 > hr - 1).long()
    y2 = y2 * (1 - m) + (hr - 1) * m
    y1 = y1 * (1 - m) + (y2 - (diam_y + 1)) * m
    wy, wx = diam_y + 2, diam_x + 2
    levels = len(feats_ref)
    windows = []
    for level, feat in enumerate(reversed(feats_ref)):  # deepest first, as their x1, x2, ..., x16
        s = 2**level
        rows, cols = _authors_grid(x1, y1, wx, wy, s)
        batch = torch.arange(n, device=inp.device).repeat_interleave(py * px * wy * s * wx * s)
        win = feat[batch, :, rows, cols].view(n * py * px, wy * s, wx * s, -1).permute(0, 3, 1, 2).contiguous()
        windows.append(win)  # (N*P, C_l, wy*s, wx*s)
    # fine: every input 3x3 patch against every 3x3 patch of its window
    lq_blocks = blocks.reshape(n * py * px, c, k + 2, k + 2)
    lq_p = F.normalize(F.unfold(lq_blocks, kernel_size=3).permute(0, 2, 1), dim=2)  # (N*P, k*k, C*9)
    ref_p = F.normalize(F.unfold(windows[0], kernel_size=3), dim=1)  # (N*P, C*9, (wy-2)*(wx-2))
    conf, idx = torch.topk(torch.bmm(lq_p, ref_p).view(n * py * px, k, k, -1), 1, dim=-1)
    index, conf = idx[..., 0], conf[..., 0].unsqueeze(1)  # (N*P, k, k), (N*P, 1, k, k)
    warped = []
    for level, win in enumerate(windows):
        s = 2**level
        out = _authors_transfer(win, index, conf, s)  # (N*P, C_l, k*s, k*s)
        cl = out.shape[1]
        out = out.view(n, py, px, cl, k * s, k * s).permute(0, 3, 1, 4, 2, 5).reshape(n, cl, h * s, w * s)
        warped.append(out)
    warped = warped[::-1]  # finest first
    # the backbone, fusing cat([x, warped]) -> blocks -> first C channels at every level
    x = model.intro(inp)
    skips = []
    for level, (encoder, down) in enumerate(zip(model.encoders, model.downs)):
        x = _authors_blocks(model.masa_blk_enc[level], torch.cat([x, warped[level]], 1))[:, : x.shape[1]]
        x = _authors_blocks(encoder, x)
        skips.append(x)
        x = down(x)
    x = _authors_blocks(model.masa_blk_middle[0], torch.cat([x, warped[levels - 1]], 1))[:, : x.shape[1]]
    x = _authors_blocks(model.middle_blks, x)
    for decoder, up, skip in zip(model.decoders, model.ups, reversed(skips)):
        x = _authors_blocks(decoder, up(x) + skip)
    return model.ending(x) + inp


# ---------------------------------------------------------------------------------------
# stages 4 and 5


def _network_spec(opt, tiny: bool) -> dict:
    spec = opt.network_g.to_dict()
    if not tiny:
        return spec
    from backbones import TINY_CONFIGS

    from textualdeg.registry import ARCH_REGISTRY

    cls_name = ARCH_REGISTRY.get(spec["type"]).__name__
    keep = {key: spec[key] for key in ("type", "img_channel", "inp_channels", "out_channels", "reference_mode",
                                       "decoder", "mode") if key in spec}
    return {**TINY_CONFIGS[cls_name], **keep, **_TINY_REFERENCE}


def build_network(spec: dict, device: torch.device) -> nn.Module:
    """``network_g`` built on the meta device, allocated and initialised on ``device``."""
    from textualdeg.guidance.real_configs import materialize, meta_init
    from textualdeg.restoration.network import build_network as build

    with meta_init(device):
        model = build(spec)
    return materialize(model, device) if device.type != "meta" else model


def _crop_and_batch(opt, args: argparse.Namespace, device: torch.device) -> tuple[int, int]:
    ds = opt.datasets["train"].to_dict()
    crop, batch = ds["gt_size"], ds["batch_size_per_gpu"]
    if ds.get("gt_sizes"):  # progressive: the last (largest) stage
        crop, batch = ds["gt_sizes"][-1], ds["mini_batch_sizes"][-1]
    if args.tiny:
        crop = 0  # the network's smallest: its pad_multiple (restoration_steps)
    if args.crop:
        crop = args.crop
    if device.type != "cuda":
        batch = 1
    if args.batch4:
        batch = args.batch4
    return crop, batch


def restoration_steps(args: argparse.Namespace, device: torch.device, meter: Meter) -> list[Row]:
    """Stage 4: per option file, the DINOv2 window selection (``ref_crop: dino``) and one training step."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu")
    rows: list[Row] = []
    selector: list = []  # built once, on first use
    for name in args.options or STAGE4_FILES:
        rows += _restoration_step(name, args, device, meter, accelerator, selector)
    return rows


def _restoration_step(name: str, args: argparse.Namespace, device: torch.device, meter: Meter, accelerator: Any,
                      selector: list) -> list[Row]:
    """One option file of stage 4 (its model and optimizer are freed on return)."""
    from textualdeg.options import load_options
    from textualdeg.registry import LOSS_REGISTRY
    from textualdeg.restoration.network import is_guided
    from textualdeg.restoration.schema import RESTORATION_SCHEMA
    from textualdeg.restoration.train import build_optimizer, training_step

    opt = load_options(OPTIONS / "train_restoration" / name, RESTORATION_SCHEMA)
    spec = _network_spec(opt, args.tiny)
    crop, batch = _crop_and_batch(opt, args, device)
    model = build_network(spec, device).train()
    crop = crop or getattr(model, "pad_multiple", 32)
    if "SFNet" in type(model).__name__:
        batch = max(batch, 2)  # its BatchNorm over the batch needs two images in training
    guided = is_guided(model)
    channels = getattr(model, "image_channels", 3)
    ref_channels = getattr(model, "ref_channels", channels)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(batch, channels, crop, crop, generator=g).to(device)
    gt = torch.rand(batch, ref_channels if channels == 6 else channels, crop, crop, generator=g).to(device)
    ref = torch.rand(batch, ref_channels, crop, crop, generator=g).to(device)
    rows = []
    if guided and opt.datasets["train"].ref_crop == "dino":
        if not selector:
            selector.append(_dino_selector(args, device))
        side = 2 * crop if args.tiny else 512  # the generated guidance: 512 x 512
        guidance = torch.rand(batch, ref_channels, side, side, generator=g).to(device)
        view = lq[:, :ref_channels] if channels != 6 else lq.view(batch, 2, 3, crop, crop).mean(1)  # dual-pixel: mean
        row, ref = meter("4 dino", f"{name[:3]} window selection, batch {batch}, {crop} in {side}",
                         lambda: selector[0](view, guidance), images=batch)
        rows.append(row)
    pixel = opt.train.pixel_opt.to_dict()
    if "vgg_weights" in pixel:
        pixel["vgg_weights"] = None  # random VGG19 (nothing read or downloaded)
    criterion = LOSS_REGISTRY.build(pixel).to(device)
    optimizer = build_optimizer(model, opt.train.optim_g)
    batch_dict = {"lq": lq, "gt": gt, "ref": ref}
    clip = opt.train.grad_clip_norm if opt.train.use_grad_clip else None

    def step() -> dict:
        return training_step(model, batch_dict, criterion, optimizer, accelerator, guided, clip)

    count = sum(p.numel() for p in model.parameters())
    # one untimed step first: the peak is the steady state's, with the optimizer's state allocated
    row, _ = meter("4 train", f"{name[:3]} {spec['type']}, batch {batch} at {crop} px", step, images=batch,
                   note=f"{count / 1e6:.2f} M parameters", warmup=max(1, args.warmup))
    return rows + [row]


def _dino_selector(args: argparse.Namespace, device: torch.device):
    from textualdeg.guidance.real_configs import build_dinov2
    from textualdeg.pretrained.dinov2 import DinoFeatureExtractor
    from textualdeg.restoration.dino_window import DinoWindowSelector

    config = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2} if args.tiny else None
    model = build_dinov2(device=device, config=config)
    return DinoWindowSelector(DinoFeatureExtractor(model).to(device))


def guided_nafnet_ratio(args: argparse.Namespace, device: torch.device, meter: Meter) -> list[Row]:
    """Option 002's guided-NAFNet forward + backward: ours against the authors' arithmetic."""
    from textualdeg.options import load_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    opt = load_options(OPTIONS / "train_restoration" / GUIDED_NAFNET_FILE, RESTORATION_SCHEMA)
    crop, batch = _crop_and_batch(opt, args, device)
    # random beta/gamma (materialize: N(0, 0.02^2)), so the fusion blocks are not identities
    model = build_network(_network_spec(opt, args.tiny), device).train()
    if args.tiny:  # option 002's geometry: 3 x 3 blocks at the deepest level (their window must fit, D55)
        crop = 3 * model.pad_multiple
    g = torch.Generator().manual_seed(0)
    lq, ref, gt = (torch.rand(batch, 3, crop, crop, generator=g).to(device) for _ in range(3))

    def step(forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            out = forward()
            F.l1_loss(out, gt).backward()
            model.zero_grad(set_to_none=True)
            return out.detach()
        return run

    what = f"{GUIDED_NAFNET_FILE[:3]} GuidedNAFNet fwd+bwd, batch {batch} at {crop} px"
    ours, theirs, out_ours, out_theirs = meter.compare(
        "4 ratio", ("ours: " + what, step(lambda: model(lq, ref))),
        ("theirs (rebuilt): " + what, step(lambda: authors_guided_nafnet(model, lq, ref))), images=batch)
    diff = (out_ours - out_theirs).abs().max().item()
    return [ours, theirs, _ratio("4 ratio", "guided-NAFNet step speed-up, ours / theirs", ours, theirs,
                                 f"float32; max |ours - theirs| = {diff:.2e}", 1.5, device)]


def evaluation_image(args: argparse.Namespace, device: torch.device, meter: Meter, tmp: Path) -> list[Row]:
    """Stage 5: one 1280x720 image (GoPro's size) through ``evaluate_dataset`` with 512x512 guidance."""
    from textualdeg.evaluation import EVALUATION_SCHEMA, build_protocol, evaluate_dataset
    from textualdeg.imageio import write_image
    from textualdeg.options import load_options

    height, width = (96, 160) if args.tiny else (720, 1280)
    ref_size = 64 if args.tiny else 512
    g = torch.Generator().manual_seed(0)
    folders = {}
    for kind, (h, w) in {"lq": (height, width), "gt": (height, width), "ref": (ref_size, ref_size)}.items():
        folders[kind] = tmp / "stage5" / kind
        write_image(folders[kind] / "frame.png", torch.rand(h, w, 3, generator=g).numpy())
    overrides = {"datasets": {"test_1": {"name": "bench", "task": "paired", "dataroot_lq": str(folders["lq"]),
                                         "dataroot_gt": str(folders["gt"]), "dataroot_ref": str(folders["ref"])}},
                 "path": {"train_options": None, "pretrain_network_g": None}}
    opt = load_options(OPTIONS / "test" / STAGE5_FILE, EVALUATION_SCHEMA, overrides)
    model = build_network(_network_spec(opt, args.tiny), device).eval()
    protocol = build_protocol(opt.metrics)

    def run() -> Any:
        with torch.no_grad():
            return evaluate_dataset(model, "test_1", opt.datasets["test_1"], protocol, opt.test, device, tmp / "out")

    row, _ = meter("5 eval", f"{opt.network_g.type}, one {width}x{height} image, guidance {ref_size}", run, images=1,
                   note=f"tile {opt.test.tile}, {protocol.ssim_variant} SSIM")
    return [row]


# ---------------------------------------------------------------------------------------
# entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (the CI form)")
    parser.add_argument("--size", choices=("real", "half"), default="real",
                        help="stages 1-3: real size, or every width halved (depths and heads kept)")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4, 5], choices=[1, 2, 3, 4, 5])
    parser.add_argument("--batch", type=int, default=None,
                        help="stages 1-3 batch (default: GPU 4 for training, 8 for generation; CPU 1)")
    parser.add_argument("--batch4", type=int, default=None,
                        help="stage 4 batch (default: GPU the option file's; CPU 1)")
    parser.add_argument("--resolution", type=int, default=None, help="stages 1-3 image side (default 512; tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps of stage 3 (default GPU 20, CPU 2)")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default=None,
                        help="stages 1-3 frozen weights and autocast (default: GPU bfloat16, CPU float32)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="stages 1-2: the UNet's")
    parser.add_argument("--attention", choices=("sdpa", "math"), default="sdpa", help="stages 1-3 attention kernel")
    parser.add_argument("--options", nargs="+", default=None, metavar="FILE",
                        help=f"stage-4 option files in options/train_restoration (default: {' '.join(STAGE4_FILES)})")
    parser.add_argument("--crop", type=int, default=None, help="stage-4 crop (default: each option file's)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the authors' code paths")
    parser.add_argument("--ratio-only", action="store_true",
                        help="stage 4: only option 002's guided-NAFNet comparison, not every backbone's step")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: GPU 1, CPU 0)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed calls, the fastest counts; comparisons alternate ours and theirs "
                             "(default: GPU 3, CPU 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.tiny:
        args.device = "cpu"
    cuda = torch.device(args.device).type == "cuda"
    args.resolution = args.resolution or (64 if args.tiny else 512)
    args.warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    args.repeat = args.repeat or (3 if cuda else 1)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    return args


def main(args: argparse.Namespace) -> list[Row]:
    """Run the stages; print one table row per phase; return the rows."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # random weights would otherwise slow the CPU kernels
    dtype = _DTYPES[args.dtype]
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# torch {torch.__version__}, {device} ({desc}), {torch.get_num_threads()} threads; "
          f"{'tiny' if args.tiny else args.size} models, random weights; "
          f"{args.warmup} warm-up + {args.repeat} timed call(s) per row")
    print(HEADER)
    meter = Meter(device, args.warmup, args.repeat)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="real_size_") as tmp_name:
        tmp = Path(tmp_name)
        if any(s in args.stages for s in (1, 2, 3)):
            _reset_host_peak()
            start = time.perf_counter()
            sd, encoder, hidden = build_guidance_models(args, device, dtype, tmp)
            from textualdeg.guidance.processors import install_global_kv

            install_global_kv(sd.unet)
            build = Row("build", f"SD + CLIP, meta -> {device.type}, {args.dtype}", time.perf_counter() - start,
                        _host_peak_mib(), torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                        else None)
            print(_format(build), flush=True)
            rows.append(build)
            for stage, name in ((1, "i2t"), (2, "tr")):
                if stage in args.stages:
                    rows += mapper_step(args, device, dtype, sd, encoder, hidden, name, meter)
            if 3 in args.stages:
                rows += generation(args, device, dtype, sd, encoder, hidden, meter)
            del sd, encoder
        if 4 in args.stages:
            if not args.ratio_only:
                rows += restoration_steps(args, device, meter)
            if not args.no_baseline:
                rows += guided_nafnet_ratio(args, device, meter)
        if 5 in args.stages:
            rows += evaluation_image(args, device, meter, tmp)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(parse_args())

"""Guided restoration training (stage 4): ``train(opt)``, built on accelerate.

Reads the options of ``options/train_restoration/*.yml`` (schema:
``textualdeg.restoration.schema.RESTORATION_SCHEMA``) and runs in the diffusers order:
Accelerator with ``ProjectConfiguration`` -> logging -> seed ->
network (``build_model``) -> optimizer with its own lr for the ``masa_*`` reference/fusion
parameters (``build_optimizer``) -> lr schedule (``build_scheduler``) -> data
(``build_train_loader``) -> ``accelerator.prepare`` -> "Running training" block ->
resume from the newest complete state -> the step loop (``training_step``), with
``validate`` and checkpoints every N steps -> final weights and ``end_training``.

Every run lives in ``experiments/<name>/`` (or ``path.experiments_root``)::

    options.yml        the resolved options
    checkpoints/       net_g_<step>.safetensors, net_g_ema_<step>.safetensors (rotated with the
                       states: the last logger.keep_last_states steps), *_latest
    state/             full resumable states (textualdeg.checkpoint.StateCheckpointer)
    logs/              train.log, val_metrics.jsonl and TensorBoard (train/loss, train/lr,
                       val/psnr/<dataset>)
    visualization/     <dataset>/<stem>_<step>.png: input | guidance | output | target

Exact resume: the full state (weights, optimizer, scheduler, EMA, per-rank RNG, step and
data position) goes through ``accelerator.save_state``; training-sample randomness is a
function of (``manual_seed``, epoch, sample index) only, so a resumed run, or a run on
another number of processes with the same global batch, sees the same samples.

Differences from the authors' driver (D18-D27 in docs/official_differences.md): any launcher
(``accelerate launch``, ``torchrun``, ``python``); ``param_fix_iterations`` is read and
freezes ``param_fix_group`` for that many steps (the backbone, so that only the ``masa_*``
parameters train, or the ``masa_*`` parameters, the authors' intent) by dropping their
gradients before the optimizer step (no
``requires_grad`` toggling under DDP); floors of the cyclic cosine are capped at each
group's lr (D41); EMA and the whole training state resume; validation writes side-by-side
images under the run folder, never into the working directory.

Usage::

    python scripts/train/train_restoration.py -opt options/train_restoration/tiny_cpu.yml
    torchrun --nproc_per_node 4 scripts/train/train_restoration.py -opt FILE
    accelerate launch --config_file configs/accelerate/4_gpu.yaml scripts/train/train_restoration.py -opt FILE

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
from textualdeg.data.sampling import DataPosition, EpochSampler, sample_seed
from textualdeg.checkpoint import StateCheckpointer, load_network_weights, save_weights
from textualdeg.data import ProgressiveSchedule, crop_batch
from textualdeg.data import build_dataset as data_build_dataset
from textualdeg.imageio import write_image
from textualdeg.log import get_logger, setup_logging
from textualdeg.metrics import Protocol, psnr, ssim
from textualdeg.options import Options, save_options
from textualdeg.registry import ARCH_REGISTRY, LOSS_REGISTRY
from textualdeg.restoration.ema import ModelEMA
from textualdeg.restoration.losses import pixel_loss
from textualdeg.restoration.stage_losses import StageLoss
from textualdeg.restoration.lr_schedulers import build_scheduler as _build_lr_scheduler

logger = get_logger(__name__)

#: Prefix of the reference-encoder and fusion parameters (the authors' names).
REF_PREFIX = "masa_"
_PSNR_TYPES = ("calculate_psnr", "psnr")
_SSIM_TYPES = ("calculate_ssim", "ssim")


# ---------------------------------------------------------------------------------------
# run folder, accelerator


def experiment_dir(opt: Options) -> Path:
    """``path.experiments_root`` or ``experiments/<name>`` (relative to the working dir)."""
    root = opt.path.experiments_root
    return Path(root) if root else Path("experiments") / opt.name


def build_accelerator(opt: Options, exp_dir: Path):
    """An ``Accelerator`` logging to ``exp_dir/logs`` (TensorBoard when enabled).

    Multi-process runs without a GPU use gloo on CPU (no need for ACCELERATE_USE_CPU=1):
    without it accelerate would silently run every process alone.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    trackers = []
    if opt.logger.use_tb_logger:
        trackers.append("tensorboard")
    if opt.logger.wandb.project:
        trackers.append("wandb")
    accelerator = Accelerator(
        cpu=world_size > 1 and not torch.cuda.is_available(),
        mixed_precision=opt.train.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(exp_dir), logging_dir=str(exp_dir / "logs")),
        step_scheduler_with_optimizer=False,  # our schedule counts optimizer steps, whatever the process count
    )
    if world_size > 1 and accelerator.num_processes != world_size:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but accelerate runs {accelerator.num_processes} process(es); "
            "on CPU set ACCELERATE_USE_CPU=1 (see configs/accelerate/cpu_2proc.yaml)"
        )
    return accelerator


# ---------------------------------------------------------------------------------------
# network, optimizer, schedule


def is_guided(model: nn.Module) -> bool:
    """True when ``model`` has reference/fusion (``masa_*``) parameters: ``model(x, ref)``."""
    return any(name.startswith(REF_PREFIX) for name, _ in model.named_parameters())


def build_model(opt: Options) -> nn.Module:
    """Build ``network_g`` and load ``path.pretrain_network_g`` if set.

    With ``strict_load_g: false`` (the authors' setting, used to start a guided network
    from a plain backbone checkpoint) missing keys and keys of another shape are skipped
    and counted in one log line; the fusion blocks start as identities, so the network
    then behaves like the pretrained backbone.
    """
    spec = opt.network_g.to_dict()
    if "type" not in spec:
        raise ValueError("network_g needs a 'type' (one of ARCH_REGISTRY.keys())")
    model = ARCH_REGISTRY.build(spec)
    path = opt.path.pretrain_network_g
    if path:
        load_network_weights(model, path, strict=opt.path.strict_load_g, param_key=opt.path.param_key_g)
    return model


def build_optimizer(model: nn.Module, optim_opt: Options) -> torch.optim.Optimizer:
    """AdamW (or Adam) with two groups: backbone at ``lr``, ``masa_*`` at ``ref_lr``.

    The group test is a name prefix (``masa_``), not the authors' substring test.
    Empty groups are left out; each group carries a ``name`` ("backbone" / "reference").
    """
    backbone, reference = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (reference if name.startswith(REF_PREFIX) else backbone).append(param)
    ref_lr = optim_opt.ref_lr if optim_opt.ref_lr is not None else optim_opt.lr
    groups = [
        {"params": params, "lr": lr, "name": name}
        for name, params, lr in (("backbone", backbone, optim_opt.lr), ("reference", reference, ref_lr))
        if params
    ]
    if not groups:
        raise ValueError("network_g has no trainable parameters")
    cls = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}[optim_opt.type]
    return cls(groups, lr=optim_opt.lr, betas=tuple(optim_opt.betas), eps=optim_opt.eps,
               weight_decay=optim_opt.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train_opt: Options):
    """``train.scheduler`` from SCHEDULER_REGISTRY with ``train.warmup_iter`` warm-up."""
    spec = train_opt.scheduler.to_dict()
    if "type" not in spec:
        raise ValueError("train.scheduler needs a 'type' (e.g. CosineAnnealingRestartCyclicLR)")
    return _build_lr_scheduler(optimizer, spec, warmup_iter=train_opt.warmup_iter)


# ---------------------------------------------------------------------------------------
# data


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch (CPU) for the block; restore their states after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# stream 1 (ORDER_STREAM) orders the epochs
_SAMPLE_STREAM, _PROGRESSIVE_STREAM, _CORRESPONDENCE_STREAM = 0, 2, 3





def _check_item(item: dict, index: int) -> None:
    """LQ and GT must have the same size (scale 1); the message names both files."""
    lq, gt = item["lq"], item["gt"]
    if lq.shape[-2:] != gt.shape[-2:]:
        raise ValueError(
            f"LQ/GT size mismatch for sample {index}: {item.get('lq_path', '?')} is "
            f"{tuple(lq.shape[-2:])}, {item.get('gt_path', '?')} is {tuple(gt.shape[-2:])}"
        )


class SeededDataset(Dataset):
    """Wraps a training dataset so each sample's randomness depends on (seed, epoch, index).

    Indexed with ``(epoch, index)`` pairs from ``EpochSampler``; the global python, numpy
    and torch generators are seeded for the call and restored after, so crops, flips
    and noise do not depend on the process count, the worker count or a resume.

    Args:
        dataset (Dataset): the dataset from DATASET_REGISTRY (items: ``lq``, ``gt``, ``ref``...).
        seed (int): ``manual_seed``.
        skip_bad_images (bool): on an unreadable or mismatched sample, log it and take the
            next index instead of raising.
        max_skips (int): give up after this many consecutive bad samples.
    """

    def __init__(self, dataset: Dataset, seed: int, skip_bad_images: bool = False, max_skips: int = 16) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.skip_bad_images = bool(skip_bad_images)
        self.max_skips = int(max_skips)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        errors = []
        for attempt in range(self.max_skips + 1):
            try:
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(epoch)
                with _seeded_rngs(sample_seed(_SAMPLE_STREAM, self.seed, epoch, index, attempt)):
                    item = self.dataset[index]
                _check_item(item, index)
                return item
            except (OSError, ValueError) as err:
                if not self.skip_bad_images:
                    raise
                logger.warning("skipping bad training sample %d (skip_bad_images: true): %s", index, err)
                errors.append(str(err))
                index = (index + 1) % len(self.dataset)
        raise RuntimeError(f"{len(errors)} consecutive bad training samples; last: {errors[-1]}")


def build_dataset(ds_opt: Options, phase: str, name: str, seed: int, pretrain_dino: str | None = None) -> Dataset:
    """Instantiate one ``datasets.<key>`` entry (``textualdeg.data.build_dataset``).

    Only the keys that are set are passed (unset ones keep the class defaults), plus
    ``phase`` (train / val), ``name``, ``seed`` and, for ``ref_crop: dino``,
    ``path.pretrain_dino``. A training set without ``ref_crop`` uses ``dino`` when
    ``path.pretrain_dino`` is set, as the authors' driver always did.
    """
    spec = {k: v for k, v in ds_opt.to_dict().items() if v is not None and k != "name"}
    extra: dict[str, Any] = {"phase": phase, "name": name, "seed": seed}
    if phase == "train" and pretrain_dino and "ref_crop" not in spec:
        spec["ref_crop"] = "dino"  # the authors' files: DINOv2 picks the window whenever pretrain_dino is set
    if spec.get("ref_crop") == "dino" and pretrain_dino:
        extra["pretrain_dino"] = pretrain_dino
    return data_build_dataset(spec, **extra)


def build_train_loader(opt: Options, num_processes: int) -> tuple[DataLoader, Dataset]:
    """The training DataLoader over ``SeededDataset`` with an ``EpochSampler`` (not yet prepared)."""
    ds_opt = opt.datasets["train"]
    dataset = build_dataset(ds_opt, "train", ds_opt.name or "train", opt.manual_seed, opt.path.pretrain_dino)
    batch = ds_opt.batch_size_per_gpu
    sampler = EpochSampler(len(dataset), batch * num_processes, opt.manual_seed, ds_opt.use_shuffle,
                           ds_opt.dataset_enlarge_ratio)
    loader = DataLoader(
        SeededDataset(dataset, opt.manual_seed, ds_opt.skip_bad_images),
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        num_workers=ds_opt.num_worker_per_gpu,
        pin_memory=ds_opt.pin_memory,
        persistent_workers=False,
    )
    return loader, dataset


def build_progressive(ds_opt: Options) -> ProgressiveSchedule | None:
    """Restormer progressive training from ``mini_batch_sizes``/``iters``/``gt_sizes``, or None.

    None also when the schedule is a no-op (one stage at the loader's batch and patch
    size, as in all the authors' files).
    """
    if not ds_opt.iters or not ds_opt.mini_batch_sizes or not ds_opt.gt_sizes:
        return None
    schedule = ProgressiveSchedule(ds_opt.iters, ds_opt.gt_sizes, ds_opt.mini_batch_sizes)
    if schedule.max_batch_size > ds_opt.batch_size_per_gpu or (ds_opt.gt_size and schedule.max_gt_size > ds_opt.gt_size):
        raise ValueError(
            f"datasets.train: mini_batch_sizes {list(ds_opt.mini_batch_sizes)} and gt_sizes {list(ds_opt.gt_sizes)} "
            f"must not exceed batch_size_per_gpu={ds_opt.batch_size_per_gpu} and gt_size={ds_opt.gt_size}"
        )
    trivial = set(schedule.batch_sizes) == {ds_opt.batch_size_per_gpu} and set(schedule.gt_sizes) == {ds_opt.gt_size}
    return None if trivial else schedule


def apply_progressive(batch: dict, schedule: ProgressiveSchedule | None, seed: int, step: int,
                      crop_ref: bool) -> dict:
    """Subset and crop the batch for the stage of ``step`` (0-based); the reference is subset too (D20)."""
    if schedule is None:
        return batch
    gt_size, batch_size = schedule(step + 1)  # BasicSR counts iterations from 1
    generator = torch.Generator().manual_seed(sample_seed(_PROGRESSIVE_STREAM, seed, step))
    return crop_batch(batch, gt_size, batch_size, generator=generator, crop_ref=crop_ref)


# ---------------------------------------------------------------------------------------
# one step, validation


def training_step(
    model: nn.Module,
    batch: dict,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    guided: bool,
    clip_norm: float | None,
    frozen: list[nn.Parameter] | None = None,
    correspondence_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Forward, loss, backward, clip, optimizer step; returns detached losses.

    Args:
        model: the prepared network.
        batch: ``lq``, ``gt`` (B, C, h, w) and, for guided models, ``ref`` (B, C, Hr, Wr), in [0, 1].
        criterion: the pixel loss (summed over multi-output networks), or a
            ``StageLoss`` on every stage output (``model(..., stages=True)``) and ``lq``.
        optimizer: the prepared optimizer.
        accelerator: the ``Accelerator``.
        guided: call ``model(lq, ref)`` instead of ``model(lq)``.
        clip_norm: max global gradient norm, or None.
        frozen: parameters whose gradients are dropped this step (``param_fix_group``).
        correspondence_weight: weight of the refined reference path's correspondence
            loss (the model is then called with ``clean=gt`` and returns it too).
        generator: seeded CPU generator for that loss's random moves (exact resume).

    Returns:
        ``{"loss": scalar}`` (plus ``"grad_norm"`` when clipping, ``"correspondence"``
        when that loss is on).
    """
    lq, gt = batch["lq"], batch["gt"]
    extra = {}
    # a stage loss reads every output of a multi-stage network (through forward, for DDP)
    kwargs = {"stages": True} if isinstance(criterion, StageLoss) else {}
    with accelerator.autocast():
        if guided and correspondence_weight > 0:
            preds, corr_loss = model(lq, batch["ref"], clean=gt, generator=generator, **kwargs)
            extra["correspondence"] = corr_loss.detach()
        elif guided:
            preds = model(lq, batch["ref"], **kwargs)
        else:
            preds = model(lq, **kwargs)
        loss = criterion(preds, gt, lq) if kwargs else pixel_loss(criterion, preds, gt)
        if "correspondence" in extra:
            loss = loss + correspondence_weight * corr_loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss.item()} (inputs: {batch.get('lq_path')})")
    accelerator.backward(loss)
    if frozen:
        for param in frozen:
            param.grad = None  # AdamW skips parameters without a gradient: no update, no decay
    out = {"loss": loss.detach(), **extra}
    if clip_norm is not None and accelerator.sync_gradients:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        out["grad_norm"] = accelerator.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def _metric_protocol(metric: Options) -> Protocol:
    return Protocol(channels="y" if metric.test_y_channel else "rgb", crop_border=metric.crop_border,
                    ssim_variant=metric.ssim_variant, quantize="uint8")


def side_by_side(lq: torch.Tensor, ref: torch.Tensor | None, out: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """One HWC image: input | guidance (resized to the input height) | output | target.

    Args:
        lq, out, gt: (C, H, W) in [0, 1] (the first 3 channels of a 6-channel input are shown).
        ref: (C, Hr, Wr) in [0, 1] or None (a black panel).

    Returns:
        (H, W_total, 3) float32 in [0, 1].
    """
    h = gt.shape[-2]

    def rgb(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().float().cpu().clamp(0, 1)
        return t.expand(3, -1, -1) if t.shape[0] == 1 else t[:3]

    if ref is None:
        guide = torch.zeros(3, h, h)
    else:
        width = max(1, round(ref.shape[-1] * h / ref.shape[-2]))
        guide = F.interpolate(rgb(ref)[None], size=(h, width), mode="bilinear", align_corners=False)[0]
    panels = [rgb(lq), rgb(guide), rgb(out), rgb(gt)]
    return torch.cat(panels, dim=-1).permute(1, 2, 0).numpy()  # (H, W_total, 3)


@torch.no_grad()
def validate(model: nn.Module, val_sets: dict[str, Dataset], opt: Options, step: int,
             vis_dir: Path | None, device: torch.device) -> dict[str, dict[str, float]]:
    """Score ``model`` on every validation set (batch 1, full images, full reference).

    Runs under ``torch.no_grad()`` with the global RNG states saved and restored (seeded
    validation noise must not shift training randomness), and puts ``train()`` back.

    Returns:
        dataset name -> metric name -> mean value.
    """
    was_training = model.training
    model.eval()
    guided = is_guided(model)
    metrics = opt.val.metrics
    results: dict[str, dict[str, float]] = {}
    try:
        with _seeded_rngs(opt.manual_seed):
            for name, dataset in val_sets.items():
                sums = {m: 0.0 for m in metrics}
                for i in range(len(dataset)):
                    item = dataset[i]
                    lq = item["lq"][None].to(device)
                    ref = item["ref"][None].to(device) if guided else None
                    out = _restore(model, lq, ref, opt)[0].float().clamp(0, 1).cpu()
                    pred, gt = out.permute(1, 2, 0).numpy(), item["gt"].float().permute(1, 2, 0).numpy()
                    for mname in metrics:
                        sums[mname] += _score(metrics[mname], mname, pred, gt)
                    if vis_dir is not None and opt.val.save_img and i < opt.val.max_vis_images:
                        stem = Path(str(item.get("lq_path", f"{i:04d}"))).stem
                        write_image(vis_dir / name / f"{stem}_{step}.png",
                                    side_by_side(item["lq"], item.get("ref"), out, item["gt"]))
                results[name] = {m: s / max(1, len(dataset)) for m, s in sums.items()}
    finally:
        model.train(was_training)
    return results


def _restore(model: nn.Module, lq: torch.Tensor, ref: torch.Tensor | None, opt: Options) -> torch.Tensor:
    if opt.val.tile:
        from textualdeg.restoration.inference import restore

        return restore(model, lq, ref=ref, tile=opt.val.tile, tile_overlap=opt.val.tile_overlap)
    out = model(lq, ref) if ref is not None else model(lq)
    return out[-1] if isinstance(out, (list, tuple)) else out


def _score(metric: Options, name: str, pred: np.ndarray, gt: np.ndarray) -> float:
    if metric.type in _PSNR_TYPES:
        return float(psnr(pred, gt, _metric_protocol(metric)).value)
    if metric.type in _SSIM_TYPES:
        return float(ssim(pred, gt, _metric_protocol(metric)).value)
    raise ValueError(f"val.metrics.{name}.type={metric.type!r}: expected one of {_PSNR_TYPES + _SSIM_TYPES}")


# ---------------------------------------------------------------------------------------
# checkpoints


def save_network_weights(model: nn.Module, ema: ModelEMA | None, ckpt_dir: Path, tag: str, opt: Options) -> None:
    """Main process: ``net_g_<tag>.safetensors`` (and ``net_g_ema_<tag>``), official key layout."""
    metadata = {"arch": str(opt.network_g.type), "network_g": json.dumps(opt.network_g.to_dict())}
    save_weights(model.state_dict(), ckpt_dir / f"net_g_{tag}.safetensors", metadata=metadata)
    if ema is not None:
        save_weights(ema.module.state_dict(), ckpt_dir / f"net_g_ema_{tag}.safetensors", metadata=metadata)


def _frozen_parameters(model: nn.Module, steps: int, group: str) -> list[nn.Parameter]:
    """The parameters to freeze during the first ``steps`` steps (may be empty).

    ``group`` is ``backbone`` (everything but ``masa_*``: only the reference branch and
    fusion train) or ``reference`` (the ``masa_*`` parameters: only the backbone trains,
    the authors' intent; their code never read the key).
    """
    if steps <= 0:
        return []
    if not is_guided(model):
        raise ValueError(
            f"train.param_fix_iterations={steps} freezes the {group} of a guided network, but network_g has no "
            f"masa_* (reference/fusion) parameters; set it to 0"
        )
    in_reference = group == "reference"
    return [p for name, p in model.named_parameters()
            if name.startswith(REF_PREFIX) == in_reference and p.requires_grad]


def _check_correspondence(model: nn.Module, weight: float) -> None:
    """``train.correspondence_opt.loss_weight > 0`` needs a guided network in refined mode."""
    if weight > 0 and getattr(model, "reference_mode", None) != "refined":
        raise ValueError(
            f"train.correspondence_opt.loss_weight={weight} needs a guided network with "
            f"network_g.reference_mode: refined (got {type(model).__name__}, reference_mode="
            f"{getattr(model, 'reference_mode', None)!r}); set the weight to 0"
        )


def _log_running_block(opt: Options, accelerator: Any, dataset: Dataset, loader: DataLoader,
                       model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    n_ref = sum(p.numel() for n, p in model.named_parameters() if n.startswith(REF_PREFIX))
    ds_opt = opt.datasets["train"]
    total_batch = ds_opt.batch_size_per_gpu * accelerator.num_processes
    epochs = math.ceil(opt.train.total_iter / max(1, len(loader)))
    logger.info("***** Running training *****")
    logger.info("  network %s: %d parameters (%d masa_*)", opt.network_g.type, n_params, n_ref)
    logger.info("  training samples = %d, batches per epoch = %d, epochs = %d", len(dataset), len(loader), epochs)
    logger.info("  batch per process = %d, processes = %d, total batch = %d",
                ds_opt.batch_size_per_gpu, accelerator.num_processes, total_batch)
    logger.info("  total steps = %d, lr = %s, %s frozen for %d steps", opt.train.total_iter,
                {g["name"]: g["initial_lr"] for g in optimizer.param_groups}, opt.train.param_fix_group,
                opt.train.param_fix_iterations)


# ---------------------------------------------------------------------------------------
# the loop


def train(opt: Options) -> Path:
    """Train ``network_g`` as ``opt`` says; resumable; returns the run folder.

    Args:
        opt: options validated by ``RESTORATION_SCHEMA``.

    Returns:
        ``experiments/<name>`` (or ``path.experiments_root``).
    """
    from accelerate.utils import set_seed

    if opt.train.mixing_augs.mixup:
        raise ValueError("train.mixing_augs.mixup=true is not supported (the authors never enabled it)")
    if "train" not in opt.datasets:
        raise ValueError(f"datasets needs a 'train' entry; got {sorted(opt.datasets)}")
    exp_dir = experiment_dir(opt)
    accelerator = build_accelerator(opt, exp_dir)
    setup_logging(exp_dir / "logs" / "train.log", is_main_process=accelerator.is_main_process)
    set_seed(opt.manual_seed)
    if accelerator.is_main_process:
        save_options(opt, exp_dir / "options.yml")

    model = build_model(opt)
    optimizer = build_optimizer(model, opt.train.optim_g)
    scheduler = build_scheduler(optimizer, opt.train)
    criterion = LOSS_REGISTRY.build(opt.train.pixel_opt.to_dict())
    loader, train_set = build_train_loader(opt, accelerator.num_processes)
    val_sets = {opt.datasets[k].name or k: build_dataset(opt.datasets[k], "val", opt.datasets[k].name or k,
                                                         opt.manual_seed)
                for k in opt.datasets if k.startswith("val")}
    ema = ModelEMA(model, opt.train.ema_decay) if opt.train.ema_decay > 0 else None
    guided = is_guided(model)
    frozen = _frozen_parameters(model, opt.train.param_fix_iterations, opt.train.param_fix_group)
    _check_correspondence(model, opt.train.correspondence_opt.loss_weight)

    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    criterion.to(accelerator.device)
    if ema is not None:
        ema.to(accelerator.device)
    position = DataPosition()
    accelerator.init_trackers(opt.name)
    _log_running_block(opt, accelerator, train_set, loader, model, optimizer)

    # net_g_<step> / net_g_ema_<step> weight files are rotated with the states (keep_last_states)
    checkpointer = StateCheckpointer(exp_dir / "state", keep_last=opt.logger.keep_last_states,
                                     weights_dir=exp_dir / "checkpoints", weight_prefixes=("net_g", "net_g_ema"))
    checkpointer.register("position", position)
    if ema is not None:
        checkpointer.register("ema", ema)
    step = checkpointer.start_step(accelerator, opt.path.resume_state, opt.path.auto_resume)
    try:
        _run_loop(opt, accelerator, model, optimizer, scheduler, loader, criterion, ema, position,
                  checkpointer, val_sets, guided, frozen, exp_dir, step)
    finally:
        accelerator.end_training()
    return exp_dir


def _run_loop(opt, accelerator, model, optimizer, scheduler, loader, criterion, ema, position,
              checkpointer, val_sets, guided, frozen, exp_dir, step) -> None:
    """The step loop: epochs, data position, logging, checkpoints and validation."""
    from accelerate import skip_first_batches
    from tqdm.auto import tqdm

    total, t_opt, log_opt = opt.train.total_iter, opt.train, opt.logger
    clip = t_opt.grad_clip_norm if t_opt.use_grad_clip else None
    ds_opt = opt.datasets["train"]
    schedule = build_progressive(ds_opt)
    progress = tqdm(total=total, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    running, running_n, last = torch.zeros((), device=accelerator.device), 0, {}
    running_corr = torch.zeros((), device=accelerator.device)  # correspondence loss (refined path)
    while step < total:
        loader.set_epoch(position.epoch)
        epoch_loader = skip_first_batches(loader, position.batches) if position.batches else loader
        for batch in epoch_loader:
            batch = apply_progressive(batch, schedule, opt.manual_seed, step, ds_opt.ref_crop == "dino")
            moves = torch.Generator().manual_seed(sample_seed(_CORRESPONDENCE_STREAM, opt.manual_seed, step))
            out = training_step(model, batch, criterion, optimizer, accelerator, guided, clip,
                                frozen if step < t_opt.param_fix_iterations else None,
                                t_opt.correspondence_opt.loss_weight, moves)
            scheduler.step()
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            step += 1
            position.batches += 1
            running, running_n = running + out["loss"], running_n + 1
            if "correspondence" in out:
                running_corr = running_corr + out["correspondence"]
            progress.update(1)
            if accelerator.is_local_main_process:
                progress.set_postfix(loss=f"{out['loss'].item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % log_opt.print_freq == 0 or step == total:
                corr = running_corr / running_n if t_opt.correspondence_opt.loss_weight > 0 else None
                last = _log_train(accelerator, running / running_n, scheduler, step, corr)
                running, running_n, running_corr = torch.zeros_like(running), 0, torch.zeros_like(running_corr)
            _maybe_save_and_validate(opt, accelerator, model, ema, checkpointer, val_sets, exp_dir, step)
            if step >= total:
                break
        else:
            position.epoch, position.batches = position.epoch + 1, 0
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_network_weights(accelerator.unwrap_model(model), ema, exp_dir / "checkpoints", "latest", opt)
    logger.info("training finished at step %d%s", step, f" (loss {last.get('train/loss', float('nan')):.4f})" if last else "")


def _log_train(accelerator, mean_loss: torch.Tensor, scheduler, step: int,
               mean_correspondence: torch.Tensor | None = None) -> dict[str, float]:
    """Log the mean total loss (and the unweighted correspondence loss, when on) and the lrs."""
    loss = accelerator.reduce(mean_loss.detach().clone(), reduction="mean").item()
    lrs = scheduler.get_last_lr()
    values = {"train/loss": loss, "train/lr": float(lrs[0])}
    if len(lrs) > 1:
        values["train/lr_ref"] = float(lrs[1])
    extra = ""
    if mean_correspondence is not None:
        values["train/correspondence"] = accelerator.reduce(mean_correspondence.clone(), reduction="mean").item()
        extra = f", correspondence {values['train/correspondence']:.4f}"
    accelerator.log(values, step=step)
    logger.info("step %d: loss %.5f%s, lr %s", step, loss, extra, ", ".join(f"{lr:.3e}" for lr in lrs))
    return values


def _maybe_save_and_validate(opt, accelerator, model, ema, checkpointer, val_sets, exp_dir, step) -> None:
    """Checkpoint every ``save_checkpoint_freq`` steps and validate every ``val_freq`` (and at the end)."""
    last = step == opt.train.total_iter
    if step % opt.logger.save_checkpoint_freq == 0 or last:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_network_weights(accelerator.unwrap_model(model), ema, exp_dir / "checkpoints", str(step), opt)
        checkpointer.save(accelerator, step)
    if val_sets and (step % opt.val.val_freq == 0 or last):
        if accelerator.is_main_process:
            net = ema.module if ema is not None and opt.val.use_ema else accelerator.unwrap_model(model)
            results = validate(net, val_sets, opt, step, exp_dir / "visualization", accelerator.device)
            lines = []
            for name, values in results.items():
                logger.info("validation %s at step %d: %s", name, step,
                            ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
                accelerator.log({f"val/{k}/{name}": v for k, v in values.items()}, step=step)
                lines.append(json.dumps({"step": step, "dataset": name, **values}) + "\n")
            record = exp_dir / "logs" / "val_metrics.jsonl"
            record.parent.mkdir(parents=True, exist_ok=True)
            with open(record, "a") as handle:  # one JSON line per dataset and validation
                handle.writelines(lines)
        accelerator.wait_for_everyone()


def main(argv: Sequence[str] | None = None) -> None:
    """``textualdeg train-restoration -opt FILE [--set key=value ...]``: load options, ``train``."""
    from textualdeg.options import parse_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    train(parse_options(argv, RESTORATION_SCHEMA, description="Stage 4: train a (guided) restoration network."))


__all__ = [
    "main",
    "train",
    "build_accelerator",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_dataset",
    "build_train_loader",
    "training_step",
    "validate",
    "side_by_side",
    "save_network_weights",
    "SeededDataset",
    "EpochSampler",
    "DataPosition",
    "experiment_dir",
    "is_guided",
]

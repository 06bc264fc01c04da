"""Guided restoration training (stage 4): ``train(opt)``, built on accelerate.

Reads the options of ``options/train_restoration/*.yml`` (schema:
``textualdeg.restoration.schema.RESTORATION_SCHEMA``) and runs in the diffusers order on
the engine (``textualdeg.engine.Run``): run folder, accelerator, lock, logging and seed ->
network (``build_model``) -> optimizer with its own lr for the ``masa_*`` reference/fusion
parameters (``build_optimizer``) -> lr schedule (``textualdeg.restoration.lr_schedulers``)
-> data (``build_train_loader``) -> with ``ref_crop: dino``, frozen DINOv2 on the training
device (``build_window_selector``) -> ``accelerator.prepare`` -> "Running training" block ->
trackers and resume (``Run.begin``) -> the step loop (``Run.loop`` with ``training_step``),
with ``validate`` and checkpoints every N steps -> final weights and ``end_training``.

Every run lives in ``experiments/<name>/`` (or ``path.experiments_root``)::

    options.yml        the resolved options of the newest start
    starts.jsonl       every (re)start: the state it resumed and why; starts/options_<n>.yml
    run.lock           held by the running process (a second run on the folder is refused)
    checkpoints/       net_g_<step>.safetensors, net_g_ema_<step>.safetensors (rotated with the
                       states: the last logger.keep_last_states steps), *_latest
    state/             full resumable states (textualdeg.checkpoint.StateCheckpointer)
    logs/              train.log, val_metrics.jsonl and TensorBoard (train/loss, train/lr,
                       train/lr_reference, val/psnr/<dataset>; the options as hparams)
    visualization/     <dataset>/<stem>_<step>.png: input | guidance | output | target

Exact resume: the full state (weights, optimizer, scheduler, EMA, per-rank RNG, step and
data position) goes through ``accelerator.save_state``; training-sample randomness is a
function of (``manual_seed``, epoch, sample index) only, so a resumed run, or a run on
another number of processes with the same global batch, sees the same samples.

Differences from the authors' driver (D18-D27 in docs/official_differences.md): any launcher
(``accelerate launch``, ``torchrun``, ``python``); ``param_fix_iterations`` is read and
freezes ``param_fix_group`` for that many steps (the backbone, so that only the ``masa_*``
parameters train, or the ``masa_*`` parameters, the authors' intent) by taking it out of
autograd (``FreezeWindow``); memory options (``train.activation_checkpointing``, bf16
``train.mixed_precision``, ``train.micro_batches`` for gradient accumulation; docs/memory.md)
let the authors' batches fit; floors of the cyclic cosine are capped at each
group's lr (D41); EMA and the whole training state resume; validation writes side-by-side
images under the run folder, never into the working directory, and is sharded over the
processes (each scores its images on its device; the scores are gathered, D27).

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
from textualdeg.checkpoint import save_weights
from textualdeg.data import DINO_KEYS, ProgressiveSchedule, build_dataset, collate_guided, crop_batch
from textualdeg.engine import Run, Schedule, StepFn, ValidateFn, build_trackers
from textualdeg.imageio import write_image
from textualdeg.log import get_logger
from textualdeg.metrics import Protocol, metric_kind, protocol_from_basicsr, score
from textualdeg.options import Options
from textualdeg.registry import LOSS_REGISTRY
from textualdeg.restoration.dino_window import DinoWindowSelector, select_reference_windows
from textualdeg.restoration.archs.memory import apply_activation_checkpointing, memory_advice
from textualdeg.restoration.ema import ModelEMA
from textualdeg.restoration.inference import restore_tensor
from textualdeg.restoration.losses import pixel_loss
from textualdeg.restoration.micro_batches import split_batch
from textualdeg.daclip.conditions import embed_inputs, load_condition_embedder
from textualdeg.restoration.network import REF_PREFIX, ConditionedNetwork, build_network, is_guided, takes_instruction
from textualdeg.restoration.stage_losses import StageLoss
from textualdeg.restoration.lr_schedulers import build_scheduler

logger = get_logger(__name__)


# ---------------------------------------------------------------------------------------
# network, optimizer


def build_model(opt: Options) -> nn.Module:
    """Build ``network_g`` and load ``path.pretrain_network_g`` if set.

    Through ``textualdeg.restoration.network.build_network``, as evaluation and
    ``textualdeg restore``, with ``path.strict_load_g`` and ``path.param_key_g``
    (``strict_load_g: false`` starts a guided network from a plain backbone checkpoint).
    """
    return build_network(opt.network_g, opt.path.pretrain_network_g, strict=opt.path.strict_load_g,
                         param_key=opt.path.param_key_g)


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


def build_restoration_dataset(ds_opt: Options, phase: str, name: str, seed: int,
                              pretrain_dino: str | None = None) -> Dataset:
    """Instantiate one ``datasets.<key>`` entry of a stage-4 option file (``textualdeg.data.build_dataset``).

    Only the keys that are set are passed (unset ones keep the class defaults), plus
    ``phase`` (train / val), ``name`` and ``seed``. A training set without ``ref_crop``
    uses ``dino`` when ``pretrain_dino`` (``path.pretrain_dino``) is set, as the authors'
    driver always did; the dataset then passes whole references and the training step
    chooses the windows (``build_window_selector``). No model is given to the dataset.
    """
    spec = {k: v for k, v in ds_opt.to_dict().items() if v is not None and k != "name"}
    if phase == "train" and pretrain_dino and "ref_crop" not in spec:
        spec["ref_crop"] = "dino"  # the authors' files: DINOv2 picks the window whenever pretrain_dino is set
    return build_dataset(spec, phase=phase, name=name, seed=seed)


def build_train_loader(opt: Options, num_processes: int,
                       instruction_tasks: Sequence[str] | None = None) -> tuple[DataLoader, Dataset]:
    """The training DataLoader over ``SeededDataset`` with an ``EpochSampler`` (not yet prepared).

    Batches are collated by ``textualdeg.data.collate_guided``: with ``ref_crop: dino``
    the whole references (a list when their sizes differ) and the ``DINO_KEYS`` for the
    window choice in the step; the workers hold no model. With ``instruction_tasks`` (a
    text-prompted network) every item also gets an ``instruction`` sentence
    (``textualdeg.data.instructions.WithInstructions``).
    """
    ds_opt = opt.datasets["train"]
    dataset = build_restoration_dataset(ds_opt, "train", ds_opt.name or "train", opt.manual_seed,
                                        opt.path.pretrain_dino)
    if instruction_tasks is not None:
        from textualdeg.data.instructions import WithInstructions
        from textualdeg.instruction.phrasings import instruction_split

        split = instruction_split(instruction_tasks)
        dataset = WithInstructions(dataset, {task: split.sentences(task) for task in split.tasks}, opt.manual_seed,
                                   fixed=ds_opt.instruction)
    batch = ds_opt.batch_size_per_gpu
    sampler = EpochSampler(len(dataset), batch * num_processes, opt.manual_seed, ds_opt.use_shuffle,
                           ds_opt.dataset_enlarge_ratio)
    loader = DataLoader(
        SeededDataset(dataset, opt.manual_seed, ds_opt.skip_bad_images),
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_guided,
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


def apply_progressive(batch: dict, schedule: ProgressiveSchedule | None, seed: int, step: int) -> dict:
    """Subset and crop the batch for the stage of ``step`` (0-based); the reference is subset too (D20).

    References are never cropped here: they are whole (``resize``, ``full``, or ``dino``,
    whose windows ``select_reference_windows`` chooses afterwards for the final LQ crop).
    """
    if schedule is None:
        return batch
    gt_size, batch_size = schedule(step + 1)  # BasicSR counts iterations from 1
    generator = torch.Generator().manual_seed(sample_seed(_PROGRESSIVE_STREAM, seed, step))
    return crop_batch(batch, gt_size, batch_size, generator=generator)


def build_window_selector(opt: Options, device: torch.device, mixed_precision: str,
                          guided: bool) -> DinoWindowSelector | None:
    """The DINOv2 window selector of a ``ref_crop: dino`` run, or None.

    Built once per run on the training device, frozen and in eval mode; it is not part
    of the model, the optimizer or the saved state. DINOv2 runs in bf16/fp16 on a GPU
    when ``train.mixed_precision`` says so, in float32 otherwise. None when the training
    set does not use ``dino`` (``datasets.train.ref_crop``, or unset with
    ``path.pretrain_dino`` set) or the network takes no guidance.

    Raises:
        ValueError: ``ref_crop: dino`` without ``path.pretrain_dino``.
    """
    ref_crop = opt.datasets["train"].ref_crop
    if ref_crop != "dino" and not (ref_crop is None and opt.path.pretrain_dino):
        return None
    if not opt.path.pretrain_dino:
        raise ValueError("datasets.train.ref_crop=dino needs path.pretrain_dino (a DINOv2 folder or "
                         "torch-hub checkpoint)")
    if not guided:
        return None
    dtype = torch.float32
    if torch.device(device).type != "cpu":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(mixed_precision), torch.float32)
    selector = DinoWindowSelector.from_pretrained(opt.path.pretrain_dino, device=device, dtype=dtype)
    logger.info("DINOv2 window selection (ref_crop: dino) in the training step on %s, %s", device, dtype)
    return selector


def build_instruction_embedder(opt: Options, model: nn.Module, device: torch.device) -> Any:
    """The frozen instruction encoder of a text-prompted network (``path.instruction_encoder``), else None.

    Raises:
        ValueError: a text-prompted network without ``path.instruction_encoder``, or an
            encoder whose embedding width is not the network's ``text_dim``.
    """
    if not takes_instruction(model):
        return None
    from textualdeg.instruction.guidance import InstructionEmbedder

    embedder = InstructionEmbedder.from_pretrained(opt.path.instruction_encoder, device)
    width, text_dim = embedder.encoder.embedding_dim, getattr(model, "text_dim", None)
    if text_dim is not None and width != text_dim:
        raise ValueError(f"path.instruction_encoder={opt.path.instruction_encoder} embeds to width {width}, but "
                         f"network_g.text_dim is {text_dim}")
    return embedder


def val_instruction_embeddings(opt: Options, embedder: Any) -> dict[str, torch.Tensor] | None:
    """Validation set name -> the (H,) embedding of its ``instruction`` (text-prompted networks), else None.

    Raises:
        ValueError: a validation set without ``instruction`` (the key to set is named).
    """
    if embedder is None:
        return None
    out = {}
    for key in (k for k in opt.datasets if k.startswith("val")):
        ds_opt = opt.datasets[key]
        if not ds_opt.instruction:
            raise ValueError(f"datasets.{key}.instruction is required: {opt.network_g.type} restores as an "
                             f"instruction says (e.g. 'I desire to remove rain from the image.')")
        out[ds_opt.name or key] = embedder([ds_opt.instruction])[0]
        logger.info("validation %s: instruction %r (read as %s)", ds_opt.name or key, ds_opt.instruction,
                    embedder.predict(ds_opt.instruction))
    return out


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
    correspondence_weight: float = 0.0,
    generator: torch.Generator | None = None,
    micro_batches: int = 1,
) -> dict[str, torch.Tensor]:
    """Forward, loss, backward (per micro-batch), clip, optimizer step; returns detached losses.

    Args:
        model: the prepared network.
        batch: ``lq``, ``gt`` (B, C, h, w) and, for guided models, ``ref`` (B, C, Hr, Wr), in [0, 1].
        criterion: the pixel loss (summed over multi-output networks), or a
            ``StageLoss`` on every stage output (``model(..., stages=True)``) and ``lq``.
        optimizer: the prepared optimizer.
        accelerator: the ``Accelerator``.
        guided: call ``model(lq, ref)`` instead of ``model(lq)``.
        clip_norm: max global gradient norm, or None.
        correspondence_weight: weight of the refined reference path's correspondence
            loss (the model is then called with ``clean=gt`` and returns it too).
        generator: seeded CPU generator for that loss's random moves (exact resume).
        micro_batches: gradient accumulation: forward/backward the batch in this many
            parts, each loss weighted by its share (``textualdeg.restoration.micro_batches``);
            gradients are synchronised across processes once, after the last part.

    Returns:
        ``{"loss": scalar}`` (plus ``"grad_norm"`` when clipping, ``"correspondence"``
        when that loss is on), means over the whole batch.

    Raises:
        torch.OutOfMemoryError: with the options that reduce memory (docs/memory.md).
    """
    parts = split_batch(batch, micro_batches)
    totals: dict[str, torch.Tensor] = {}
    for index, (part, share) in enumerate(parts):
        last = index == len(parts) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model), _memory_hint(model, accelerator):
            losses = _forward_backward(model, part, criterion, accelerator, guided, correspondence_weight,
                                       generator, share)
        for key, value in losses.items():
            totals[key] = totals[key] + value * share if key in totals else value * share
    out = dict(totals)
    if clip_norm is not None and accelerator.sync_gradients:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        out["grad_norm"] = accelerator.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def _forward_backward(model: nn.Module, batch: dict, criterion: nn.Module, accelerator: Any, guided: bool,
                      correspondence_weight: float, generator: torch.Generator | None,
                      share: float) -> dict[str, torch.Tensor]:
    """One (micro-)batch: forward, loss, ``backward(share * loss)``; returns its detached losses."""
    lq, gt = batch["lq"], batch["gt"]
    extra = {}
    # a stage loss reads every output of a multi-stage network (through forward, for DDP)
    stage_kwargs = {"stages": True} if isinstance(criterion, StageLoss) else {}
    # a text-prompted network reads the batch's instruction embeddings (B, H); one that is
    # guided as well (GuidedTextPromptIR) gets model(lq, ref, text_embedding=...)
    kwargs = {**stage_kwargs, **{key: batch[key] for key in ("text_embedding", "daclip") if key in batch}}
    with accelerator.autocast():
        if guided and correspondence_weight > 0:
            preds, corr_loss = model(lq, batch["ref"], clean=gt, generator=generator, **kwargs)
            extra["correspondence"] = corr_loss.detach()
        elif guided:
            preds = model(lq, batch["ref"], **kwargs)
        else:
            preds = model(lq, **kwargs)
        loss = criterion(preds, gt, lq) if stage_kwargs else pixel_loss(criterion, preds, gt)
        if "correspondence" in extra:
            loss = loss + correspondence_weight * corr_loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss.item()} (inputs: {batch.get('lq_path')})")
    accelerator.backward(loss * share if share != 1.0 else loss)
    return {"loss": loss.detach(), **extra}


_BATCH_ADVICE = ("datasets.train.batch_size_per_gpu and gt_size set the batch and crop; train.micro_batches: k "
                 "keeps the batch and the update but holds 1/k of its activations (gradient accumulation).")


@contextlib.contextmanager
def _memory_hint(model: nn.Module, accelerator: Any) -> Iterator[None]:
    """Re-raise an out-of-memory error with the options that would reduce memory."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        arch = type(accelerator.unwrap_model(model)).__name__
        raise torch.OutOfMemoryError(f"{error}\n\nstage 4 ran out of memory in the training step of {arch}. "
                                     f"{memory_advice(arch)} {_BATCH_ADVICE}") from error
    except RuntimeError as error:
        if "can't allocate memory" not in str(error):  # the CPU allocator's out-of-memory message
            raise
        arch = type(accelerator.unwrap_model(model)).__name__
        raise torch.OutOfMemoryError(f"{error}\n\nstage 4 ran out of host memory in the training step of "
                                     f"{arch}. {memory_advice(arch)} {_BATCH_ADVICE}") from error


def _metric_protocol(metric: Options) -> Protocol:
    """The protocol of one ``val.metrics`` entry (BasicSR keys, 8-bit outputs)."""
    return protocol_from_basicsr(crop_border=metric.crop_border, test_y_channel=metric.test_y_channel,
                                 ssim_variant=metric.ssim_variant)


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
             vis_dir: Path | None, device: torch.device, accelerator: Any = None,
             instructions: dict[str, torch.Tensor] | None = None,
             daclip: Any = None) -> dict[str, dict[str, float]]:
    """Score ``model`` on every validation set (batch 1, full images, full reference), sharded over processes.

    Each image takes the path of stage-5 evaluation: ``textualdeg.restoration.inference.restore_tensor``
    (reflect padding to the model's multiple, tiles when ``val.tile`` is set), then
    ``textualdeg.metrics.score`` on the clamped output, on ``device`` (the batched torch
    metrics in float64 on a GPU, the numpy reference on the CPU); with the same images,
    noise and weights the numbers equal those of ``textualdeg.evaluation``. Runs under
    ``torch.no_grad()`` with the global RNG states saved and restored (seeded validation
    noise must not shift training randomness), and puts ``train()`` back.

    With an ``accelerator`` of ``n`` processes, process ``r`` restores images ``r, r + n,
    ...`` of each set; the per-image scores are gathered with their indices, and every
    process returns the means over each image exactly once, summed in index order: the
    numbers of one process. Call it on every process (the gather waits for all). The
    side-by-side PNGs of the first ``val.max_vis_images`` images of a set
    (``<vis_dir>/<dataset>/<stem>_<step>.png``) are written by the process that restored them.

    Args:
        model: the network (unwrapped; eval mode is set here).
        val_sets: dataset name -> validation dataset (items ``lq``, ``gt``, ``ref``, seeded per index).
        opt: the options (``val``, ``manual_seed``).
        step: the step named in the PNG file names.
        vis_dir: the PNG folder, or None (no PNGs).
        device: where images are restored and scored.
        accelerator: the ``Accelerator`` whose processes share the images; None: all images here.
        instructions: text-prompted networks: dataset name -> its instruction embedding (H,)
            (``datasets.<key>.instruction``), given to every image of the set.
        daclip: DA-CLIP conditioned networks: the frozen ``DAClipEmbedder``; each image is
            embedded once, whole, before any tiling (``textualdeg.daclip.conditions``).

    Returns:
        dataset name -> metric name -> mean value (the same on every process).
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    was_training = model.training
    model.eval()
    guided = is_guided(model)
    scores: list[tuple[str, int, dict[str, float]]] = []  # (dataset, image index, metric -> value)
    try:
        with _seeded_rngs(opt.manual_seed):
            for name, dataset in val_sets.items():
                text = instructions[name] if instructions else None
                for i in range(rank, len(dataset), world):
                    item = dataset[i]
                    lq = item["lq"][None].to(device)  # (1, C, H, W)
                    conditions = embed_inputs(daclip, lq) if daclip is not None else None  # (1, 2, D)
                    net = model if text is None and conditions is None else ConditionedNetwork(model, text, conditions)
                    ref = item["ref"][None].to(device) if guided else None  # (1, C, Hr, Wr)
                    out, gt = _restore(net, lq, ref, opt).float(), item["gt"]  # (1, C, H, W), (C, H, W)
                    if getattr(dataset, "gray_to_rgb", False):  # gray scored as gray, as evaluation's replicate_gray
                        out, gt = out.mean(dim=1, keepdim=True), gt[:1]  # (1, 1, H, W), (1, H, W)
                    out = out.clamp(0, 1)
                    scores.append((name, i, _score(opt.val.metrics, out, gt)))
                    if vis_dir is not None and opt.val.save_img and i < opt.val.max_vis_images:
                        stem = Path(str(item.get("lq_path", f"{i:04d}"))).stem
                        write_image(vis_dir / name / f"{stem}_{step}.png",
                                    side_by_side(item["lq"], item.get("ref"), out[0], item["gt"]))
    finally:
        model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        scores = gather_object(scores)  # every process's list, concatenated in process order
    return _mean_scores(scores, {name: len(dataset) for name, dataset in val_sets.items()}, list(opt.val.metrics))


def _mean_scores(scores: Sequence[tuple[str, int, dict[str, float]]], sizes: dict[str, int],
                 metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Means over each image of each set exactly once, summed in index order (as one process sums).

    Args:
        scores: (dataset, image index, metric -> value) of every image, from every process.
        sizes: dataset name -> number of images.
        metrics: the metric names.

    Raises:
        RuntimeError: an image has no score (a shard went missing).
    """
    by_index: dict[str, dict[int, dict[str, float]]] = {name: {} for name in sizes}
    for name, index, values in scores:
        by_index[name].setdefault(index, values)  # a repeated image counts once
    means = {}
    for name, size in sizes.items():
        missing = sorted(set(range(size)) - set(by_index[name]))
        if missing:
            raise RuntimeError(f"validation of {name}: no score for images {missing[:10]} of {size}")
        means[name] = {m: sum(by_index[name][i][m] for i in range(size)) / max(1, size) for m in metrics}
    return means


def _restore(model: nn.Module, lq: torch.Tensor, ref: torch.Tensor | None, opt: Options) -> torch.Tensor:
    """(1, C, H, W) output of one validation image, through the inference path of evaluation."""
    return restore_tensor(model, lq, ref=ref, tile=opt.val.tile or None, tile_overlap=opt.val.tile_overlap)


def _score(metrics: Options, pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Every ``val.metrics`` entry of one output (1, C, H, W) against its target (C, H, W).

    Entries under the same protocol (PSNR and SSIM of one channel choice and crop) are
    scored in one ``textualdeg.metrics.score`` call, which prepares the images once.

    Returns:
        metric name -> value, in the order of ``val.metrics``.
    """
    groups: dict[Protocol, list[tuple[str, str]]] = {}  # protocol -> (metric name, psnr | ssim)
    for name in metrics:
        kind = metric_kind(metrics[name].type, f"val.metrics.{name}.type")
        groups.setdefault(_metric_protocol(metrics[name]), []).append((name, kind))
    values = {}
    for protocol, entries in groups.items():
        result = score(pred, gt, protocol, [kind for _, kind in entries])
        values.update({name: result[kind] for name, kind in entries})
    return {name: values[name] for name in metrics}


# ---------------------------------------------------------------------------------------
# checkpoints


def save_network_weights(model: nn.Module, ema: ModelEMA | None, ckpt_dir: Path, tag: str, opt: Options) -> None:
    """Main process: ``net_g_<tag>.safetensors`` (and ``net_g_ema_<tag>``), official key layout."""
    metadata = {"arch": str(opt.network_g.type), "network_g": json.dumps(opt.network_g.to_dict())}
    save_weights(model.state_dict(), ckpt_dir / f"net_g_{tag}.safetensors", metadata=metadata)
    if ema is not None:
        save_weights(ema.module.state_dict(), ckpt_dir / f"net_g_ema_{tag}.safetensors", metadata=metadata)


class FreezeWindow:
    """``train.param_fix_iterations``: ``param_fix_group`` is out of autograd for the first steps.

    ``group`` is ``backbone`` (everything but ``masa_*``: only the reference branch and
    fusion train) or ``reference`` (the ``masa_*`` parameters: only the backbone trains,
    the authors' intent; their code never read the key). ``apply(step)`` sets
    ``requires_grad`` of the group for that step: while frozen no gradient is computed
    for it (less compute and memory than computing and dropping it) and AdamW, which
    skips parameters without a gradient, neither updates nor decays it, nor creates its
    state; after the window the group trains and its Adam state starts then, as it would
    have. The flags are a function of the step, so a resumed run sets them as the
    uninterrupted one did. Under DDP the run is prepared with ``find_unused_parameters``
    (``needs_unused_parameter_search``), which lets the reducer skip the frozen group.
    """

    def __init__(self, model: nn.Module, steps: int, group: str) -> None:
        self.steps = steps
        self.params: list[nn.Parameter] = []
        if steps <= 0:
            return
        if not is_guided(model):
            raise ValueError(
                f"train.param_fix_iterations={steps} freezes the {group} of a guided network, but network_g has "
                f"no masa_* (reference/fusion) parameters; set it to 0"
            )
        in_reference = group == "reference"
        self.params = [p for name, p in model.named_parameters()
                       if name.startswith(REF_PREFIX) == in_reference and p.requires_grad]

    @property
    def needs_unused_parameter_search(self) -> bool:
        """True when some parameters will be out of autograd for some steps (DDP must know)."""
        return bool(self.params)

    def apply(self, step: int) -> None:
        """Freeze the group for optimizer step ``step`` (0-based) when ``step < steps``, else train it."""
        trainable = step >= self.steps
        for param in self.params:
            if param.requires_grad != trainable:
                param.requires_grad_(trainable)


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

    Raises:
        textualdeg.experiment.ExperimentLocked: another run is using the run folder.
    """
    if opt.train.mixing_augs.mixup:
        raise ValueError("train.mixing_augs.mixup=true is not supported (the authors never enabled it)")
    if "train" not in opt.datasets:
        raise ValueError(f"datasets needs a 'train' entry; got {sorted(opt.datasets)}")
    if opt.train.micro_batches < 1:
        raise ValueError(f"train.micro_batches must be >= 1 (1: no gradient accumulation), got "
                         f"{opt.train.micro_batches}")
    t, log = opt.train, opt.logger
    when = Schedule(t.total_iter, log.print_freq, log.save_checkpoint_freq, opt.val.val_freq, validate_at_end=True)
    trackers = build_trackers(log.use_tb_logger, log.wandb.project, log.wandb.resume_id, run_name=opt.name)
    # a freeze window takes parameters out of autograd for a while: DDP must expect that
    with Run.open(opt, log_with=trackers, find_unused_parameters=t.param_fix_iterations > 0) as run:
        accelerator = run.accelerator
        model = build_model(opt)
        apply_activation_checkpointing(model, t.activation_checkpointing)
        optimizer = build_optimizer(model, t.optim_g)
        scheduler = build_scheduler(optimizer, t.scheduler.to_dict(), warmup_iter=t.warmup_iter,
                                    total_iter=t.total_iter)
        criterion = LOSS_REGISTRY.build(t.pixel_opt.to_dict())
        embedder = build_instruction_embedder(opt, model, accelerator.device)
        daclip = load_condition_embedder(opt.path.daclip, model, accelerator.device)
        loader, train_set = build_train_loader(opt, accelerator.num_processes,
                                               embedder.tasks if embedder is not None else None)
        val_sets = {opt.datasets[k].name or k: build_restoration_dataset(opt.datasets[k], "val",
                                                                         opt.datasets[k].name or k, opt.manual_seed)
                    for k in opt.datasets if k.startswith("val")}
        val_instructions = val_instruction_embeddings(opt, embedder)
        ema = ModelEMA(model, t.ema_decay) if t.ema_decay > 0 else None
        guided = is_guided(model)
        selector = build_window_selector(opt, accelerator.device, accelerator.mixed_precision, guided)
        frozen = FreezeWindow(model, t.param_fix_iterations, t.param_fix_group)
        _check_correspondence(model, t.correspondence_opt.loss_weight)

        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        criterion.to(accelerator.device)
        if ema is not None:
            ema.to(accelerator.device)
        _log_running_block(opt, accelerator, train_set, loader, model, optimizer)
        run.begin(opt.name, keep_last=log.keep_last_states, weight_prefixes=("net_g", "net_g_ema"),
                  objects={"ema": ema} if ema is not None else None)

        ckpt_dir = run.exp_dir / "checkpoints"

        def write_weights(tag: int | str) -> None:
            save_network_weights(accelerator.unwrap_model(model), ema, ckpt_dir, str(tag), opt)

        run.loop(
            loader, scheduler, _step_function(opt, accelerator, model, optimizer, criterion, ema, guided, frozen,
                                             selector, embedder, daclip),
            when,
            validate=(_validation(opt, accelerator, model, ema, val_sets, run.exp_dir, val_instructions, daclip)
                      if val_sets else None),
            save_weights=write_weights,
        )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_weights("latest")
    return run.exp_dir


def _step_function(opt: Options, accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
                   criterion: nn.Module, ema: ModelEMA | None, guided: bool, frozen: FreezeWindow,
                   selector: DinoWindowSelector | None = None, embedder: Any = None, daclip: Any = None) -> StepFn:
    """One step of ``train``: the progressive crop, the DINOv2 windows, ``training_step``, the EMA update.

    With a ``selector`` (``ref_crop: dino``) the whole references of the batch, already on
    the device, are replaced by the windows matching the final LQ crops, batched, before
    the forward (``select_reference_windows``); the choice is deterministic, so resume and
    the process count do not change it. With an ``embedder`` (a text-prompted network) the
    batch's ``instruction`` sentences become ``text_embedding`` (B, H) on the device. With
    ``daclip`` (a DA-CLIP conditioned network) the final LQ crops are embedded, batched, on
    the device: ``daclip`` (B, 2, D).
    """
    t, ds_opt = opt.train, opt.datasets["train"]
    progressive = build_progressive(ds_opt)
    clip = t.grad_clip_norm if t.use_grad_clip else None

    def step_fn(batch: dict, step: int, micro: int) -> dict[str, torch.Tensor]:
        batch = apply_progressive(batch, progressive, opt.manual_seed, step)
        if selector is not None and DINO_KEYS[0] in batch:
            batch = select_reference_windows(selector, batch)
        if embedder is not None:
            batch = dict(batch, text_embedding=embedder(batch["instruction"]))
        if daclip is not None:
            batch = dict(batch, daclip=embed_inputs(daclip, batch["lq"]))
        moves = torch.Generator().manual_seed(sample_seed(_CORRESPONDENCE_STREAM, opt.manual_seed, step))
        frozen.apply(step)
        out = training_step(model, batch, criterion, optimizer, accelerator, guided, clip,
                            t.correspondence_opt.loss_weight, moves, t.micro_batches)
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
        return out

    return step_fn


def _validation(opt: Options, accelerator: Any, model: nn.Module, ema: ModelEMA | None,
                val_sets: dict[str, Dataset], exp_dir: Path,
                instructions: dict[str, torch.Tensor] | None = None, daclip: Any = None) -> ValidateFn:
    """``validate`` of the EMA (``val.use_ema``) or trained network: logged, one record per dataset.

    Runs on every process (the engine calls it everywhere): the images are sharded over
    the processes and the scores gathered; the main process logs and its records are written.
    """

    def validate_step(step: int) -> list[dict[str, Any]]:
        net = ema.module if ema is not None and opt.val.use_ema else accelerator.unwrap_model(model)
        results = validate(net, val_sets, opt, step, exp_dir / "visualization", accelerator.device, accelerator,
                           instructions, daclip)
        for name, values in results.items():
            logger.info("validation %s at step %d: %s", name, step,
                        ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
            accelerator.log({f"val/{k}/{name}": v for k, v in values.items()}, step=step)
        return [{"dataset": name, **values} for name, values in results.items()]

    return validate_step


def main(argv: Sequence[str] | None = None) -> None:
    """``textualdeg train-restoration -opt FILE [--set key=value ...]``: load options, ``train``."""
    from textualdeg.options import parse_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    train(parse_options(argv, RESTORATION_SCHEMA, description="Stage 4: train a (guided) restoration network."))


__all__ = [
    "main",
    "train",
    "build_model",
    "build_optimizer",
    "build_restoration_dataset",
    "build_train_loader",
    "build_window_selector",
    "training_step",
    "validate",
    "side_by_side",
    "save_network_weights",
    "SeededDataset",
    "EpochSampler",
    "DataPosition",
    "is_guided",
]

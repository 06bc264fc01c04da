"""Train DA-CLIP's controller: degradation-aware embeddings from a frozen CLIP.

The CLIP (image and text towers) is frozen (``lock_clip``); the controller (a copy of the
vision tower) and ``logit_scale`` train with the official loss, two CLIP contrastive
losses with the shared learnable temperature::

    L = clip_loss(content image features, caption text features)
      + clip_loss(degradation image features, degradation-name text features)

where ``clip_loss`` is open_clip's symmetric cross entropy over the batch (every process's
features gathered, the local ones keeping their gradient), and ``logit_scale`` is clamped
to [0, ln 100] after every step, as open_clip does. With several processes the loss is
scaled by their number before ``backward`` (DDP averages the per-process gradients, each
of which covers only that process's rows), so n processes with batch b train as one
process with batch n b; open_clip leaves the gradient n times smaller, which AdamW all
but ignores.

Runs under the training engine (``textualdeg.engine.Run``): experiment folder, resumable
full state (weights, optimizer, schedule, data position), TensorBoard, validation records
in ``logs/val_metrics.jsonl`` (degradation classification accuracy and caption retrieval
accuracy on ``datasets.val_csv``). The result, ``experiments/<name>/daclip/``, is a
``save_daclip`` folder (with the run's degradation names) that ``load_daclip`` and
``DAClipEmbedder.from_pretrained`` read.

    accelerate launch scripts/train/train_daclip.py -opt options/train_daclip/daclip_vit_b_32.yml
    python scripts/train/train_daclip.py -opt options/train_daclip/daclip_tiny_cpu.yml

DA-CLIP: "Controlling Vision-Language Models for Multi-Task Image Restoration"
(Luo et al., ICLR 2024), arXiv:2310.01018. See docs/daclip.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from textualdeg.daclip.data import DaClipCsvDataset, collate
from textualdeg.daclip.schema import DACLIP_SCHEMA
from textualdeg.data.sampling import EpochSampler, sample_seed
from textualdeg.engine import Run, Schedule, StepFn, ValidateFn, build_trackers
from textualdeg.log import get_logger
from textualdeg.options import Options, parse_options

logger = get_logger(__name__)

__all__ = ["build_model", "build_optimizer", "build_warmup_cosine_schedule", "clip_loss", "daclip_loss",
           "evaluate_daclip", "train_daclip", "main"]

OUTPUT_FOLDER = "daclip"
MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps logit_scale to [0, ln 100] after every step
_RANDOM_STREAM = 22  # the sample_seed stream of any global randomness in a step


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """open_clip's ``ClipLoss``: mean of the image->text and text->image cross entropies.

    Args:
        image_features: (N, D) normalised.
        text_features: (N, D) normalised, row i the text of image i.
        logit_scale: the exp'ed temperature (scalar).
    """
    logits = logit_scale * image_features @ text_features.t()  # (N, N)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _gather(features: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """(B, D) -> (B x processes, D): every process's features, this process's rows keeping their gradient."""
    if accelerator.num_processes == 1:
        return features
    import torch.distributed as dist

    parts = [torch.zeros_like(features) for _ in range(accelerator.num_processes)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[accelerator.process_index] = features
    return torch.cat(parts)


def daclip_loss(out: dict[str, torch.Tensor], accelerator: Any) -> dict[str, torch.Tensor]:
    """The DA-CLIP loss of one forward pass (``DAClip.forward``'s dict); returns loss and its two parts."""
    scale = out["logit_scale"]
    content = clip_loss(_gather(out["image_features"].float(), accelerator),
                        _gather(out["text_features"].float(), accelerator), scale)
    degradation = clip_loss(_gather(out["image_degra_features"].float(), accelerator),
                            _gather(out["text_degra_features"].float(), accelerator), scale)
    return {"loss": content + degradation, "loss_content": content, "loss_degradation": degradation}


def model_spec(opt: Options) -> str | dict[str, Any]:
    """``path.model`` as ``build_daclip`` takes it: a name or JSON path, or an inline config as a plain dict."""
    spec = opt.path.model
    return spec.to_dict() if hasattr(spec, "to_dict") else spec


def build_model(opt: Options) -> Any:
    """The DA-CLIP to train, CLIP locked, controller and logit_scale trainable.

    ``path.pretrained_clip`` is read by ``load_daclip``: a plain open_clip CLIP checkpoint of
    the architecture ``path.model`` (the controller starts as a copy of its image tower),
    an official DA-CLIP file (fine-tuning), or a ``save_daclip`` folder (its own config).
    Without it, a random CLIP of ``path.model`` seeded by ``manual_seed`` (tests and demos:
    the frozen towers are then random and the controller learns from scratch).
    """
    from textualdeg.daclip.checkpoint import load_daclip
    from textualdeg.daclip.model import build_daclip

    spec = model_spec(opt)
    if opt.path.pretrained_clip is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opt.manual_seed)
            model = build_daclip(spec)
        logger.info("path.pretrained_clip is null: a random CLIP %s (seed %d)", spec, opt.manual_seed)
    else:
        source = Path(opt.path.pretrained_clip)
        model = load_daclip(source) if source.is_dir() else load_daclip(source, spec)
    model.lock_clip()
    model.train()
    return model


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """The named parameters that train (the controller's and logit_scale)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def build_optimizer(model: Any, opt: Options) -> torch.optim.Optimizer:
    """AdamW as open_clip: weight decay on matrices only (not on biases, norms, gains and logit_scale)."""
    t = opt.train
    named = trainable_parameters(model)
    if not named:
        raise RuntimeError("the DA-CLIP has no trainable parameter after lock_clip (expected the controller)")

    def excluded(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    return torch.optim.AdamW([
        {"params": [p for n, p in named if not excluded(n, p)], "weight_decay": t.weight_decay, "name": "decay"},
        {"params": [p for n, p in named if excluded(n, p)], "weight_decay": 0.0, "name": "no_decay"},
    ], lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)


def build_warmup_cosine_schedule(optimizer: torch.optim.Optimizer,
                                 opt: Options) -> torch.optim.lr_scheduler.LambdaLR:
    """open_clip's ``cosine_lr``: linear warm-up over ``train.warmup_iter`` steps, then cosine to 0."""
    warmup, total = max(0, opt.train.warmup_iter), opt.train.total_iter

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step_function(opt: Options, accelerator: Any, model: Any, optimizer: torch.optim.Optimizer) -> StepFn:
    daclip = accelerator.unwrap_model(model)
    clip_norm = opt.train.grad_clip_norm
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []

    def step_fn(batch: dict[str, Any], step: int, micro: int) -> dict[str, torch.Tensor]:
        # any global randomness (dropout, patch dropout) is seeded from the step's position,
        # so a resumed run draws what the uninterrupted one drew
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sample_seed(_RANDOM_STREAM, opt.manual_seed, step, micro, accelerator.process_index))
            with accelerator.autocast():
                out = model(batch["image"], batch["caption"], batch["degradation"])
                losses = daclip_loss(out, accelerator)
            # each process's loss is the whole batch's, its gradient reaching only its own rows;
            # DDP averages over processes, so x processes gives the one-process gradient
            accelerator.backward(losses["loss"] * accelerator.num_processes)
        if clip_norm > 0 and accelerator.sync_gradients:
            accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            daclip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return {key: value.detach() for key, value in losses.items()}

    return step_fn


@torch.no_grad()
def _features(model: Any, dataset: DaClipCsvDataset, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Normalised content and degradation features of every validation image, and of every caption."""
    content, degradation, captions = [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = collate(items)
        c, d = model.encode_image(batch["image"].to(device), control=True, normalize=True)  # (B, D) each
        content.append(c.float().cpu())
        degradation.append(d.float().cpu())
        captions.append(model.encode_text(batch["caption"].to(device), normalize=True).float().cpu())  # (B, D)
    return {"content": torch.cat(content), "degradation": torch.cat(degradation), "caption": torch.cat(captions)}


@torch.no_grad()
def evaluate_daclip(model: Any, dataset: DaClipCsvDataset, batch_size: int = 64) -> dict[str, Any]:
    """Degradation classification and caption retrieval accuracy on a (validation) dataset.

    Classification: the degradation feature of each image against the text features of the
    run's degradation names (argmax of the cosine similarity). Retrieval: the content
    feature of each image against the captions of all rows; a hit when the retrieved
    caption's text is the image's own (rows often share a caption).

    Returns:
        ``degradation_accuracy``, ``caption_retrieval_accuracy``, per-class accuracies
        (``accuracy/<name>``, classes present only) and ``num_images``.
    """
    from textualdeg.daclip.model import tokenize

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = _features(model, dataset, batch_size, device)
    names = dataset.degradations
    name_features = model.encode_text(tokenize(list(names), model.context_length).to(device),
                                      normalize=True).float().cpu()  # (K, D)
    predicted = (feats["degradation"] @ name_features.t()).argmax(-1)  # (N,)
    labels = torch.tensor([names.index(r.degradation) for r in dataset.rows])  # (N,)
    retrieved = (feats["content"] @ feats["caption"].t()).argmax(-1)  # (N,)
    captions = [r.caption for r in dataset.rows]
    hits = [captions[int(j)] == captions[i] for i, j in enumerate(retrieved)]
    model.train(was_training)
    record: dict[str, Any] = {
        "degradation_accuracy": float((predicted == labels).float().mean()),
        "caption_retrieval_accuracy": sum(hits) / len(hits),
        "num_images": len(dataset),
    }
    for k, name in enumerate(names):
        mask = labels == k
        if mask.any():
            record[f"accuracy/{name}"] = float((predicted[mask] == k).float().mean())
    return record


def _validation(accelerator: Any, model: Any, dataset: DaClipCsvDataset | None, batch_size: int) -> ValidateFn:
    def validate(step: int) -> list[dict[str, Any]]:
        if dataset is None or not accelerator.is_main_process:
            return []
        record = evaluate_daclip(accelerator.unwrap_model(model), dataset, batch_size)
        accelerator.log({f"val/{k}": v for k, v in record.items() if k != "num_images"}, step=step)
        logger.info("step %d: degradation accuracy %.4f, caption retrieval accuracy %.4f (%d images, chance %.3f)",
                    step, record["degradation_accuracy"], record["caption_retrieval_accuracy"], len(dataset),
                    1 / len(dataset.degradations))
        return [record]

    return validate


def _datasets(opt: Options, model: Any) -> tuple[DaClipCsvDataset, DaClipCsvDataset | None]:
    """The training and (optional) validation datasets, every row checked before training."""
    ds = opt.datasets
    common = dict(degradations=ds.degradations, image_size=model.image_size, mean=model.image_mean,
                  std=model.image_std, seed=opt.manual_seed, context_length=model.context_length)
    train = DaClipCsvDataset(ds.train_csv, train=True, **common)
    val = DaClipCsvDataset(ds.val_csv, train=False, **common) if ds.val_csv else None
    return train, val


def train_daclip(opt: Options) -> Path:
    """Train the DA-CLIP controller on ``datasets.train_csv``; returns the ``daclip/`` folder.

    Raises:
        textualdeg.daclip.data.DaClipCsvError: a bad CSV row (before training starts).
        textualdeg.experiment.ExperimentLocked: another run is using the run folder.
    """
    ds, t = opt.datasets, opt.train
    if len(set(ds.degradations)) != len(ds.degradations) or not ds.degradations:
        raise ValueError(f"datasets.degradations={ds.degradations}: expected distinct names")
    # validate_at_end only counts when there is a validation set (run.loop gets validate=None otherwise)
    when = Schedule(t.total_iter, opt.logger.print_freq, opt.logger.save_checkpoint_freq, opt.val.val_freq,
                    validate_at_end=True)
    with Run.open(opt, log_with=build_trackers(opt.logger.use_tb_logger)) as run:
        accelerator = run.accelerator
        daclip = build_model(opt)
        train_set, val_set = _datasets(opt, daclip)
        optimizer = build_optimizer(daclip, opt)
        scheduler = build_warmup_cosine_schedule(optimizer, opt)
        global_batch = ds.batch_size_per_gpu * accelerator.num_processes
        loader = DataLoader(train_set, batch_size=ds.batch_size_per_gpu, drop_last=True, collate_fn=collate,
                            num_workers=ds.num_worker_per_gpu,
                            sampler=EpochSampler(len(train_set), global_batch, opt.manual_seed, True,
                                                 ds.dataset_enlarge_ratio))
        model, optimizer, loader, scheduler = accelerator.prepare(daclip, optimizer, loader, scheduler)
        n_train = sum(p.numel() for _, p in trainable_parameters(daclip))
        n_all = sum(p.numel() for p in daclip.parameters())
        logger.info("***** Running training *****")
        logger.info("  %d training rows (%s), %s validation rows", len(train_set), train_set.csv_path,
                    len(val_set) if val_set is not None else "no")
        logger.info("  degradations %s", list(ds.degradations))
        logger.info("  DA-CLIP %s: %d parameters, %d trainable (controller + logit_scale), image %d, embedding %d",
                    opt.path.pretrained_clip, n_all, n_train, daclip.image_size, daclip.embed_dim)
        logger.info("  total batch %d, %d steps, lr %.2e, weight decay %.3g", global_batch, t.total_iter, t.lr,
                    t.weight_decay)
        run.begin("daclip", keep_last=opt.logger.keep_last_states)
        folder = run.exp_dir / OUTPUT_FOLDER

        def save_weights(step: int) -> None:
            from textualdeg.daclip.checkpoint import save_daclip

            save_daclip(accelerator.unwrap_model(model), folder, degradations=tuple(ds.degradations))

        validate = _validation(accelerator, model, val_set, ds.val_batch_size) if val_set is not None else None
        run.loop(loader, scheduler, _step_function(opt, accelerator, model, optimizer), when, validate=validate,
                 save_weights=save_weights, desc="daclip")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_weights(run.step)
        accelerator.wait_for_everyone()
    return folder


def main(argv: Sequence[str] | None = None) -> Path:
    """``textualdeg train-daclip -opt FILE [--set k=v ...]``."""
    description = "Train the DA-CLIP controller (frozen CLIP; contrastive content + degradation losses)."
    return train_daclip(parse_options(argv, DACLIP_SCHEMA, description))

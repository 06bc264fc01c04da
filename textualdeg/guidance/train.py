"""Training of the image-to-text (stage 1) and textual-restoration (stage 2) mappers.

``train_mapper(opt, stage)`` runs one stage from an option file validated by
``schema.I2T_SCHEMA`` or ``schema.TR_SCHEMA``, in the order of diffusers' training
scripts, on the engine (``textualdeg.engine.Run``): run folder, accelerator, lock,
logging and seed -> frozen models from their folders -> ``requires_grad_(False)`` ->
trainable parts (``build_training_model``) -> AdamW over the trainable parameters only ->
lr schedule -> data -> ``accelerator.prepare`` -> frozen parts cast to the mixed-precision
dtype -> one "Running training" block -> trackers and resume (``Run.begin``) -> the step loop
(``Run.loop``: checkpoint, validation and step count gated on ``accelerator.sync_gradients``)
-> final weights on the main process -> ``end_training``.

* Stage 1 trains the ``ImageToTextMapper`` and the global K/V projections of every
  cross-attention layer (installed by ``processors.install_global_kv``, initialised from
  ``to_k``/``to_v``); the VAE, UNet, text encoder and CLIP image encoder are frozen.
* Stage 2 loads the stage-1 file (mapper + global K/V), freezes it, and trains only the
  ``TextRestorationMapper`` (the authors' script trained nothing, D4). CLIP sees the
  degraded crop; the diffusion target is the clean one.

Loss: epsilon-prediction MSE of the SD UNet on the noised VAE latent of the target, t
uniform in [0, 1000), no CFG dropout (as the authors' stage-1 script). Learning rate: ``learning_rate``
times accumulation x batch per process x processes when ``scale_lr`` (the authors' rule,
now optional, D2). The schedule counts optimizer steps (warm-up ``lr_warmup_steps``), which
equals the authors' per-micro-batch stepping with warm-up x accumulation.

Memory (measured at real size in docs/real_size.md): ``train.mixed_precision`` bf16/fp16
also keeps the frozen models in that dtype; ``train.attention: sdpa`` (default) runs every
attention through PyTorch's fused kernels, which never hold a score matrix;
``train.gradient_checkpointing`` recomputes the frozen UNet's activations in backward. An
out-of-memory error names the stage, the batch and size options and the memory options
still off (``memory_advice``); ``datasets.train.clip_size`` must equal the CLIP encoder's
input size (``check_clip_size``).

Run folder ``experiments/<name>/`` (or ``path.experiments_root``)::

    options.yml                     the resolved options of the newest start
    starts.jsonl, starts/           every (re)start, the state it resumed and why, its options
    run.lock                        held by the running process (a second run is refused)
    checkpoints/i2t_mapper.safetensors + i2t_mapper.json   (stage 1: mapper + global K/V)
    checkpoints/tr_mapper.safetensors  + tr_mapper.json    (stage 2)
    state/step_XXXXXXXX/            full training states (textualdeg.checkpoint.StateCheckpointer)
    logs/                           train.log, val_metrics.jsonl (one line per validation)
                                    and TensorBoard (train/loss, train/lr; the options as hparams)
    visualization/step_XXXXXXXX.png validation rows: [input |] generated | target

Exact resume: weights (mapper and global K/V), optimizer, schedule, step, RNG and the data
position go through ``accelerator.save_state``. All training randomness is drawn from
generators seeded by (``manual_seed``, step, micro-batch, rank) and the data from
(``manual_seed``, epoch, index), so a resumed run continues exactly as an uninterrupted one.

Usage::

    python scripts/train/train_i2t_mapping.py -opt options/train_i2t/sd21base_vith14.yml
    accelerate launch --config_file configs/accelerate/4_gpu.yaml scripts/train/train_tr_mapping.py \\
        -opt options/train_tr/sd21base_vith14.yml --set train.max_train_steps=1000

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334. The loop replaces
mrluin/TextualDegRemoval@e755c39 ``scripts/train/main_train_{i2t,tr}_mapping.py``
(themselves adapted from ELITE and diffusers' textual-inversion example).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from textualdeg.engine import Run, Schedule, StepFn, ValidateFn, build_trackers
from textualdeg.fileio import atomic_write_text
from textualdeg.guidance.data import CleanImageDataset, EpochSampler, TaskPairDataset
from textualdeg.guidance.injection import InjectionPrompt, build_injection_prompt, encode_injected
from textualdeg.guidance.mappers import (
    ImageToTextMapper,
    TextRestorationMapper,
    is_residual_tr_file,
    load_mapper_weights,
    save_mapper_weights,
)
from textualdeg.guidance.models import (
    StableDiffusionModels,
    clip_image_features,
    load_clip_vision,
    load_stable_diffusion,
)
from textualdeg.guidance.memory import attention_backend, out_of_memory_hint
from textualdeg.guidance.pipeline import GuidancePipeline, encode_latents
from textualdeg.guidance.processors import global_kv_state_dict, install_global_kv, load_global_kv
from textualdeg.guidance.schema import I2T_SCHEMA, TR_SCHEMA
from textualdeg.imageio import read_image, write_image
from textualdeg.log import get_logger
from textualdeg.options import Options, parse_options

logger = get_logger(__name__)

STAGES = ("i2t", "tr")
_WEIGHTS_NAME = {"i2t": "i2t_mapper", "tr": "tr_mapper"}
_WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------
# models


@dataclass
class FrozenModels:
    """The models a stage uses but does not train.

    Attributes:
        sd: Stable Diffusion parts; the UNet carries the global-K/V processors.
        image_encoder: the CLIP image encoder.
        i2t_mapper: the stage-1 mapper in stage 2 (None in stage 1, where it is trained).
    """

    sd: StableDiffusionModels
    image_encoder: nn.Module
    i2t_mapper: ImageToTextMapper | None = None


class MapperTrainingModel(nn.Module):
    """The trainable parts of a stage and the forward that predicts the noise.

    Only the trained modules are registered (so ``state_dict``, DDP and the optimizer see
    exactly them); the frozen models are held in ``frozen``, a plain dataclass.

    Args:
        frozen: the frozen models.
        mapper: the trained mapper (I2T in stage 1, TR in stage 2).
        prompt: the tokenized template with its placeholder position.
        global_kv: stage 1: the global-K/V processors (the same objects the UNet runs),
            keyed by ``attn2`` path; trained with the mapper. None in stage 2.
    """

    def __init__(
        self,
        frozen: FrozenModels,
        mapper: ImageToTextMapper | TextRestorationMapper,
        prompt: InjectionPrompt,
        global_kv: dict[str, nn.Module] | None = None,
    ):
        super().__init__()
        self.frozen = frozen
        self.prompt = prompt
        self.mapper = mapper
        # ModuleDict keys may not contain '.', so 'down_blocks.0...attn2' -> 'down_blocks_0_..._attn2'.
        self.global_kv = nn.ModuleDict({name.replace(".", "_"): proc for name, proc in (global_kv or {}).items()})

    def word_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP tokens (B, 1 + P, C) -> words (B, K, D); stage 2 goes through the frozen I2T mapper first."""
        if self.frozen.i2t_mapper is None:
            return self.mapper(features)
        with torch.no_grad():
            words = self.frozen.i2t_mapper(features)
        return self.mapper(words)

    def forward(self, features: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Predict the noise added to ``noisy_latents``, conditioned on the image's words.

        Args:
            features: (B, 1 + P, C) CLIP tokens of the (degraded) image.
            noisy_latents: (B, 4, h, w) noised latents of the target.
            timesteps: (B,) diffusion timesteps.

        Returns:
            (B, 4, h, w) epsilon prediction.
        """
        words = self.word_embeddings(features)  # (B, K, D)
        ids = self.prompt.input_ids.to(features.device).unsqueeze(0).expand(features.shape[0], -1)  # (B, 77)
        context = encode_injected(self.frozen.sd.text_encoder, ids, self.prompt.placeholder_index, words)
        unet = self.frozen.sd.unet
        return unet(noisy_latents.to(unet.dtype), timesteps, encoder_hidden_states=context.last_hidden_state).sample


def load_frozen_models(opt: Options, stage: str) -> tuple[FrozenModels, dict[str, nn.Module], ImageToTextMapper | None]:
    """Load SD and CLIP from ``path:``, freeze them, install the global K/V; load ``path.i2t_mapper`` if set.

    Returns:
        The frozen models (on the CPU, float32), the installed processors (trainable in
        stage 1, frozen in stage 2) and the loaded I2T mapper (None if no file is given;
        in stage 2 it is also ``frozen.i2t_mapper``).

    Raises:
        ValueError: stage 2 without ``path.i2t_mapper``, a stage-1 file without global K/V,
            or mapper files that do not fit the models (each naming the file).
    """
    net, i2t_path, i2t_mapper = opt.network_g, opt.path.i2t_mapper, None
    if stage == "tr" and i2t_path is None:
        raise ValueError("path.i2t_mapper is required for stage 2 (the stage-1 mapper + global K/V file)")
    sd = load_stable_diffusion(opt.path.stable_diffusion)
    image_encoder = load_clip_vision(opt.path.clip_vision, open_clip_model=opt.path.open_clip_model)
    for module in (sd.unet, sd.vae, sd.text_encoder, image_encoder):
        module.requires_grad_(False)
    processors = install_global_kv(sd.unet)
    if i2t_path:
        i2t_mapper = ImageToTextMapper.for_models(image_encoder, sd.text_encoder, net.num_words, net.hidden_dim)
        global_kv = load_mapper_weights(i2t_mapper, i2t_path)
        if not global_kv:
            raise ValueError(f"{i2t_path}: holds no global K/V projections; expected a stage-1 (I2T) file")
        load_global_kv(sd.unet, global_kv, source=str(i2t_path))
    for processor in processors.values():
        processor.requires_grad_(stage == "i2t")
    if stage == "tr":
        i2t_mapper.requires_grad_(False).eval()
    return FrozenModels(sd, image_encoder, i2t_mapper if stage == "tr" else None), processors, i2t_mapper


def check_clip_size(opt: Options, image_encoder: nn.Module) -> None:
    """ValueError naming both sizes when ``datasets.train.clip_size`` differs from the CLIP encoder's input size.

    The dataset resizes each crop to ``clip_size``; an encoder built for another size
    would see it resized a second time (the CLIP preprocessing resizes to its own size).
    """
    clip_size, encoder_size = opt.datasets["train"].clip_size, image_encoder.config.image_size
    if clip_size != encoder_size:
        raise ValueError(
            f"datasets.train.clip_size={clip_size} but the CLIP image encoder at path.clip_vision="
            f"{opt.path.clip_vision} takes {encoder_size}-px images (its config's image_size); set "
            f"datasets.train.clip_size: {encoder_size}, or point path.clip_vision at a {clip_size}-px encoder"
        )


def build_training_model(opt: Options, stage: str) -> MapperTrainingModel:
    """Frozen models plus the trained parts of ``stage`` ('i2t' or 'tr'), on the CPU in float32.

    Stage 1 starts the mapper (and global K/V) from ``path.i2t_mapper`` when given, stage 2
    the TR mapper from ``path.tr_mapper`` when given; otherwise from PyTorch's default
    initialisation (global K/V: copies of ``to_k``/``to_v``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {STAGES}")
    frozen, processors, loaded_i2t = load_frozen_models(opt, stage)
    net, sd = opt.network_g, frozen.sd
    check_clip_size(opt, frozen.image_encoder)
    if stage == "i2t":
        mapper = loaded_i2t or ImageToTextMapper.for_models(
            frozen.image_encoder, sd.text_encoder, net.num_words, net.hidden_dim
        )
        trained_kv = processors
    else:
        mapper = TextRestorationMapper.for_models(sd.text_encoder, net.num_words, net.hidden_dim, net.residual)
        if opt.path.tr_mapper:
            if is_residual_tr_file(opt.path.tr_mapper) != net.residual:
                raise ValueError(
                    f"path.tr_mapper={opt.path.tr_mapper} was saved with residual={not net.residual} "
                    f"but network_g.residual is {net.residual}"
                )
            load_mapper_weights(mapper, opt.path.tr_mapper)
        trained_kv = None
    prompt = build_injection_prompt(sd.tokenizer, opt.train.template, opt.train.placeholder)
    return MapperTrainingModel(frozen, mapper.train(), prompt, trained_kv)


def cast_frozen(model: MapperTrainingModel, device: torch.device, dtype: torch.dtype) -> None:
    """Move the frozen models to ``device`` and cast them to ``dtype``; trained parts stay float32.

    In stage 1 the global-K/V processors live inside the UNet but are trained, so their
    float32 weights are kept exactly (saved before the cast and put back after).
    """
    sd = model.frozen.sd
    trained_kv = None
    if len(model.global_kv):
        trained_kv = {key: value.detach().clone() for key, value in global_kv_state_dict(sd.unet).items()}
    for module in (sd.vae, sd.text_encoder, model.frozen.image_encoder, sd.unet):
        module.to(device=device, dtype=None if dtype == torch.float32 else dtype)  # they load as float32
    if model.frozen.i2t_mapper is not None:
        model.frozen.i2t_mapper.to(device=device)
    if trained_kv is not None:
        model.global_kv.to(device=device, dtype=torch.float32)
        load_global_kv(sd.unet, trained_kv, source="trained global K/V")


# ---------------------------------------------------------------------------------------
# optimizer, schedule, data


def learning_rate(opt: Options, num_processes: int) -> float:
    """``train.learning_rate``, times accumulation x batch x processes when ``train.scale_lr``."""
    lr = opt.train.learning_rate
    if opt.train.scale_lr:
        lr *= opt.train.gradient_accumulation_steps * opt.datasets["train"].batch_size_per_gpu * num_processes
    return lr


def build_optimizer(model: nn.Module, opt: Options, lr: float) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients (the trained parts only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the model has no parameter that requires gradients")
    t = opt.train
    return torch.optim.AdamW(
        params, lr=lr, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.adam_weight_decay, eps=t.adam_epsilon
    )


def build_lr_scheduler(optimizer: torch.optim.Optimizer, opt: Options) -> Any:
    """diffusers' ``get_scheduler(train.lr_scheduler)``, counted in optimizer steps."""
    from diffusers.optimization import get_scheduler

    t = opt.train
    return get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.lr_warmup_steps,
        num_training_steps=t.max_train_steps,
        num_cycles=t.lr_num_cycles,
        power=t.lr_power,
    )


def build_mapper_dataset(opt: Options, stage: str) -> Dataset:
    """The training dataset of the stage's mapper from ``datasets.train``."""
    if "train" not in opt.datasets:
        raise ValueError(f"datasets needs a 'train' entry; got {sorted(opt.datasets)}")
    ds = opt.datasets["train"]
    sizes = {"crop_size": ds.crop_size, "resolution": ds.resolution, "clip_size": ds.clip_size, "seed": opt.manual_seed}
    if stage == "i2t":
        return CleanImageDataset(dataroot_gt=ds.dataroot_gt, **sizes)
    return TaskPairDataset(
        task_list=ds.task_list,
        dataroot_gt=ds.dataroot_gt,
        dataroot_lq=ds.dataroot_lq,
        noise_sigma_range=tuple(ds.noise_sigma_range),
        **sizes,
    )


def _collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings as lists."""
    return {
        key: torch.stack([it[key] for it in items]) if torch.is_tensor(items[0][key]) else [it[key] for it in items]
        for key in items[0]
    }


def build_train_loader(opt: Options, dataset: Dataset, num_processes: int) -> DataLoader:
    """DataLoader over (epoch, index) pairs; epochs are cut to whole optimizer steps of all processes."""
    ds = opt.datasets["train"]
    global_batch = ds.batch_size_per_gpu * num_processes * opt.train.gradient_accumulation_steps
    sampler = EpochSampler(len(dataset), global_batch, opt.manual_seed, ds.use_shuffle, ds.dataset_enlarge_ratio)
    return DataLoader(
        dataset,
        batch_size=ds.batch_size_per_gpu,
        sampler=sampler,
        drop_last=True,
        num_workers=ds.num_worker_per_gpu,
        collate_fn=_collate,
    )


# ---------------------------------------------------------------------------------------
# one step, validation


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one micro-batch's noise, timesteps and VAE sample: a function of its position only."""
    entropy = np.random.SeedSequence([int(seed), int(step), int(micro), int(rank)]).generate_state(2, np.uint64)
    return torch.Generator(device=device).manual_seed(int(entropy[0] >> np.uint64(1)))


def training_step(model: nn.Module, frozen: FrozenModels, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """The epsilon-prediction loss of one micro-batch.

    Args:
        model: the (prepared) :class:`MapperTrainingModel`.
        frozen: its frozen models.
        batch: ``target`` (B, 3, R, R) and ``clip_input`` (B, 3, 224, 224), [0, 1].
        generator: source of the VAE sample, the noise and the timesteps.

    Returns:
        Scalar MSE between predicted and true noise (float32).
    """
    sd = frozen.sd
    with torch.no_grad():
        latents = encode_latents(sd.vae, batch["target"], sd.latent_scaling, generator=generator)  # (B, 4, h, w)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(
            0, sd.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
        )
        noisy = sd.scheduler.add_noise(latents, noise, timesteps)
        features = clip_image_features(frozen.image_encoder, batch["clip_input"])  # (B, 1 + P, C)
    pred = model(features.float(), noisy, timesteps)
    return F.mse_loss(pred.float(), noise.float())


@torch.no_grad()
def validate(model: MapperTrainingModel, dataset: Dataset, opt: Options, step: int, out_dir: Path) -> Path:
    """Generate from the first ``val.num_images`` training items and write one picture.

    Each row is [input |] generated | target (the input column only in stage 2, where CLIP
    sees the degraded image). Uses its own seeded generators, so training randomness is
    untouched; puts the mappers back in train mode.

    Returns:
        The written PNG.
    """
    frozen, val = model.frozen, opt.val
    i2t = frozen.i2t_mapper if frozen.i2t_mapper is not None else model.mapper
    tr = model.mapper if frozen.i2t_mapper is not None else None
    pipeline = GuidancePipeline(frozen.sd, frozen.image_encoder, i2t, tr, opt.train.template, opt.train.placeholder)
    items = [dataset[(0, i)] for i in range(min(val.num_images, len(dataset)))]
    model.mapper.eval()
    try:
        images = torch.stack([item["clip_input"] for item in items])
        generated = pipeline(
            images,
            [val.seed + i for i in range(len(items))],
            num_inference_steps=val.num_inference_steps,
            guidance_scale=val.guidance_scale,
            resolution=items[0]["target"].shape[-1],
        ).cpu()
    finally:
        model.mapper.train()
    rows = []
    for item, image in zip(items, generated):
        panels = ([item["input"]] if "input" in item else []) + [image, item["target"]]
        rows.append(torch.cat(panels, dim=-1))  # (3, R, n * R)
    grid = torch.cat(rows, dim=-2).permute(1, 2, 0).numpy()  # (rows * R, n * R, 3)
    return write_image(out_dir / f"step_{step:08d}.png", grid)


# ---------------------------------------------------------------------------------------
# weights


def save_final_weights(model: MapperTrainingModel, opt: Options, stage: str, step: int, ckpt_dir: Path) -> Path:
    """Main process: ``<i2t|tr>_mapper.safetensors`` (stage 1 with the global K/V) and its JSON config."""
    name = _WEIGHTS_NAME[stage]
    global_kv = global_kv_state_dict(model.frozen.sd.unet) if stage == "i2t" else None
    path = ckpt_dir / f"{name}.safetensors"
    save_mapper_weights(path, model.mapper, global_kv)
    mapper = model.mapper
    config = {
        "class": type(mapper).__name__,
        "num_words": mapper.num_words,
        "input_dim": mapper.input_dim,
        "hidden_dim": mapper.hidden_dim,
        "output_dim": mapper.output_dim,
        "global_kv_layers": len(global_kv) // 2 if global_kv else 0,
        "template": opt.train.template,
        "placeholder": opt.train.placeholder,
        "stable_diffusion": str(opt.path.stable_diffusion),
        "clip_vision": str(opt.path.clip_vision),
        "step": step,
    }
    atomic_write_text(ckpt_dir / f"{name}.json", json.dumps(config, indent=2) + "\n")
    logger.info("saved %s weights of step %d to %s", type(mapper).__name__, step, path)
    return path


def _log_running_block(
    opt: Options, accelerator: Any, dataset: Dataset, loader: DataLoader, model: nn.Module, lr: float
) -> None:
    ds, t = opt.datasets["train"], opt.train
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_batch = ds.batch_size_per_gpu * accelerator.num_processes * t.gradient_accumulation_steps
    steps_per_epoch = max(1, len(loader) // t.gradient_accumulation_steps)
    logger.info("***** Running training *****")
    logger.info("  trained parameters = %d (%s)", trained, type(accelerator.unwrap_model(model).mapper).__name__)
    logger.info("  training images = %d, optimizer steps per epoch = %d, epochs = %d",
                len(dataset), steps_per_epoch, math.ceil(t.max_train_steps / steps_per_epoch))
    logger.info("  batch per process = %d, processes = %d, accumulation = %d, total batch = %d",
                ds.batch_size_per_gpu, accelerator.num_processes, t.gradient_accumulation_steps, total_batch)
    logger.info("  optimizer steps = %d, lr = %.3e (scale_lr=%s), mixed precision = %s",
                t.max_train_steps, lr, t.scale_lr, accelerator.mixed_precision)


# ---------------------------------------------------------------------------------------
# the loop


def train_mapper(opt: Options, stage: str) -> Path:
    """Train the stage-1 (``'i2t'``) or stage-2 (``'tr'``) mapper; resumable.

    Args:
        opt: options validated by ``I2T_SCHEMA`` (stage 'i2t') or ``TR_SCHEMA`` (stage 'tr').
        stage: ``'i2t'`` or ``'tr'``.

    Returns:
        The final weight file ``experiments/<name>/checkpoints/<i2t|tr>_mapper.safetensors``.

    Raises:
        textualdeg.experiment.ExperimentLocked: another run is using the run folder.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {STAGES}")
    t = opt.train
    when = Schedule(t.max_train_steps, t.log_steps, t.checkpointing_steps, opt.val.validation_steps)
    with Run.open(opt, log_with=build_trackers(t.use_tb_logger),
                  gradient_accumulation_steps=t.gradient_accumulation_steps) as run:
        accelerator = run.accelerator
        model = build_training_model(opt, stage)
        if t.gradient_checkpointing:
            model.frozen.sd.unet.enable_gradient_checkpointing()
        lr = learning_rate(opt, accelerator.num_processes)
        optimizer = build_optimizer(model, opt, lr)
        lr_scheduler = build_lr_scheduler(optimizer, opt)
        dataset = build_mapper_dataset(opt, stage)
        loader = build_train_loader(opt, dataset, accelerator.num_processes)

        model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
        cast_frozen(accelerator.unwrap_model(model), accelerator.device, _WEIGHT_DTYPES[accelerator.mixed_precision])
        _log_running_block(opt, accelerator, dataset, loader, model, lr)
        run.begin(f"{stage}_mapping", keep_last=t.checkpoints_total_limit, weight_prefixes=(_WEIGHTS_NAME[stage],))

        run.loop(loader, lr_scheduler, _step_function(opt, accelerator, model, optimizer), when,
                 validate=_validation(opt, accelerator, model, dataset, run.exp_dir), desc=f"{stage} mapper")
        accelerator.wait_for_everyone()
        path = run.exp_dir / "checkpoints" / f"{_WEIGHTS_NAME[stage]}.safetensors"
        if accelerator.is_main_process:
            save_final_weights(accelerator.unwrap_model(model), opt, stage, run.step, run.exp_dir / "checkpoints")
        accelerator.wait_for_everyone()
    return path


def memory_advice(opt: Options) -> tuple[str, list[str], list[str]]:
    """What an out-of-memory error of the training step names (``memory.out_of_memory_hint``).

    Returns:
        (stage, the options setting the batch and image size, the memory options not yet on).
    """
    ds, t = opt.datasets["train"], opt.train
    stage = "stage 1 (I2T mapper)" if opt.network_g.type == "ImageToTextMapper" else "stage 2 (TR mapper)"
    sizes = [f"datasets.train.batch_size_per_gpu={ds.batch_size_per_gpu} (raise train.gradient_accumulation_steps "
             "to keep the effective batch)", f"datasets.train.resolution={ds.resolution}"]
    helps = []
    if not t.gradient_checkpointing:
        helps.append("train.gradient_checkpointing: true (recomputes the UNet's activations in backward)")
    if t.mixed_precision == "no":
        helps.append("train.mixed_precision: bf16 (frozen weights and activations in bf16)")
    if t.attention != "sdpa":
        helps.append("train.attention: sdpa (no attention score matrices)")
    return f"{stage} training step", sizes, helps


def _step_function(opt: Options, accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> StepFn:
    """One micro-batch of ``train_mapper``: seeded noise, ``training_step``, backward, clip and optimizer step."""
    frozen = accelerator.unwrap_model(model).frozen
    trained = [p for p in model.parameters() if p.requires_grad]
    max_grad_norm = opt.train.max_grad_norm

    advice = memory_advice(opt)
    attention = opt.train.attention

    def step_fn(batch: dict, step: int, micro: int) -> dict[str, torch.Tensor]:
        with accelerator.accumulate(model), out_of_memory_hint(*advice), attention_backend(attention):
            generator = step_generator(opt.manual_seed, step, micro, accelerator.process_index, accelerator.device)
            loss = training_step(model, frozen, batch, generator)
            accelerator.backward(loss)
            if accelerator.sync_gradients and max_grad_norm > 0:
                accelerator.clip_grad_norm_(trained, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach()}

    return step_fn


def _validation(opt: Options, accelerator: Any, model: nn.Module, dataset: Dataset, exp_dir: Path) -> ValidateFn:
    """``validate``: one picture per validation, logged (and shown in TensorBoard); its record names it.

    The engine calls it on every process; the few generated images are made on the main
    process only (the others return no record and wait at the engine's barrier).
    """

    def validate_step(step: int) -> list[dict[str, Any]]:
        if not accelerator.is_main_process:
            return []
        with accelerator.autocast(), attention_backend(opt.train.attention):
            picture = validate(accelerator.unwrap_model(model), dataset, opt, step, exp_dir / "visualization")
        logger.info("validation images of step %d: %s", step, picture)
        if opt.train.use_tb_logger:
            image = read_image(picture)[None]  # (1, H, W, 3)
            accelerator.get_tracker("tensorboard").log_images({"val/images": image}, step, dataformats="NHWC")
        return [{"images": f"visualization/{Path(picture).name}"}]

    return validate_step


# ---------------------------------------------------------------------------------------
# entry points


def main_i2t(argv: Sequence[str] | None = None) -> Path:
    """``scripts/train/train_i2t_mapping.py -opt FILE [--set k=v ...]``: stage 1."""
    return train_mapper(parse_options(argv, I2T_SCHEMA, "Train the image-to-text mapper (stage 1)."), "i2t")


def main_tr(argv: Sequence[str] | None = None) -> Path:
    """``scripts/train/train_tr_mapping.py -opt FILE [--set k=v ...]``: stage 2."""
    return train_mapper(parse_options(argv, TR_SCHEMA, "Train the textual-restoration mapper (stage 2)."), "tr")


__all__ = [
    "FrozenModels",
    "MapperTrainingModel",
    "build_lr_scheduler",
    "build_mapper_dataset",
    "build_optimizer",
    "build_train_loader",
    "build_training_model",
    "check_clip_size",
    "learning_rate",
    "main_i2t",
    "main_tr",
    "memory_advice",
    "save_final_weights",
    "step_generator",
    "train_mapper",
    "training_step",
    "validate",
]

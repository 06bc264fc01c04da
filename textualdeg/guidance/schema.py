"""Option schemas of the guidance stages: I2T mapper (1), TR mapper (2) and generation (3).

Each schema declares every key of ``options/train_i2t/*.yml``, ``options/train_tr/*.yml``
and ``options/generate/*.yml`` with its type, default and a one-line meaning, in BasicSR's
vocabulary where it has a word for the thing (``name``, ``manual_seed``, ``path``,
``datasets.train``, ``batch_size_per_gpu``, ``network_g``) and in the diffusers
training-script vocabulary otherwise (``max_train_steps``, ``gradient_accumulation_steps``,
``scale_lr``, ``lr_scheduler``, ``checkpointing_steps``...), since that is what the
authors' mapping scripts (adapted from ELITE) take on their command line.

The defaults are the authors' hyperparameters (their training and generation scripts;
the README command for the values it passes): AdamW (0.9, 0.999), weight decay 1e-2,
eps 1e-8, lr 1e-6 scaled by accumulation x batch x processes (6.4e-5 at 4 x 4 x 4),
constant schedule without warm-up, clip 1.0, 200k steps, batch 4, accumulation 4,
512 px, 20 words, "a photo of a S"; validation and generation with DDIM 100 steps and
CFG 5.0, seed 42.
Unlike the authors' scripts, ``scale_lr`` can be turned off (D2), lists are YAML lists
(D1), every path comes from ``path:`` (D6, D13), and ``num_words`` is honoured (D15; IDs
as in docs/official_differences.md).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from textualdeg.options import Field, ListOf, MapOf, Section

TASKS = ("denoise", "deblur", "derain", "dehaze", "desnow", "lowlight", "mixed")
DTYPES = ("float32", "float16", "bfloat16")
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTION_BACKENDS = ("sdpa", "math")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
_IGNORED = ("num_gpu", "dist_params", "launcher")


def _path_section(stage: str) -> Section:
    """The ``path`` section; ``i2t_mapper`` is required from stage 2 on."""
    return Section(
        {
            "stable_diffusion": Field(str, path=True, help="Stable Diffusion 2.1-base diffusers folder"),
            "clip_vision": Field(
                str, path=True, help="CLIP image encoder: CLIPVisionModel folder or open_clip checkpoint (file/folder)"
            ),
            "open_clip_model": Field(
                str, "ViT-H-14", help="open_clip config used when no open_clip_config.json sits beside the checkpoint"
            ),
            "i2t_mapper": Field(
                str,
                None,
                path=True,
                help="stage-1 weights (mapper + global K/V; ours or the authors' mapper.pt)"
                + ("; required" if stage != "i2t" else "; initialises the mapper if set"),
            ),
            "tr_mapper": Field(
                str,
                None,
                path=True,
                help="stage-2 TR mapper weights" + ("; required" if stage == "generate" else "; initialises it if set"),
            ),
            "resume_state": Field(str, None, path=True, help="state folder (or state root) to resume from"),
            "auto_resume": Field(bool, True, help="resume from the newest complete state under experiments/<name>/state"),
            "experiments_root": Field(str, None, path=True, help="run folder (default experiments/<name>)"),
        },
        help="model folders, weights and run folders",
    )


def _network_section(mapper: str) -> Section:
    fields = {
        "type": Field(str, mapper, choices=(mapper,), help="the trained mapper class"),
        "num_words": Field(int, 20, help="pseudo-words injected into the prompt (20 in the paper)"),
        "hidden_dim": Field(int, 1280, help="hidden width of every per-word MLP (1280 in the paper)"),
    }
    if mapper == "TextRestorationMapper":
        fields["residual"] = Field(
            bool, False, help="w -> w + MLP(w), starting as the identity (ours; authors: w -> MLP(w)); the file records it"
        )
    return Section(
        fields,
        help="the trained mapper (its input/output widths come from the loaded models)",
    )


_PROMPT_FIELDS = {
    "template": Field(str, "a photo of a {}", help="prompt template: '{}' is the placeholder (or give it literally)"),
    "placeholder": Field(str, "S", help="placeholder word replaced by the mapper's words (one token)"),
}

_LOADER_FIELDS = {
    "name": Field(str, None, help="name in logs (default: the section key)"),
    "batch_size_per_gpu": Field(int, 4, help="batch per process (README: 4)"),
    "num_worker_per_gpu": Field(int, 0, help="DataLoader workers per process"),
    "use_shuffle": Field(bool, True, help="shuffle every epoch (seeded by manual_seed and the epoch)"),
    "dataset_enlarge_ratio": Field(int, 1, help="repeat the dataset this many times per epoch"),
    "crop_size": Field(int, 512, help="random crop side; smaller images give their central square (authors: 512)"),
    "resolution": Field(int, 512, help="side of the diffusion target after resizing the crop (authors: 512)"),
    "clip_size": Field(int, 224, help="side of the CLIP view of the crop (bicubic; 224 for ViT-H/14)"),
}

I2T_DATASET = Section(
    {
        "type": Field(str, "CleanImageDataset", choices=("CleanImageDataset",), help="stage-1 dataset"),
        "dataroot_gt": Field(
            (str, ListOf(str)), path=True, help="folder or list of folders of images (HQ and degraded mixed)"
        ),
        **_LOADER_FIELDS,
    },
    help="stage-1 training images",
)

TR_DATASET = Section(
    {
        "type": Field(str, "TaskPairDataset", choices=("TaskPairDataset",), help="stage-2 dataset"),
        "task_list": Field(ListOf(Field(str, choices=TASKS)), help="one task per folder pair; sampled uniformly per item"),
        "dataroot_gt": Field(ListOf(str), path=True, help="HQ folder per task (aligned with task_list)"),
        "dataroot_lq": Field(
            ListOf(Field(str, None, path=True)),
            None,
            help="LQ folder per task, null for denoise (noise is synthesised); paired with HQ by stem",
        ),
        "noise_sigma_range": Field(ListOf(float), (0.0, 50.0), help="denoise: sigma ~ U(low, high) in 0..255 units"),
        **_LOADER_FIELDS,
    },
    help="stage-2 LQ/HQ pairs per task",
)

_TRAIN_FIELDS = {
    "max_train_steps": Field(int, 200000, help="optimizer steps (README: 200k)"),
    "gradient_accumulation_steps": Field(int, 4, help="micro-batches per optimizer step (README: 4)"),
    "learning_rate": Field(float, 1e-6, help="base learning rate (README: 1e-6, before scale_lr)"),
    "scale_lr": Field(bool, True, help="lr x accumulation x batch per process x processes (authors: always on, D2)"),
    "lr_scheduler": Field(str, "constant", choices=LR_SCHEDULERS, help="diffusers get_scheduler name"),
    "lr_warmup_steps": Field(int, 0, help="warm-up optimizer steps (README: 0)"),
    "lr_num_cycles": Field(int, 1, help="cycles of cosine_with_restarts"),
    "lr_power": Field(float, 1.0, help="power of the polynomial schedule"),
    "adam_beta1": Field(float, 0.9, help="AdamW beta1"),
    "adam_beta2": Field(float, 0.999, help="AdamW beta2"),
    "adam_weight_decay": Field(float, 1e-2, help="AdamW weight decay"),
    "adam_epsilon": Field(float, 1e-8, help="AdamW eps"),
    "max_grad_norm": Field(float, 1.0, help="gradient clipping (global norm); 0 disables"),
    "mixed_precision": Field(str, "no", choices=MIXED_PRECISION, help="accelerate mixed precision (authors: no)"),
    "process_group_timeout_min": Field(int, 120, help="minutes a process waits for the others (validation, "
                                                      "checkpoints) before the run fails; NCCL's default is 10"),
    "gradient_checkpointing": Field(bool, False, help="recompute the frozen UNet's activations in backward (less "
                                                      "memory, more time; docs/real_size.md)"),
    "attention": Field(str, "sdpa", choices=ATTENTION_BACKENDS, help="attention kernel: sdpa (PyTorch's fused "
                       "kernels, no score matrix) or math (unfused, as the authors'; docs/real_size.md)"),
    "checkpointing_steps": Field(int, 200, help="save the full training state every N optimizer steps (authors: 200)"),
    "checkpoints_total_limit": Field(int, 3, help="full states kept under experiments/<name>/state"),
    "log_steps": Field(int, 10, help="log the mean loss and lr every N optimizer steps"),
    "use_tb_logger": Field(bool, True, help="TensorBoard under experiments/<name>/logs"),
    **_PROMPT_FIELDS,
}

_VAL_SECTION = Section(
    {
        "validation_steps": Field(int, 200, help="write validation images every N optimizer steps; 0 disables"),
        "num_images": Field(int, 2, help="training items shown (the first ones of epoch 0)"),
        "num_inference_steps": Field(int, 100, help="DDIM steps (authors: 100)"),
        "guidance_scale": Field(float, 5.0, help="classifier-free guidance scale (authors: 5.0)"),
        "seed": Field(int, 42, help="seed of the validation noise"),
    },
    help="validation images: generated next to target, under experiments/<name>/visualization",
)


def _training_schema(stage: str) -> Section:
    dataset = I2T_DATASET if stage == "i2t" else TR_DATASET
    mapper = "ImageToTextMapper" if stage == "i2t" else "TextRestorationMapper"
    return Section(
        {
            "name": Field(str, help="experiment name: runs live in experiments/<name>"),
            "model_type": Field(str, None, help="accepted for BasicSR compatibility; unused"),
            "manual_seed": Field(int, 0, help="seed of data order, crops, noise and timesteps (authors: unseeded)"),
            "path": _path_section(stage),
            "network_g": _network_section(mapper),
            "datasets": MapOf(dataset, help="datasets.train"),
            "train": Section(_TRAIN_FIELDS, help="optimisation, precision, checkpoints"),
            "val": _VAL_SECTION,
        },
        ignored=_IGNORED,
    )


#: Stage 1: ``scripts/train/train_i2t_mapping.py``.
I2T_SCHEMA = _training_schema("i2t")
#: Stage 2: ``scripts/train/train_tr_mapping.py``.
TR_SCHEMA = _training_schema("tr")

GENERATE_DATASET = Section(
    {
        "name": Field(str, None, help="name in logs (default: the section key)"),
        "dataroot_lq": Field(str, path=True, help="folder of degraded input images"),
        "dataroot_ref": Field(str, path=True, help="output folder: one guidance PNG per input stem, plus manifest.json"),
    },
    help="one input folder and its guidance folder",
)

#: Stage 3: ``scripts/generate/generate_reference.py``.
GENERATE_SCHEMA = Section(
    {
        "name": Field(str, "generate_reference", help="run name (logs)"),
        "model_type": Field(str, None, help="accepted for BasicSR compatibility; unused"),
        "path": _path_section("generate"),
        "network_g": Section(
            {
                "num_words": Field(int, 20, help="words of both mapper files (checked against them)"),
                "hidden_dim": Field(int, 1280, help="hidden MLP width of both mapper files (checked)"),
            },
            help="mapper sizes; input/output widths come from the loaded models",
        ),
        "datasets": MapOf(GENERATE_DATASET, help="input folders -> guidance folders (e.g. train, test)"),
        "generate": Section(
            {
                "steps": Field(int, 100, help="DDIM steps, eta 0 (authors: 100)"),
                "guidance_scale": Field(float, 5.0, help="classifier-free guidance scale vs the empty prompt (5.0)"),
                "seed": Field(int, 42, help="run seed mixed with each file stem into that image's seed"),
                "resolution": Field(int, 512, help="output side in pixels (authors: 512)"),
                "dtype": Field(str, "float16", choices=DTYPES, help="model dtype (authors: fp16; CPU runs use float32)"),
                "batch_size": Field(int, 4, help="images per batch per process (bit-identical results for a given batch size; another changes float rounding only)"),
                "batched_cfg": Field(bool, True, help="both guidance branches in one UNet call per step"),
                "attention": Field(str, "sdpa", choices=ATTENTION_BACKENDS, help="attention kernel: sdpa (PyTorch's "
                                   "fused kernels) or math (unfused, as the authors'; docs/real_size.md)"),
                "overwrite": Field(bool, False, help="regenerate existing outputs (default: skip them, so runs resume)"),
                "use_tr_mapper": Field(
                    bool,
                    True,
                    help="map the words through the stage-2 TR mapper (false: an ablation that injects the I2T "
                    "words of the degraded input directly; path.tr_mapper is then not read)",
                ),
                **_PROMPT_FIELDS,
            },
            help="sampling settings",
        ),
    },
    ignored=_IGNORED,
)

__all__ = ["GENERATE_SCHEMA", "I2T_SCHEMA", "TR_SCHEMA", "TASKS"]

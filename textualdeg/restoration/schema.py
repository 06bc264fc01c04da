"""Option schema for guided restoration training (stage 4).

Declares every key of ``options/train_restoration/*.yml`` with its type, default and a
one-line meaning, in BasicSR's vocabulary. ``load_options(path,
RESTORATION_SCHEMA)`` rejects unknown keys (naming the nearest known one), coerces
numbers (``2e-4`` needs no ``!!float``) and fills defaults.

Compatibility with the authors' option files (IDs as in docs/official_differences.md):

- ``lqroot`` / ``hqroot`` / ``refroot`` are read as ``dataroot_lq`` / ``dataroot_gt`` /
  ``dataroot_ref`` (deprecation warning);
- ``num_gpu``, ``dist_params`` and ``launcher`` are accepted and ignored (accelerate owns
  distribution), as are keys their code never read (``val.max_minibatch``,
  ``val.rgb2bgr``, ``val.use_image``, ``logger.check_freq``);
- ``train.param_fix_iterations`` is read (their code read ``fix_iterations``; D21), and
  ``fix_iterations`` is accepted as an alias;
- ``network_g`` is an open section: ``type`` plus the exact constructor kwargs.

Dataset sections: the keys consumed by the training loop (batch size, workers,
shuffling, ``skip_bad_images``...) have defaults; every dataset-specific key defaults to
None and is passed to the dataset class only when set, so each class keeps its own
defaults.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from textualdeg.options import Field, ListOf, MapOf, Section

_NUMBER_OR_LIST = (float, ListOf(float))

DATASET_SCHEMA = Section(
    {
        "name": Field(str, None, help="name in logs and TensorBoard keys (default: the section key)"),
        "type": Field(str, help="dataset class in DATASET_REGISTRY"),
        # -- folders (pairing is by file stem)
        "dataroot_gt": Field(str, None, path=True, help="folder of ground-truth (HQ) images"),
        "dataroot_lq": Field(str, None, path=True, help="folder of degraded (LQ) images"),
        "dataroot_ref": Field(str, None, path=True, help="folder of guidance (reference) images, one per LQ stem"),
        "dataroot_lq_l": Field(str, None, path=True, help="dual-pixel: folder of left views"),
        "dataroot_lq_r": Field(str, None, path=True, help="dual-pixel: folder of right views"),
        "meta_info_file": Field(str, None, path=True, help="text file listing the LQ names (dehazing)"),
        "filename_tmpl": Field(str, None, help="BasicSR LQ name template; pairing is by stem, so only '{}' is meaningful"),
        "io_backend": Field(dict, None, help="BasicSR file backend; only {type: disk} is supported"),
        # -- crops and augmentation
        "gt_size": Field(int, None, help="training patch size (LQ and GT crops of this size)"),
        "use_hflip": Field(bool, None, help="random horizontal flips (BasicSR)"),
        "use_rot": Field(bool, None, help="random 90-degree rotations and vertical flips (BasicSR)"),
        "geometric_augs": Field(bool, None, help="Restormer's 8 flip/rotation modes applied to LQ and GT"),
        "ref_crop": Field(str, None, choices=("dino", "resize", "full"),
                          help="guidance at training: DINOv2-chosen window | resized whole | whole"),
        "ref_size": Field(int, None, help="side of the square guidance image (ref_crop: resize)"),
        "augment_ref": Field(bool, None, help="apply the LQ/GT flip/rotation to the guidance too"),
        "dino_window": Field(str, None, choices=("crop", "relative"),
                             help="DINOv2 window: LQ crop size (authors) or scaled by ref/image size"),
        "gt_stem_separator": Field(str, None, help="many LQ per GT: GT stem = LQ stem up to this separator"),
        "instruction": Field(str, None, help="text-prompted networks (TextPromptIR): the instruction of every image "
                                             "of this set; training items with a task draw a phrasing of it instead"),
        # -- on-the-fly degradations
        "sigma_type": Field(str, None, help="Gaussian denoising: constant | random | choice"),
        "sigma_range": Field(_NUMBER_OR_LIST, None, help="sigma (constant) or [low, high] / choices, in 0..255 units"),
        "sigma_test": Field(float, None, help="sigma of the seeded validation noise"),
        "in_ch": Field(int, None, help="1: grayscale (1-channel items), 3: colour"),
        "gray_to_rgb": Field(bool, None, help="in_ch 1: replicate gray to 3 channels (a 3-channel network, D31)"),
        "clip_noise": Field(bool, None, help="clip noisy inputs to [0, 1] (the authors do not)"),
        "val_noise_seed": Field(int, None, help="validation noise seed (default 0, as the protocols)"),
        "val_noise_seed_mode": Field(str, None, choices=("stem", "fixed"),
                                     help="validation noise: stem (seeded per file stem, as stage-5 evaluation; "
                                          "default) | fixed (the authors' np.random.seed before every image)"),
        # -- all-in-one mixture (AllInOneRefDataset)
        "dataroot_denoise_gt": Field(str, None, path=True, help="all-in-one: clean images for denoising (BSD400+WED)"),
        "dataroot_denoise_ref": Field(str, None, path=True, help="all-in-one: guidance of the denoising images"),
        "dataroot_derain_lq": Field(str, None, path=True, help="all-in-one: rainy images"),
        "dataroot_derain_gt": Field(str, None, path=True, help="all-in-one: rain-free targets"),
        "dataroot_derain_ref": Field(str, None, path=True, help="all-in-one: guidance of the rainy images"),
        "dataroot_dehaze_lq": Field(str, None, path=True, help="all-in-one: hazy images"),
        "dataroot_dehaze_gt": Field(str, None, path=True, help="all-in-one: clear targets"),
        "dataroot_dehaze_ref": Field(str, None, path=True, help="all-in-one: guidance of the hazy images"),
        "denoise_root": Field((str, ListOf(str)), None, help="authors' key: denoising folder (gt/, ref/)"),
        "derain_root": Field((str, ListOf(str)), None, help="authors' key: deraining folder (lq/, gt/, ref/)"),
        "dehaze_root": Field((str, ListOf(str)), None, help="authors' key: dehazing folder (lq/, gt/, ref/)"),
        "tasks": Field(ListOf(str), None, help="all-in-one: tasks (denoise_15, denoise_25, denoise_50, derain, dehaze)"),
        "sigmas": Field(ListOf(float), None, help="all-in-one: denoising sigmas when tasks is unset"),
        "task_ratios": Field(ListOf(float), None, help="all-in-one: sampling weight of each task (default equal)"),
        "dataset_length": Field(int, None, help="all-in-one: items per epoch (default: all unique items)"),
        "derain_filename_tmpl": Field(str, None, help="all-in-one: rainy stem = tmpl.format(clean stem)"),
        "dehaze_gt_stem_separator": Field(str, None, help="all-in-one: clear stem = hazy stem up to this separator"),
        "dehaze_meta_info_file": Field(str, None, path=True, help="all-in-one: hazy images to use"),
        # -- loader (read by the training loop)
        "batch_size_per_gpu": Field(int, 8, help="batch size on each process"),
        "num_worker_per_gpu": Field(int, 4, help="DataLoader workers on each process"),
        "use_shuffle": Field(bool, True, help="shuffle the training set every epoch"),
        "dataset_enlarge_ratio": Field(int, 1, help="repeat the dataset this many times per epoch"),
        "pin_memory": Field(bool, False, help="pin host memory for faster GPU copies"),
        "prefetch_mode": Field(str, None, help="BasicSR prefetcher; ignored (accelerate moves batches)"),
        "skip_bad_images": Field(bool, False, help="log and skip unreadable or mismatched samples instead of failing"),
        "mini_batch_sizes": Field(ListOf(int), None, help="progressive training: batch size of each stage"),
        "iters": Field(ListOf(int), None, help="progressive training: iterations of each stage"),
        "gt_sizes": Field(ListOf(int), None, help="progressive training: patch size of each stage"),
    },
    help="one dataset (datasets.train, datasets.val, datasets.val_*)",
    aliases={"lqroot": "dataroot_lq", "hqroot": "dataroot_gt", "refroot": "dataroot_ref",
             "lqroot_L": "dataroot_lq_l", "lqroot_R": "dataroot_lq_r"},
    ignored={"phase", "scale"},
)

PATH_SCHEMA = Section(
    {
        "experiments_root": Field(str, None, path=True, help="the run folder (default: experiments/<name>)"),
        "pretrain_network_g": Field(str, None, path=True, help="initial weights for network_g (safetensors or .pth)"),
        "param_key_g": Field(str, None, help="entry of a wrapped .pth to load (params, params_ema; default: first found)"),
        "strict_load_g": Field(bool, True, help="require every key of pretrain_network_g to match"),
        "resume_state": Field(str, None, path=True, help="state folder (or state root) to resume from"),
        "auto_resume": Field(bool, True, help="resume from the newest complete state of this run if there is one"),
        "pretrain_dino": Field(str, None, path=True, help="DINOv2 ViT-B/14 folder or checkpoint (ref window choice)"),
        "daclip": Field(str, None, path=True,
                        help="DA-CLIP file or folder (DA-CLIP conditioned networks: embeddings of each input)"),
        "instruction_encoder": Field(str, None, path=True,
                                     help="fine-tuned instruction encoder folder (text-prompted networks; "
                                          "scripts/train/train_instruction_encoder.py)"),
        "stable_diffusion": Field(str, None, path=True, help="Stable Diffusion folder (stages 1-3; unused here)"),
        "clip_vision": Field(str, None, path=True, help="CLIP vision folder (stages 1-3; unused here)"),
    },
    help="files and folders",
)

OPTIM_SCHEMA = Section(
    {
        "type": Field(str, "AdamW", choices=("AdamW", "Adam"), help="optimizer class"),
        "lr": Field(float, help="learning rate of the backbone parameters"),
        "ref_lr": Field(float, None, help="learning rate of the masa_* (reference/fusion) parameters; default lr"),
        "weight_decay": Field(float, 0.0, help="decoupled weight decay (AdamW) / L2 (Adam)"),
        "betas": Field(ListOf(float), [0.9, 0.999], help="Adam betas"),
        "eps": Field(float, 1e-8, help="Adam epsilon"),
    },
    help="optimizer of network_g",
)

MIXING_SCHEMA = Section(
    {
        "mixup": Field(bool, False, help="Restormer mixup (not implemented; must be false)"),
        "mixup_beta": Field(float, 1.2, help="mixup Beta parameter"),
        "use_identity": Field(bool, True, help="mixup may leave a batch unchanged"),
    },
    help="authors' mixing augmentation block (disabled in all their files)",
)

TRAIN_SCHEMA = Section(
    {
        "total_iter": Field(int, help="number of optimizer steps"),
        "warmup_iter": Field(int, -1, help="linear lr warm-up steps (-1: none)"),
        "optim_g": OPTIM_SCHEMA,
        "scheduler": Section({}, open=True, help="lr scheduler: type (SCHEDULER_REGISTRY) plus kwargs"),
        "pixel_opt": Section({}, open=True, help="pixel loss: type (LOSS_REGISTRY) plus kwargs"),
        "use_grad_clip": Field(bool, True, help="clip the global gradient norm"),
        "grad_clip_norm": Field(float, 0.01, help="max global gradient norm (the authors' 0.01)"),
        "param_fix_iterations": Field(int, 0, help="steps during which param_fix_group is frozen"),
        "param_fix_group": Field(str, "backbone", choices=("backbone", "reference"),
                                 help="what param_fix_iterations freezes: the backbone (only masa_* train) or "
                                      "the masa_* reference/fusion parameters (the authors' intent, D21)"),
        "correspondence_opt": Section(
            {"loss_weight": Field(float, 0.0, help="weight of the refined path's correspondence loss (0: off)")},
            help="auxiliary loss teaching the reference encoder to match the degraded input to the clean "
                 "target (network_g.reference_mode: refined only; restoration/reference/refined.py)",
        ),
        "ema_decay": Field(float, 0.0, help="EMA decay of network_g (0: no EMA)"),
        "mixed_precision": Field(str, "no", choices=("no", "fp16", "bf16"),
                                 help="accelerate mixed precision (bf16 autocast: docs/memory.md)"),
        "activation_checkpointing": Field(str, "none", choices=("none", "level", "block"),
                                          help="recompute activations in backward instead of keeping them: per "
                                               "encoder/decoder level or per block (docs/memory.md)"),
        "micro_batches": Field(int, 1, help="gradient accumulation: forward/backward each per-process batch in "
                                            "this many parts, one optimizer step (same update, less memory)"),
        "process_group_timeout_min": Field(int, 120, help="minutes a process waits for the others (validation, "
                                                          "checkpoints) before the run fails; NCCL's default is 10"),
        "mixing_augs": MIXING_SCHEMA,
    },
    help="optimization",
    aliases={"fix_iterations": "param_fix_iterations"},
)

METRIC_SCHEMA = Section(
    {
        "type": Field(str, help="calculate_psnr | calculate_ssim (or psnr | ssim)"),
        "crop_border": Field(int, 0, help="pixels cropped from every border before scoring"),
        "test_y_channel": Field(bool, False, help="score the Y channel instead of RGB"),
        "ssim_variant": Field(str, "gaussian3d", choices=("gaussian", "gaussian3d", "skimage"),
                              help="SSIM: BasicSR per-channel, 3-D (NAFNet/TDR), or skimage"),
    },
    help="one validation metric",
)

VAL_SCHEMA = Section(
    {
        "val_freq": Field(int, 5000, help="validate every this many steps (and at the end)"),
        "save_img": Field(bool, True, help="write side-by-side PNGs (input | guidance | output | target)"),
        "max_vis_images": Field(int, 4, help="at most this many PNGs per dataset and validation"),
        "metrics": MapOf(METRIC_SCHEMA, help="metric name -> metric"),
        "tile": Field(int, None, help="tiled inference tile size for large validation images"),
        "tile_overlap": Field(int, 32, help="overlap of tiles"),
        "use_ema": Field(bool, True, help="validate the EMA network when EMA is on"),
    },
    help="validation",
    ignored={"rgb2bgr", "use_image", "max_minibatch", "window_size", "pbar", "suffix"},
)

LOGGER_SCHEMA = Section(
    {
        "print_freq": Field(int, 100, help="log the loss and lr every this many steps"),
        "save_checkpoint_freq": Field(int, 5000, help="save weights and the full state every this many steps"),
        "keep_last_states": Field(int, 3, help="how many full training states (and per-step "
                                               "checkpoints/net_g_<step> files) to keep"),
        "use_tb_logger": Field(bool, True, help="TensorBoard scalars under experiments/<name>/logs/"),
        "wandb": Section(
            {"project": Field(str, None, help="wandb project (needs wandb installed)"),
             "resume_id": Field(str, None, help="wandb run id to resume")},
            help="Weights & Biases",
        ),
    },
    help="logging and checkpoint frequency",
    ignored={"check_freq"},
)

RESTORATION_SCHEMA = Section(
    {
        "name": Field(str, help="experiment name; the run lives in experiments/<name>/"),
        "model_type": Field(str, "RefGuidedImageCleanModel", help="BasicSR model type (informational)"),
        "scale": Field(int, 1, choices=(1,), help="upscaling factor (restoration: 1)"),
        "manual_seed": Field(int, 100, help="seed of weights, shuffling and augmentation"),
        "datasets": MapOf(DATASET_SCHEMA, help="train and val* datasets"),
        "network_g": Section({}, open=True, help="network: type (ARCH_REGISTRY) plus constructor kwargs"),
        "path": PATH_SCHEMA,
        "train": TRAIN_SCHEMA,
        "val": VAL_SCHEMA,
        "logger": LOGGER_SCHEMA,
    },
    help="guided restoration training (scripts/train/train_restoration.py)",
    ignored={"num_gpu", "dist_params", "launcher", "is_train", "dist", "rank", "world_size"},
)

__all__ = ["RESTORATION_SCHEMA", "DATASET_SCHEMA"]

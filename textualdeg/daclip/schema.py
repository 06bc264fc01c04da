"""Option schema of DA-CLIP training (``options/train_daclip/*.yml``).

Every key with its type, default and one-line meaning; ``load_options(path,
DACLIP_SCHEMA)`` rejects unknown keys (naming the nearest known one) and coerces
numbers. The ``train``/``path``/``logger`` vocabulary is the other stages' (e.g.
``textualdeg/instruction/schema.py``), so the engine (``textualdeg.engine.Run``) reads
the same keys. Defaults are the official single-GPU recipe (``da-clip/README.md`` of
Algolzw/daclip-uir): AdamW lr 2e-5, betas (0.9, 0.98), eps 1e-6, weight decay 0.05,
100 warm-up steps then cosine decay, batch 784, 30 epochs. See docs/daclip.md.

DA-CLIP: "Controlling Vision-Language Models for Multi-Task Image Restoration"
(Luo et al., ICLR 2024), arXiv:2310.01018.
"""

from __future__ import annotations

from textualdeg.options import Field, ListOf, Section

__all__ = ["DACLIP_SCHEMA", "OFFICIAL_DEGRADATIONS"]

#: The ten degradation names of the official universal dataset (the default of ``datasets.degradations``).
OFFICIAL_DEGRADATIONS = ("motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "raindrop", "rainy",
                         "shadowed", "snowy", "uncompleted")

DACLIP_SCHEMA = Section(
    {
        "name": Field(str, help="experiment name; the run lives in experiments/<name>/"),
        "manual_seed": Field(int, 0, help="seed of the shuffling and the random crops"),
        "datasets": Section(
            {
                "train_csv": Field(str, path=True,
                                   help="tab-separated CSV with columns filepath, title ('caption: degradation')"),
                "val_csv": Field(str, None, path=True, help="the same format, for validation (null: no validation)"),
                "degradations": Field(ListOf(str), list(OFFICIAL_DEGRADATIONS),
                                      help="the degradation names of the run (every CSV row must use one)"),
                "batch_size_per_gpu": Field(int, 784, help="images per batch on each process (official: 784)"),
                "num_worker_per_gpu": Field(int, 0, help="DataLoader workers per process"),
                "dataset_enlarge_ratio": Field(int, 1, help="repeat the training rows this many times per epoch"),
                "val_batch_size": Field(int, 64, help="images per forward pass in validation"),
            },
            help="the DA-CLIP CSV files (textualdeg/daclip/data.py)",
        ),
        "path": Section(
            {
                "pretrained_clip": Field(str, None, path=True,
                                         help="the start: an open_clip CLIP checkpoint, an official DA-CLIP .pt "
                                              "or a DA-CLIP folder (textualdeg.daclip.checkpoint.load_daclip); "
                                              "null: a random CLIP of path.model seeded by manual_seed "
                                              "(tests and demos only)"),
                "model": Field((str, dict), "ViT-B-32",
                               help="open_clip model name, model-config JSON file or inline config of "
                                    "pretrained_clip (unused when pretrained_clip is a DA-CLIP folder)"),
                "experiments_root": Field(str, None, path=True, help="the run folder (default: experiments/<name>)"),
                "resume_state": Field(str, None, path=True, help="state folder (or state root) to resume from"),
                "auto_resume": Field(bool, True,
                                     help="resume from the newest complete state of this run if there is one"),
            },
            help="files and folders",
        ),
        "train": Section(
            {
                "total_iter": Field(int, help="number of optimizer steps"),
                "lr": Field(float, 2e-5, help="AdamW learning rate (official 2e-5)"),
                "beta1": Field(float, 0.9, help="AdamW beta1 (open_clip's ViT default)"),
                "beta2": Field(float, 0.98, help="AdamW beta2 (open_clip's ViT default)"),
                "eps": Field(float, 1e-6, help="AdamW epsilon (open_clip's ViT default)"),
                "weight_decay": Field(float, 0.05,
                                      help="AdamW weight decay of matrices (biases, norms and logit_scale: 0)"),
                "warmup_iter": Field(int, 100, help="linear warm-up steps, then cosine decay to 0 at total_iter"),
                "grad_clip_norm": Field(float, 0.0, help="max global gradient norm (0: no clipping, official)"),
                "mixed_precision": Field(str, "no", choices=("no", "fp16", "bf16"), help="accelerate mixed precision"),
                "process_group_timeout_min": Field(int, 120, help="minutes a process waits for the others"),
            },
            help="optimization (only the controller and logit_scale train; the CLIP is frozen)",
        ),
        "val": Section({"val_freq": Field(int, 1000,
                                          help="validation accuracies every this many steps (and at the end)")},
                       help="validation: degradation classification and caption retrieval on val_csv"),
        "logger": Section(
            {
                "print_freq": Field(int, 20, help="log the loss and lr every this many steps"),
                "save_checkpoint_freq": Field(int, 1000, help="save the full state every this many steps"),
                "keep_last_states": Field(int, 2, help="full training states to keep"),
                "use_tb_logger": Field(bool, True, help="TensorBoard scalars under experiments/<name>/logs/"),
            },
            help="logging and checkpoints",
        ),
    },
    help="DA-CLIP controller training (scripts/train/train_daclip.py)",
)

"""Option schema of the instruction-encoder fine-tuning (``options/train_instruction/*.yml``).

Every key with its type, default and one-line meaning; ``load_options(path,
INSTRUCTION_SCHEMA)`` rejects unknown keys (naming the nearest known one) and coerces
numbers. The ``train``/``path``/``logger`` vocabulary is stage 4's, so the engine
(``textualdeg.engine.Run``) reads the same keys.

TextPromptIR: arXiv:2312.06162. Paper: "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from textualdeg.instruction.phrasings import ALL_TASKS
from textualdeg.options import Field, ListOf, Section

__all__ = ["INSTRUCTION_SCHEMA"]

INSTRUCTION_SCHEMA = Section(
    {
        "name": Field(str, help="experiment name; the run lives in experiments/<name>/"),
        "manual_seed": Field(int, 0, help="seed of the head, the shuffling and the typo augmentation"),
        "datasets": Section(
            {
                "tasks": Field(ListOf(str), list(ALL_TASKS[:3]), help=f"tasks in label order, from {list(ALL_TASKS)}"),
                "holdout_every": Field(int, 4, help="every n-th frame and request of a task is held out (validation)"),
                "typo_prob": Field(float, 0.1,
                                   help="chance that a training sentence gets one typo (seeded per sample)"),
                "batch_size_per_gpu": Field(int, 32, help="sentences per batch on each process"),
                "dataset_enlarge_ratio": Field(int, 1, help="repeat the training sentences this many times per epoch"),
            },
            help="the instruction set (textualdeg/instruction/phrasings.py)",
        ),
        "path": Section(
            {
                "pretrained_bert": Field(str, help="local BERT folder (e.g. pretrained/bert-base-uncased)", path=True),
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
                "lr": Field(float, 2e-5, help="AdamW learning rate of BERT"),
                "head_lr": Field(float, 1e-3, help="AdamW learning rate of the classification head"),
                "weight_decay": Field(float, 0.01, help="AdamW weight decay"),
                "warmup_iter": Field(int, 0, help="linear warm-up steps, then linear decay to 0 at total_iter"),
                "max_length": Field(int, 64, help="tokens kept per instruction (longer ones are cut with a warning)"),
                "grad_clip_norm": Field(float, 1.0, help="max global gradient norm (0: no clipping)"),
                "mixed_precision": Field(str, "no", choices=("no", "fp16", "bf16"), help="accelerate mixed precision"),
                "process_group_timeout_min": Field(int, 120, help="minutes a process waits for the others"),
            },
            help="optimization",
        ),
        "val": Section({"val_freq": Field(int, 100, help="held-out accuracy every this many steps (and at the end)")},
                       help="validation"),
        "logger": Section(
            {
                "print_freq": Field(int, 20, help="log the loss and lr every this many steps"),
                "save_checkpoint_freq": Field(int, 200, help="save the full state every this many steps"),
                "keep_last_states": Field(int, 2, help="full training states to keep"),
                "use_tb_logger": Field(bool, True, help="TensorBoard scalars under experiments/<name>/logs/"),
            },
            help="logging and checkpoints",
        ),
    },
    help="instruction-encoder fine-tuning (scripts/train/train_instruction_encoder.py)",
)

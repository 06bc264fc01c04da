"""Fine-tune the instruction encoder: BERT + head learn which task an instruction names.

Runs under the training engine (``textualdeg.engine.Run``): experiment folder, resumable
full state (weights, optimizer, schedule, data position), TensorBoard, held-out accuracy
in ``logs/val_metrics.jsonl``. Training sentences are the instruction set's training
phrasings (``phrasings.instruction_split``), each with one seeded typo at
``datasets.typo_prob``; validation is the accuracy on the held-out phrasings. The result,
``experiments/<name>/instruction_encoder/``, is a folder ``InstructionEncoder.from_pretrained``
loads (the stage-4 option files name it in ``path.instruction_encoder``).

    accelerate launch scripts/train/train_instruction_encoder.py \
        -opt options/train_instruction/textpromptir_bert_base.yml
    python scripts/train/train_instruction_encoder.py -opt options/train_instruction/textpromptir_tiny_cpu.yml

TextPromptIR: arXiv:2312.06162. Paper: "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from textualdeg.data.sampling import EpochSampler, sample_seed
from textualdeg.engine import Run, Schedule, StepFn, ValidateFn, build_trackers
from textualdeg.instruction.encoder import InstructionEncoder
from textualdeg.instruction.phrasings import instruction_split
from textualdeg.instruction.schema import INSTRUCTION_SCHEMA
from textualdeg.log import get_logger
from textualdeg.options import Options, parse_options

logger = get_logger(__name__)

__all__ = ["InstructionDataset", "add_typo", "evaluate_accuracy", "train_instruction_encoder", "main"]

_TYPO_STREAM = 11  # the sample_seed stream of the typo augmentation
_DROPOUT_STREAM = 12  # the sample_seed stream of BERT's dropout masks in a step
OUTPUT_FOLDER = "instruction_encoder"


def add_typo(text: str, rng: random.Random) -> str:
    """One keyboard slip in ``text``: a letter dropped, doubled, swapped with the next, or replaced."""
    positions = [i for i, c in enumerate(text) if c.isalpha()]
    if len(positions) < 2:
        return text
    i = rng.choice(positions[:-1])
    kind = rng.randrange(4)
    if kind == 0:
        return text[:i] + text[i + 1:]
    if kind == 1:
        return text[:i] + text[i] + text[i:]
    if kind == 2:
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return text[:i] + rng.choice(string.ascii_lowercase) + text[i + 1:]


class InstructionDataset(Dataset):
    """(sentence, label) pairs indexed by ``(epoch, index)`` (``EpochSampler``), with seeded typos.

    Args:
        pairs (Sequence[tuple[str, int]]): the sentences and their task labels.
        seed (int): ``manual_seed``.
        typo_prob (float): chance of one typo per item, drawn from (seed, epoch, index).
    """

    def __init__(self, pairs: Sequence[tuple[str, int]], seed: int = 0, typo_prob: float = 0.0) -> None:
        if not 0.0 <= typo_prob <= 1.0:
            raise ValueError(f"typo_prob={typo_prob}: expected a probability in [0, 1]")
        self.pairs, self.seed, self.typo_prob = list(pairs), int(seed), float(typo_prob)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        text, label = self.pairs[index]
        rng = random.Random(sample_seed(_TYPO_STREAM, self.seed, epoch, index))
        if rng.random() < self.typo_prob:
            text = add_typo(text, rng)
        return {"text": text, "label": label}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"text": [it["text"] for it in items], "label": torch.tensor([it["label"] for it in items])}


@torch.no_grad()
def evaluate_accuracy(encoder: InstructionEncoder, pairs: Sequence[tuple[str, int]], batch_size: int = 64) -> float:
    """Fraction of ``pairs`` whose predicted task index equals the label (eval mode, then train mode back)."""
    was_training = encoder.training
    encoder.eval()
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        logits = encoder(**encoder.tokenize([t for t, _ in chunk]))[1]
        correct += int((logits.argmax(-1).cpu() == torch.tensor([y for _, y in chunk])).sum())
    encoder.train(was_training)
    return correct / max(1, len(pairs))


def build_optimizer(encoder: InstructionEncoder, opt: Options) -> torch.optim.Optimizer:
    """AdamW: BERT at ``train.lr``, the head at ``train.head_lr``."""
    t = opt.train
    return torch.optim.AdamW([
        {"params": list(encoder.bert.parameters()), "lr": t.lr, "name": "bert"},
        {"params": list(encoder.classifier.parameters()), "lr": t.head_lr, "name": "head"},
    ], weight_decay=t.weight_decay)


def build_warmup_linear_schedule(optimizer: torch.optim.Optimizer,
                                 opt: Options) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``train.warmup_iter`` steps, then linear decay to 0 at ``train.total_iter``."""
    warmup, total = max(0, opt.train.warmup_iter), opt.train.total_iter

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step_function(opt: Options, accelerator: Any, model: Any, optimizer: torch.optim.Optimizer) -> StepFn:
    encoder = accelerator.unwrap_model(model)
    clip = opt.train.grad_clip_norm
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []

    def step_fn(batch: dict[str, Any], step: int, micro: int) -> dict[str, torch.Tensor]:
        tokens = encoder.tokenize(batch["text"])
        # BERT's dropout draws from the global generators: seed them from the step's position
        # (the loader consumes global randomness at every new epoch iterator, so a resumed
        # run would otherwise draw other masks)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sample_seed(_DROPOUT_STREAM, opt.manual_seed, step, micro, accelerator.process_index))
            with accelerator.autocast():
                logits = model(**tokens)[1]
                loss = F.cross_entropy(logits.float(), batch["label"].to(logits.device))
            accelerator.backward(loss)
        if clip > 0 and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach()}

    return step_fn


def _validation(accelerator: Any, model: Any, val_pairs: Sequence[tuple[str, int]], tasks: Sequence[str]) -> ValidateFn:
    def validate(step: int) -> list[dict[str, Any]]:
        if not accelerator.is_main_process:
            return []
        accuracy = evaluate_accuracy(accelerator.unwrap_model(model), val_pairs)
        accelerator.log({"val/accuracy": accuracy}, step=step)
        logger.info("step %d: held-out phrasing accuracy %.4f (%d sentences, chance %.3f)", step, accuracy,
                    len(val_pairs), 1 / len(tasks))
        return [{"accuracy": accuracy, "num_sentences": len(val_pairs)}]

    return validate


def train_instruction_encoder(opt: Options) -> Path:
    """Fine-tune BERT + head on the instruction set; returns the ``instruction_encoder/`` folder.

    Raises:
        textualdeg.pretrained.bert.BertFolderError: ``path.pretrained_bert`` lacks a part.
        textualdeg.experiment.ExperimentLocked: another run is using the run folder.
    """
    ds, t = opt.datasets, opt.train
    when = Schedule(t.total_iter, opt.logger.print_freq, opt.logger.save_checkpoint_freq, opt.val.val_freq,
                    validate_at_end=True)
    with Run.open(opt, log_with=build_trackers(opt.logger.use_tb_logger)) as run:
        accelerator = run.accelerator
        split = instruction_split(ds.tasks, ds.holdout_every)
        encoder = InstructionEncoder.from_pretrained(opt.path.pretrained_bert, tasks=split.tasks,
                                                     max_length=t.max_length)
        optimizer = build_optimizer(encoder, opt)
        scheduler = build_warmup_linear_schedule(optimizer, opt)
        dataset = InstructionDataset(split.train, opt.manual_seed, ds.typo_prob)
        global_batch = ds.batch_size_per_gpu * accelerator.num_processes
        loader = DataLoader(dataset, batch_size=ds.batch_size_per_gpu, drop_last=True, collate_fn=_collate,
                            sampler=EpochSampler(len(dataset), global_batch, opt.manual_seed, True,
                                                 ds.dataset_enlarge_ratio))
        model, optimizer, loader, scheduler = accelerator.prepare(encoder, optimizer, loader, scheduler)
        n_bert = sum(p.numel() for p in encoder.bert.parameters())
        logger.info("***** Running training *****")
        logger.info("  tasks %s; %d training / %d held-out sentences", list(split.tasks), len(split.train),
                    len(split.val))
        logger.info("  BERT %s: %d parameters, embedding width %d", opt.path.pretrained_bert, n_bert,
                    encoder.embedding_dim)
        logger.info("  total batch %d, %d steps, lr %.2e (head %.2e)", global_batch, t.total_iter, t.lr, t.head_lr)
        run.begin("instruction_encoder", keep_last=opt.logger.keep_last_states)
        folder = run.exp_dir / OUTPUT_FOLDER

        def save_weights(step: int) -> None:
            accelerator.unwrap_model(model).save_pretrained(folder)

        run.loop(loader, scheduler, _step_function(opt, accelerator, model, optimizer), when,
                 validate=_validation(accelerator, model, split.val, split.tasks), save_weights=save_weights,
                 desc="instruction encoder")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_weights(run.step)
        accelerator.wait_for_everyone()
    return folder


def main(argv: Sequence[str] | None = None) -> Path:
    """``scripts/train/train_instruction_encoder.py -opt FILE [--set k=v ...]``."""
    description = "Fine-tune the TextPromptIR instruction encoder (BERT + task head)."
    return train_instruction_encoder(parse_options(argv, INSTRUCTION_SCHEMA, description))

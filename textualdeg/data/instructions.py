"""Instructions for training items: each sample gets a phrasing of its task, seeded per sample.

TextPromptIR (arXiv:2312.06162) trains with a random sentence of the sample's task from its
instruction list (the official code draws it with the unseeded ``random`` module, once per
``__getitem__``). :class:`WithInstructions` wraps a stage-4 training dataset: an item whose
``task`` is ``denoise_25`` gets one of the training phrasings of ``denoise``
(``textualdeg.instruction.phrasings``), drawn from ``sample_seed(stream, seed, epoch,
index)``, so a resumed run, another process count or another worker count gives every
sample the same sentence. A dataset without per-item tasks takes one fixed ``instruction``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from textualdeg.data.sampling import sample_seed
from textualdeg.instruction.phrasings import task_of_restoration_task

__all__ = ["INSTRUCTION_STREAM", "WithInstructions"]

INSTRUCTION_STREAM = 7  # the sample_seed stream of the instruction choice


class WithInstructions(Dataset):
    """Adds ``item["instruction"]`` (a sentence) to every item of ``dataset``.

    Args:
        dataset (Dataset): a training dataset; its items may carry ``task``.
        phrasings (Mapping[str, Sequence[str]]): instruction task -> training sentences.
        seed (int): ``manual_seed``.
        fixed (str | None): the sentence of items without ``task`` (None: such an item is an error).
    """

    def __init__(self, dataset: Dataset, phrasings: Mapping[str, Sequence[str]], seed: int,
                 fixed: str | None = None) -> None:
        self.dataset = dataset
        self.phrasings = {task: list(sentences) for task, sentences in phrasings.items()}
        self.seed, self.fixed, self.epoch = int(seed), fixed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (and pass it on to a dataset that has epochs)."""
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's attributes (name, gray_to_rgb...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        if "task" not in item:
            if self.fixed is None:
                raise ValueError("the training items carry no 'task': set datasets.train.instruction "
                                 "(the sentence every sample gets)")
            item["instruction"] = self.fixed
            return item
        task = task_of_restoration_task(str(item["task"]))
        if task not in self.phrasings:
            raise ValueError(f"training task {item['task']!r} ({task}) is not one the instruction encoder "
                             f"knows: {sorted(self.phrasings)}")
        rng = random.Random(sample_seed(INSTRUCTION_STREAM, self.seed, self.epoch, int(index)))
        item["instruction"] = rng.choice(self.phrasings[task])
        return item

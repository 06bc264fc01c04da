"""Deterministic, resumable sampling shared by every training loop (stages 1, 2 and 4).

``EpochSampler`` yields ``(epoch, index)`` pairs whose order depends only on
``(seed, epoch)``, so a resumed run, or a run on another number of processes with the
same global batch, sees exactly the same samples; ``DataPosition`` is the small object a
loop registers for checkpointing so that resume restarts at the right batch.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

ORDER_STREAM = 1  # the stream id of the epoch permutation in sample_seed


def sample_seed(*keys: int) -> int:
    """A 32-bit seed derived from non-negative integer keys (stream, seed, epoch, ...)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: a seeded permutation per epoch, cut to whole global batches.

    The epoch is truncated to a multiple of ``global_batch`` so every process gets the
    same number of full batches and two processes see exactly the samples one process
    would see with the doubled batch.

    Args:
        num_items (int): dataset length.
        global_batch (int): batch per process x processes (x gradient accumulation).
        seed (int): ``manual_seed``.
        shuffle (bool): permute each epoch (else the natural order).
        enlarge_ratio (int): repeat the dataset this many times per epoch.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int = 0, shuffle: bool = True,
                 enlarge_ratio: int = 1) -> None:
        total = num_items * max(1, enlarge_ratio)
        if global_batch < 1 or total < global_batch:
            raise ValueError(
                f"the training set has {num_items} samples (x{enlarge_ratio}), fewer than one global batch of "
                f"{global_batch} (batch x processes x accumulation); lower datasets.train.batch_size_per_gpu or add images"
            )
        self.num_items, self.total = num_items, total
        self.length = total // global_batch * global_batch
        self.seed, self.shuffle, self.epoch = int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(ORDER_STREAM, self.seed, self.epoch))
            order = torch.randperm(self.total, generator=generator)[: self.length].tolist()
        else:
            order = list(range(self.length))
        return iter([(self.epoch, i % self.num_items) for i in order])


class DataPosition:
    """Epoch and batches consumed in it; registered for checkpointing (exact data resume)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batches = 0

    def state_dict(self) -> dict[str, int]:
        """The position as a plain dict."""
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore from :meth:`state_dict`."""
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])


__all__ = ["DataPosition", "EpochSampler", "ORDER_STREAM", "sample_seed"]

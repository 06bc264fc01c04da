"""Gradient accumulation in stage 4: one loaded batch, several forward/backward passes.

``train.micro_batches: k`` splits every per-process batch (after the progressive crop)
into ``k`` micro-batches along the batch dimension; each is forwarded and back-propagated
on its own with its loss weighted by its share of the batch, and the optimizer steps once.
The data loader, the sampler and the lr schedule see the same batches as with ``k = 1``,
so exact resume and the process-count equality hold unchanged, and the update equals the
whole batch's (every stage-4 loss is a mean over the batch; the refined path's
correspondence loss draws its random moves per micro-batch). Only one micro-batch's
activations are alive at a time: this keeps the authors' effective batch where the whole
batch does not fit (docs/memory.md).

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["split_batch"]


def split_batch(batch: dict[str, Any], count: int) -> list[tuple[dict[str, Any], float]]:
    """``batch`` as at most ``count`` micro-batches with the share of the batch each holds.

    Tensors are split along dim 0 (``torch.tensor_split``: sizes differ by at most one),
    lists and tuples (file paths) likewise; other values are shared. A batch smaller than
    ``count`` gives one micro-batch per sample.

    Args:
        batch: collated batch, ``lq``/``gt`` (B, C, h, w), ``ref`` (B, C, Hr, Wr), paths.
        count: micro-batches wanted (``train.micro_batches``), >= 1.

    Returns:
        ``[(micro_batch, size / B), ...]``; the shares sum to 1.
    """
    if count < 1:
        raise ValueError(f"train.micro_batches must be >= 1, got {count}")
    size = int(batch["lq"].shape[0])
    parts = min(count, size)
    if parts == 1:
        return [(batch, 1.0)]
    bounds = [len(chunk) for chunk in torch.tensor_split(torch.arange(size), parts)]
    out, start = [], 0
    for length in bounds:
        micro = {key: _take(value, start, length, size) for key, value in batch.items()}
        out.append((micro, length / size))
        start += length
    return out


def _take(value: Any, start: int, length: int, size: int) -> Any:
    """Rows ``start:start + length`` of a per-sample value; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
        return value[start:start + length]
    if isinstance(value, (list, tuple)) and len(value) == size:
        return type(value)(value[start:start + length])
    return value

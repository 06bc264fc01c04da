"""DA-CLIP embeddings as a condition of a restoration network (stages 4 and 5, ``restore``).

A DA-CLIP conditioned network (``restoration/archs/daclip_conditioning.py``) is called as
``model(x, ..., daclip=e)`` with e (B, 2, D): the content and the degradation embedding of
each input. They come from a frozen DA-CLIP (``path.daclip``) on the device:

* in training, batched in the step, from the LQ crops the network sees (as the official
  IR-SDE training embeds its LQ patches), never in a data-loader worker;
* in validation, evaluation and ``textualdeg restore``, once per image from the whole
  image, before any tiling, so every tile shares them (``ConditionedNetwork``).

DA-CLIP: Luo et al., "Controlling Vision-Language Models for Multi-Task Image
Restoration", ICLR 2024, arXiv:2310.01018 (docs/daclip.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textualdeg.log import get_logger

logger = get_logger(__name__)

__all__ = ["daclip_view", "embed_inputs", "load_condition_embedder"]


def daclip_view(lq: torch.Tensor) -> torch.Tensor:
    """The RGB picture DA-CLIP sees of a network input.

    Args:
        lq: (B, C, H, W) in [0, 1]: C = 3 (RGB), 1 (gray: repeated) or 6 (a dual-pixel
            pair: the mean of its two views).

    Returns:
        (B, 3, H, W).
    """
    channels = lq.shape[1]
    if channels == 3:
        return lq
    if channels == 1:
        return lq.expand(-1, 3, -1, -1)
    if channels == 6:
        return lq.unflatten(1, (2, 3)).mean(dim=1)
    raise ValueError(f"DA-CLIP embeds RGB, gray or dual-pixel inputs; got {channels} channels")


@torch.no_grad()
def embed_inputs(embedder: Any, lq: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) network inputs in [0, 1] -> (B, 2, D) DA-CLIP embeddings, on ``lq``'s device."""
    return embedder.embed(daclip_view(lq.float())).to(lq.device)


def load_condition_embedder(daclip_path: str | None, model: nn.Module, device: torch.device | str,
                            owner: str = "path.daclip") -> Any:
    """The frozen DA-CLIP of a conditioned network, on ``device``; None for any other network.

    Args:
        daclip_path: ``path.daclip``: a DA-CLIP file or folder (``textualdeg.daclip.checkpoint.load_daclip``).
        model: the restoration network, unwrapped (``takes_daclip`` and ``daclip_dim`` are read).
        device: where the embeddings are computed.
        owner: how the option is named in errors.

    Raises:
        ValueError: a conditioned network without ``daclip_path``, or a DA-CLIP whose
            embedding width is not the network's ``daclip_dim``.
    """
    if not getattr(model, "takes_daclip", False):
        if daclip_path:
            logger.warning("%s=%s ignored: %s reads no DA-CLIP embedding", owner, daclip_path, type(model).__name__)
        return None
    if not daclip_path:
        raise ValueError(f"{type(model).__name__} is conditioned on DA-CLIP embeddings: set {owner} to a DA-CLIP "
                         f"file or folder (the official daclip_ViT-B-32.pt, or experiments/<name>/daclip of "
                         f"scripts/train/train_daclip.py)")
    from textualdeg.daclip.embedder import DAClipEmbedder

    embedder = DAClipEmbedder.from_pretrained(daclip_path, device)
    width = getattr(model, "daclip_dim", None)
    if width is not None and embedder.embed_dim != width:
        raise ValueError(f"{owner}={daclip_path} embeds to width {embedder.embed_dim}, but network_g.daclip_dim "
                         f"of {type(model).__name__} is {width}")
    logger.info("DA-CLIP %s: embeddings of width %d on %s", daclip_path, embedder.embed_dim, device)
    return embedder

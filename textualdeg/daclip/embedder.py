"""A frozen DA-CLIP that turns [0, 1] images into the (content, degradation) pair IR-SDE uses.

Preprocessing follows the official restoration code (universal-image-restoration
``data/util.py`` ``clip_transform``, also in ``config/daclip-sde/app.py``): the image in
[0, 1] is converted to uint8 by truncation (``(x * 255).astype(np.uint8)``), resized with
PIL bicubic so its *shorter* side is the model's input size (aspect ratio kept), centre
cropped to a square, and normalised with the OpenAI CLIP mean/std. Here the same steps run
on tensors, batched, on the model's device: truncation to 1/255 steps, antialiased bicubic
``interpolate`` (torchvision's tensor path, which follows PIL's antialiased kernel),
rounding to 1/255 steps with clipping (PIL returns uint8), centre crop, normalisation. The
only difference left is the resampling arithmetic (float here, PIL's fixed-point there).

The embeddings are returned *un-normalised*, as the official IR-SDE feeds them
(``test.py``: ``image_context, degra_context = clip_model.encode_image(img4clip,
control=True)``). ``classify`` is the official degradation classifier (README example):
``softmax(100 * normalised degradation embedding @ normalised text embeddings)`` over the
bare degradation names.

Paper: "Controlling Vision-Language Models for Multi-Task Image Restoration" (Luo et al.,
ICLR 2024), arXiv:2310.01018; official code github.com/Algolzw/daclip-uir (commit
90c957438f69d251a7a57cceadab67092f622df7 for ``da-clip/src``). See docs/daclip.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from textualdeg.daclip.model import DEGRADATIONS, DAClip, tokenize
from textualdeg.log import get_logger

logger = get_logger(__name__)


def _resize_shorter_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``Resize(size)`` (bicubic, antialias) + ``CenterCrop(size)``: (B, 3, H, W) -> (B, 3, S, S)."""
    height, width = images.shape[-2:]
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if height <= width else (new_long, size)
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


class DAClipEmbedder:
    """Frozen DA-CLIP in eval mode on ``device``: ``embed`` gives (B, 2, D) per batch.

    Args:
        model: the DA-CLIP (moved to ``device``, frozen, put in eval mode).
        device: where it runs.
    """

    def __init__(self, model: DAClip, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.degradations: tuple[str, ...] = DEGRADATIONS
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None, device: torch.device | str = "cpu") -> "DAClipEmbedder":
        """Load through ``load_daclip`` (official file, ``save_daclip`` folder or plain CLIP).

        The degradation names for :meth:`classify` come from ``read_degradations(path)``.

        Raises:
            ValueError: ``path`` is None or empty (the option ``path.daclip`` is not set).
        """
        from textualdeg.daclip.checkpoint import load_daclip, read_degradations

        if path is None or str(path).strip() == "":
            raise ValueError(
                "no DA-CLIP checkpoint: set the option `path.daclip` to the official daclip_ViT-B-32.pt "
                "or a folder written by save_daclip"
            )
        embedder = cls(load_daclip(path, map_location="cpu"), device=device)
        embedder.degradations = read_degradations(path)
        return embedder

    @property
    def embed_dim(self) -> int:
        """Width D of each embedding."""
        return self.model.embed_dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], any device -> (B, 3, S, S) normalised, float32, on ``self.device``.

        As the official ``clip_transform`` (module docstring): uint8 truncation, shorter
        side resized to S (bicubic, antialias), centre crop, OpenAI mean/std.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        x = torch.floor(x.clamp(0.0, 1.0) * 255.0) / 255.0  # (np_image * 255).astype(np.uint8)
        x = _resize_shorter_center_crop(x, self.model.image_size)  # (B, 3, S, S)
        x = torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0  # PIL resize returns uint8
        mean = torch.tensor(self.model.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.model.image_std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std  # (B, 3, S, S)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 2, D): [:, 0] content, [:, 1] degradation (not normalised)."""
        content, degradation = self.model.encode_image(self.preprocess(images), control=True)  # (B, D) x 2
        return torch.stack([content, degradation], dim=1).float()  # (B, 2, D)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (K, D) of ``texts``, cached per tuple of texts."""
        key = tuple(texts)
        if key not in self._text_cache:
            tokens = tokenize(key, context_length=self.model.context_length).to(self.device)  # (K, L)
            self._text_cache[key] = self.model.encode_text(tokens, normalize=True).float()  # (K, D)
        return self._text_cache[key]

    @torch.no_grad()
    def classify(self, images: torch.Tensor, degradations: Sequence[str] = DEGRADATIONS) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, K) probabilities over the bare degradation names.

        ``softmax(100 * normalise(degradation embedding) @ normalise(text(names)).T)``, as
        the official usage example.
        """
        if len(degradations) == 0:
            raise ValueError("classify needs at least one degradation name")
        _, degradation = self.model.encode_image(self.preprocess(images), control=True, normalize=True)
        logits = 100.0 * degradation.float() @ self.text_features(degradations).T  # (B, K)
        return logits.softmax(dim=-1)

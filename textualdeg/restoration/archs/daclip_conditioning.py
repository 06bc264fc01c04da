"""DA-CLIP conditioning of a backbone: content by cross-attention, degradation by modulation.

DA-CLIP ("Controlling Vision-Language Models for Multi-Task Image Restoration", Luo et
al., ICLR 2024; ``Algolzw/daclip-uir``) gives per image a *content* embedding and a
*degradation* embedding, each (B, D) (D = 512 for ViT-B-32). Its own restoration network
(the IR-SDE ``ConditionalUNet``) cross-attends to the content embedding and feeds the
degradation embedding, through a learned prompt, into the scale/shift of its residual
blocks. Here the same two routes are added to our backbones (docs/daclip_conditioning.md):

* content: the embedding is projected to ``tokens`` context tokens of the level's width
  (one token would make cross-attention a per-image constant, whatever the pixel) and the
  layer-normed feature pixels attend to them; the attention output is added residually
  through a zero-initialised projection;
* degradation: a zero-initialised linear map gives a per-channel scale ``s`` and shift
  ``b``, and the feature becomes ``x * (1 + s) + b``.

Both start as identities, so a freshly built conditioned network holding a plain
(or guided) backbone's weights computes exactly that backbone.

A conditioned class lists :class:`DAClipConditionMixin` first (as ``ReferenceGuidedMixin``)
and calls :meth:`DAClipConditionMixin._init_daclip` after its backbone's constructor. The
mixin wraps the backbone's ``_forward_padded(inp, ..., fuse=...)`` hook: at each fused
level (each encoder level's input and the bottleneck) the existing ``fuse`` (the guidance
fusion of a guided model) runs first, then the level's :class:`DAClipBlock`. Networks read
the embeddings as one keyword, ``daclip``: a (B, 2, D) tensor, ``daclip[:, 0]`` the
content and ``daclip[:, 1]`` the degradation embedding. Every new parameter is named
``daclip_blocks.<level>.<...>``, so the backbone's keys are unchanged and plain or guided
checkpoints load with ``strict=False`` (exactly the ``daclip_`` keys missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.restoration.archs.backbone_base import FuseFn, PaddedBackbone, check_image_input
from textualdeg.restoration.archs.memory import active_checkpointing, checkpoint_call
from textualdeg.restoration.archs.norms import LayerNorm2d

__all__ = ["DAClipBlock", "DAClipConditionMixin"]


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class DAClipBlock(nn.Module):
    """Condition a (B, C, H, W) feature on the DA-CLIP content and degradation embeddings.

    ``x + proj(attn(norm(x), tokens(content)))`` then ``* (1 + s) + b`` with
    ``(s, b) = modulation(degradation)``; ``proj`` and ``modulation`` start at zero, so the
    block starts as the identity (exactly).

    Args:
        channels (int): feature channels C.
        daclip_dim (int): embedding width D.
        tokens (int): context tokens the content embedding is projected to.
        heads (int): attention heads (must divide C).

    Attributes:
        checkpointing (str): set by ``memory.apply_activation_checkpointing``; in either
            mode (``level`` or ``block``) the block is one checkpointed region.
    """

    checkpointing: str = "none"

    def __init__(self, channels: int, daclip_dim: int, tokens: int, heads: int) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("daclip_dim", daclip_dim), ("tokens", tokens), ("heads", heads)):
            _positive_int(name, value)
        if channels % heads:
            raise ValueError(f"daclip_heads={heads} must divide the conditioned width {channels}")
        self.channels, self.tokens, self.heads = channels, tokens, heads
        # content: D -> tokens x C context, layer-normed per token
        self.context = nn.Linear(daclip_dim, tokens * channels)
        self.context_norm = nn.LayerNorm(channels)
        # cross-attention: pixels (queries) to the context tokens
        self.norm = LayerNorm2d(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        # degradation: per-channel scale and shift
        self.modulation = nn.Linear(daclip_dim, 2 * channels)
        for layer in (self.proj, self.modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, content: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        """Args:
            x (Tensor): (B, C, H, W) feature.
            content (Tensor): (B, D) content embedding.
            degradation (Tensor): (B, D) degradation embedding.

        Returns:
            Tensor: (B, C, H, W) (``x`` itself while ``proj`` and ``modulation`` are zero).
        """
        if active_checkpointing(self) != "none":  # archs/memory.py
            return checkpoint_call(self, self._condition, x, content, degradation)
        return self._condition(x, content, degradation)

    def _condition(self, x: torch.Tensor, content: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n, d = self.heads, c // self.heads
        context = self.context_norm(self.context(content).view(b, self.tokens, c))  # (B, T, C)
        q = self.to_q(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        k, v = self.to_kv(context).chunk(2, dim=-1)  # (B, T, C) each
        q = q.view(b, h * w, n, d).transpose(1, 2)  # (B, n, HW, d)
        k = k.view(b, self.tokens, n, d).transpose(1, 2)  # (B, n, T, d)
        v = v.view(b, self.tokens, n, d).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, n, HW, d)
        attended = self.proj(attended.transpose(1, 2).reshape(b, h * w, c))  # (B, HW, C)
        x = x + attended.transpose(1, 2).reshape(b, c, h, w)
        scale, shift = self.modulation(degradation).chunk(2, dim=-1)  # (B, C) each
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class DAClipConditionMixin:
    """DA-CLIP conditioning for a backbone exposing ``_forward_padded(inp, ..., fuse=...)``.

    Subclasses (``class DAClipX(DAClipConditionMixin, X)``) call :meth:`_init_daclip` after
    the backbone's constructor, with the widths of the levels ``fuse`` is called at, and
    define ``forward`` with a keyword ``daclip`` (``_daclip_forward`` for a plain backbone,
    ``ReferenceGuidedMixin._guided_forward(..., daclip=e)`` for a guided one).

    Attributes set by :meth:`_init_daclip`:
        daclip_blocks (nn.ModuleList): one :class:`DAClipBlock` per fused level.
        daclip_dim (int): embedding width D.
        daclip_tokens (int): context tokens per level.
        daclip_heads (int): cross-attention heads.
    """

    #: the network reads DA-CLIP embeddings (``model(..., daclip=e)``, e of shape (B, 2, D))
    takes_daclip = True
    daclip_blocks: nn.ModuleList
    daclip_dim: int

    def _init_daclip(self, level_channels: Sequence[int], daclip_dim: int, daclip_tokens: int,
                     daclip_heads: int) -> None:
        """Build one :class:`DAClipBlock` per fused level.

        Args:
            level_channels (Sequence[int]): width of the feature ``fuse(level, x)`` sees, per
                level (finest first; the last is the bottleneck).
            daclip_dim (int): embedding width D (512 for DA-CLIP ViT-B-32).
            daclip_tokens (int): context tokens the content embedding becomes (>= 1; with
                one token the cross-attention is a per-image constant).
            daclip_heads (int): attention heads; must divide every level width.
        """
        self.daclip_dim = _positive_int("daclip_dim", daclip_dim)
        self.daclip_tokens = _positive_int("daclip_tokens", daclip_tokens)
        self.daclip_heads = _positive_int("daclip_heads", daclip_heads)
        bad = [c for c in level_channels if c % daclip_heads]
        if bad:
            raise ValueError(f"daclip_heads={daclip_heads} must divide every conditioned width "
                             f"{tuple(level_channels)}; it does not divide {bad}")
        self.daclip_blocks = nn.ModuleList(
            DAClipBlock(c, daclip_dim, daclip_tokens, daclip_heads) for c in level_channels
        )

    def _check_daclip(self, daclip: Any, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """``daclip`` as ``dtype`` after checking it is a (batch, 2, daclip_dim) tensor."""
        name = type(self).__name__
        expected = f"({batch}, 2, {self.daclip_dim})"
        if daclip is None:
            raise ValueError(
                f"{name} needs the DA-CLIP embedding (path.daclip): call it with daclip= a tensor of shape "
                f"{expected} (content, degradation)"
            )
        if not isinstance(daclip, torch.Tensor):
            raise ValueError(f"{name}: daclip must be a tensor of shape {expected}, got {type(daclip).__name__}")
        if tuple(daclip.shape) != (batch, 2, self.daclip_dim):
            raise ValueError(
                f"{name}: daclip must have shape {expected} (batch, [content, degradation], daclip_dim); "
                f"got {tuple(daclip.shape)}"
            )
        return daclip.to(dtype)

    def _daclip_fuse(self, fuse: FuseFn | None, daclip: torch.Tensor | None) -> FuseFn:
        """``fuse`` (if any) followed by the level's DA-CLIP block."""
        if daclip is None:
            raise ValueError(f"{type(self).__name__} needs the DA-CLIP embedding (path.daclip): "
                             f"daclip= a (B, 2, {self.daclip_dim}) tensor")
        content, degradation = daclip[:, 0], daclip[:, 1]  # (B, D) each
        blocks = self.daclip_blocks

        def conditioned(level: int, x: torch.Tensor) -> torch.Tensor:
            if fuse is not None:
                x = fuse(level, x)
            return blocks[level](x, content, degradation)

        return conditioned

    def _forward_padded(self, inp: torch.Tensor, *args: Any, fuse: FuseFn | None = None,
                        daclip: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The backbone's ``_forward_padded`` with ``fuse`` followed by the DA-CLIP blocks."""
        return super()._forward_padded(inp, *args, fuse=self._daclip_fuse(fuse, daclip), **kwargs)  # type: ignore[misc]

    def _forward_stages_padded(self, inp: torch.Tensor, *args: Any, fuse: FuseFn | None = None,
                               daclip: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The backbone's ``_forward_stages_padded`` with the DA-CLIP blocks (multi-stage backbones)."""
        return super()._forward_stages_padded(  # type: ignore[misc]
            inp, *args, fuse=self._daclip_fuse(fuse, daclip), **kwargs
        )

    def _daclip_forward(self, x: torch.Tensor, daclip: Any, stages: bool = False,
                        **backbone_inputs: Any) -> Any:
        """The plain backbone's ``forward`` (check, pad, run, crop) with the DA-CLIP blocks.

        Args:
            x (Tensor): (B, C, H, W) input in [0, 1], any H and W.
            daclip (Tensor): (B, 2, daclip_dim) content and degradation embeddings.
            stages (bool): every output of a multi-stage backbone (raises ``ValueError`` for a
                single-output one, as the backbone does).
            **backbone_inputs: further keywords of the backbone's ``_forward_padded``
                (TextPromptIR's ``text_embedding``).
        """
        check_image_input(x, self.input_channels)  # type: ignore[attr-defined]  (the image's error first)
        e = self._check_daclip(daclip, x.shape[0], x.dtype)
        return PaddedBackbone.forward(self, x, stages, daclip=e, **backbone_inputs)  # type: ignore[arg-type]

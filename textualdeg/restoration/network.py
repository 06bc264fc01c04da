"""The restoration network of a run: built from ``network_g``, weights loaded, guided or not.

Training (``textualdeg.restoration.train.build_model``), stage-5 evaluation
(``textualdeg.evaluation``) and ``textualdeg restore`` all build their network with
:func:`build_network`: ``ARCH_REGISTRY`` builds ``network_g`` (``type`` plus the
constructor kwargs, as BasicSR's ``build_network``), then
``textualdeg.checkpoint.load_network_weights`` loads the weight file, naming the file and
the first mismatched keys when it does not fit. :func:`is_guided` says whether the network
takes a guidance image (``model(x, ref)``), :func:`takes_instruction` whether it reads an
instruction embedding (``model(x, text_embedding)``, TextPromptIR); a network can do both
(``model(x, ref, text_embedding=...)``, GuidedTextPromptIR). :func:`takes_daclip` says
whether it reads DA-CLIP's embeddings (``model(x, ..., daclip=e)`` with e (B, 2, D): content
and degradation, ``restoration/archs/daclip_conditioning.py``). ``ConditionedNetwork`` fixes
an instruction and/or a DA-CLIP embedding for inference (``InstructedNetwork``: an
instruction only).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
from textualdeg.checkpoint import load_network_weights
from textualdeg.registry import ARCH_REGISTRY

#: Prefix of the reference-encoder and fusion parameters of guided networks (the authors' names).
REF_PREFIX = "masa_"


def is_guided(model: nn.Module) -> bool:
    """True when ``model`` has reference/fusion (``masa_*``) parameters: it is called as ``model(x, ref)``.

    An :class:`InstructedNetwork` is guided when the network it wraps is.
    """
    if isinstance(model, ConditionedNetwork):
        model = model.model
    return any(name.startswith(REF_PREFIX) for name, _ in model.named_parameters())


def takes_instruction(model: nn.Module) -> bool:
    """True when ``model`` reads an instruction embedding: it is called as ``model(x, text_embedding)``."""
    return bool(getattr(model, "takes_instruction", False))


def takes_daclip(model: nn.Module) -> bool:
    """True when ``model`` reads DA-CLIP embeddings: it is called as ``model(x, ..., daclip=e)``, e (B, 2, D)."""
    return bool(getattr(model, "takes_daclip", False))


class ConditionedNetwork(nn.Module):
    """A network with its non-image conditions fixed: ``net(x[, ref])`` calls ``model`` with them.

    What evaluation, validation and ``textualdeg restore`` hand to the inference path
    (``restore_tensor`` calls ``model(x)``, or ``model(x, ref)`` with a guidance image);
    tiles and the batch share the conditions, so an embedding computed once from the whole
    image serves every tile. A text-prompted network gets ``model(x, text)`` (guided:
    ``model(x, ref, text_embedding=text)``); a DA-CLIP conditioned one gets ``daclip=``.

    Args:
        model (nn.Module): the network.
        text_embedding (torch.Tensor | None): (H,) or (1, H) instruction embedding, for a
            network with ``takes_instruction``.
        daclip (torch.Tensor | None): (2, D) or (1, 2, D) DA-CLIP content and degradation
            embeddings of the image, for a network with ``takes_daclip``.
    """

    def __init__(self, model: nn.Module, text_embedding: torch.Tensor | None = None,
                 daclip: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        text = None if text_embedding is None else text_embedding.reshape(-1).detach()  # (H,)
        self.register_buffer("embedding", text, persistent=False)
        conditions = None if daclip is None else daclip.reshape(2, -1).detach()  # (2, D)
        self.register_buffer("daclip", conditions, persistent=False)
        self.pad_multiple = getattr(model, "pad_multiple", 1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) and, for a guided network, (B, C, Hr, Wr) guidance -> the model's
        output with the conditions broadcast to the batch."""
        kwargs = {}
        if self.daclip is not None:
            kwargs["daclip"] = self.daclip.to(x.device)[None].expand(x.shape[0], -1, -1)  # (B, 2, D)
        args: list[torch.Tensor] = [x] if ref is None else [x, ref]
        if self.embedding is not None:
            text = self.embedding.to(x.device)[None].expand(x.shape[0], -1)  # (B, H)
            if ref is None:
                args.append(text)
            else:
                kwargs["text_embedding"] = text
        return self.model(*args, **kwargs)


def with_daclip(model: nn.Module, daclip: torch.Tensor) -> ConditionedNetwork:
    """``model`` (possibly a ``ConditionedNetwork`` holding an instruction) with the DA-CLIP
    embeddings ``daclip`` (1, 2, D) of one image fixed as well."""
    if isinstance(model, ConditionedNetwork):
        return ConditionedNetwork(model.model, model.embedding, daclip)
    return ConditionedNetwork(model, None, daclip)


class InstructedNetwork(ConditionedNetwork):
    """A text-prompted network with one instruction fixed: ``net(x) == model(x, embedding)``.

    A network that takes both (GuidedTextPromptIR) gets ``net(x, ref) == model(x, ref,
    text_embedding=embedding)``.

    Args:
        model (nn.Module): a network with ``takes_instruction``.
        embedding (torch.Tensor): (H,) or (1, H) sentence embedding.
    """

    def __init__(self, model: nn.Module, embedding: torch.Tensor) -> None:
        super().__init__(model, text_embedding=embedding)


def build_network(network_g: Mapping[str, Any], weights: str | os.PathLike | None = None, strict: bool = True,
                  param_key: str | None = None) -> nn.Module:
    """Build ``network_g`` from ``ARCH_REGISTRY`` and load ``weights`` into it.

    With ``strict=False`` (the authors' setting, used to start a guided network from a
    plain backbone checkpoint) missing keys and keys of another shape are skipped and
    counted in one log line; the fusion blocks start as identities, so the network then
    behaves like the pretrained backbone.

    Args:
        network_g (Mapping[str, Any]): the option section: ``type`` plus the constructor
            kwargs (an ``Options`` section or a plain dict).
        weights (str | os.PathLike | None): a safetensors or torch weight file; None or
            empty: keep the initial weights.
        strict (bool): every tensor of the network must be in the file with its shape,
            and nothing else (``path.strict_load_g``).
        param_key (str | None): entry of a wrapped torch file (``path.param_key_g``).

    Returns:
        The network, in training mode on the CPU (callers switch to ``eval()``).

    Raises:
        ValueError: ``network_g`` has no ``type``.
        KeyError: an unknown ``type`` (the message lists the registered ones).
        TypeError: a constructor argument the class does not take (named).
        textualdeg.checkpoint.CheckpointError: the weight file is missing, unreadable or
            (strict) does not fit the network (one line naming the file and keys).
    """
    spec = network_g.to_dict() if hasattr(network_g, "to_dict") else dict(network_g)
    if "type" not in spec:
        raise ValueError(f"network_g needs a 'type' (one of {ARCH_REGISTRY.keys()}); got keys {sorted(spec)}")
    model = ARCH_REGISTRY.build(spec)
    if weights:
        load_network_weights(model, weights, strict=strict, param_key=param_key)
    return model


__all__ = ["REF_PREFIX", "ConditionedNetwork", "InstructedNetwork", "build_network", "is_guided", "takes_daclip",
           "takes_instruction", "with_daclip"]

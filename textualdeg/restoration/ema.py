"""Exponential moving average (EMA) of a restoration network's weights.

``param_ema <- decay * param_ema + (1 - decay) * param`` after every optimizer step
(BasicSR's ``model_ema``), applied to floating-point parameters; buffers are copied.
The EMA network is a separate module (a deep copy of the unwrapped network), so its
``state_dict()`` has exactly the network's keys and saves as ``net_g_ema`` weights.
``ModelEMA`` has ``state_dict``/``load_state_dict``, so it is registered with
``StateCheckpointer.register`` (saved as safetensors, never pickled) and resumes exactly.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """An EMA copy of ``model``.

    Args:
        model (nn.Module): the (unwrapped) network to track; copied at construction.
        decay (float): EMA decay in [0, 1). Default 0.999.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA weights toward ``model``'s (call after each optimizer step)."""
        ema_params = dict(self.module.named_parameters())
        for name, param in model.named_parameters():
            ema = ema_params[name]
            if ema.dtype.is_floating_point:
                ema.lerp_(param.detach().to(ema.dtype), 1.0 - self.decay)
            else:
                ema.copy_(param)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(buf)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The EMA weights (the network's keys) plus the decay and update count."""
        return {
            "weights": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
            "decay": self.decay,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (strict on the weight keys)."""
        self.module.load_state_dict(state["weights"], strict=True)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])

    def to(self, device: torch.device | str) -> "ModelEMA":
        """Move the EMA network to ``device``; returns self."""
        self.module.to(device)
        return self


__all__ = ["ModelEMA"]

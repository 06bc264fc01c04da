"""Test-time local converter (TLC): the local average pool that replaces a global one.

``replace_global_pools`` swaps every ``AdaptiveAvgPool2d(1)`` of a module for a
``LocalAvgPool2d`` of the kernel the training size fixes (``NAFNetLocal`` calls it once
per resolution level).

Ported (re-written, same computation) from megvii-research/NAFNet@2b4af71
``basicsr/models/archs/local_arch.py`` (MIT license): the TLC ``AvgPool2d`` and
``replace_layers``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.restoration.archs.backbone_base import as_int_tuple

__all__ = [
    "LocalAvgPool2d",
    "replace_global_pools",
]


class LocalAvgPool2d(nn.Module):
    """Test-time local converter (TLC) pool: a stride-1 box average of a fixed kernel,
    replicate-padded back to the input size; the global average when the kernel covers the
    whole map. Replaces ``AdaptiveAvgPool2d(1)`` in NAFNetLocal; it has no parameters.

    Same computation as NAFNet's ``local_arch.AvgPool2d`` (``fast_imp=False``) once its
    kernel has been fixed by the calibration forward at the training size.

    Args:
        kernel_size (tuple[int, int]): (kh, kw) box size in pixels of this feature map.
    """

    def __init__(self, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        kernel_size = as_int_tuple("kernel_size", kernel_size, length=2, minimum=1)
        self.kernel_size = kernel_size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) when the kernel covers the map, else (B, C, H, W)."""
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        if kh >= h and kw >= w:
            return F.adaptive_avg_pool2d(x, 1)
        # Summed-area table: one O(HW) pass, whatever the kernel size.
        s = x.cumsum(dim=-1).cumsum(dim=-2)  # (B, C, H, W)
        s = F.pad(s, (1, 0, 1, 0))  # (B, C, H+1, W+1)
        k1, k2 = min(h, kh), min(w, kw)
        out = s[:, :, k1:, k2:] + s[:, :, :-k1, :-k2] - s[:, :, :-k1, k2:] - s[:, :, k1:, :-k2]
        out = out / (k1 * k2)  # (B, C, H-k1+1, W-k2+1)
        oh, ow = out.shape[-2:]
        pad = ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2)
        return F.pad(out, pad, mode="replicate")  # (B, C, H, W)


def replace_global_pools(module: nn.Module, kernel_size: tuple[int, int]) -> int:
    """Swap every ``AdaptiveAvgPool2d(1)`` inside ``module`` for ``LocalAvgPool2d(kernel_size)``.

    This is TLC's ``replace_layers`` with the kernel given explicitly (the official code
    fixes it lazily during a calibration forward). Call it once per resolution level with
    that level's kernel (see ``NAFNetLocal.local_kernel_size``).

    Args:
        module: module whose descendants are converted in place.
        kernel_size: (kh, kw) of the local pool at this level.

    Returns:
        The number of pools replaced.
    """
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, LocalAvgPool2d(kernel_size))
                count += 1
    return count

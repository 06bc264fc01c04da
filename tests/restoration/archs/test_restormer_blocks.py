"""Restormer's blocks: MDTA argument check."""

from __future__ import annotations

import pytest
import torch

from textualdeg.restoration.archs.restormer_blocks import MDTA


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_mdta_rejects_heads_not_dividing_dim() -> None:
    with pytest.raises(ValueError, match="dim=6, num_heads=4"):
        MDTA(6, 4)

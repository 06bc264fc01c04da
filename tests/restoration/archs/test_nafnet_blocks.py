"""NAFNet's SimpleGate and NAFBlock."""

from __future__ import annotations

import torch

from textualdeg.restoration.archs.nafnet_blocks import NAFBlock, SimpleGate


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_simple_gate_multiplies_halves() -> None:
    x = _rand(1, 4, 2, 2)
    torch.testing.assert_close(SimpleGate()(x), x[:, :2] * x[:, 2:])


def test_fresh_nafblock_is_identity() -> None:
    x = _rand(2, 8, 9, 11)
    torch.testing.assert_close(NAFBlock(8)(x), x, atol=0, rtol=0)

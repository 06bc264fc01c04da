"""The TLC local pool against a brute-force box filter, and the global-pool swap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textualdeg.restoration.archs.nafnet_blocks import NAFBlock
from textualdeg.restoration.archs.tlc import LocalAvgPool2d, replace_global_pools


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel", [(3, 4), (5, 5), (7, 1), (20, 3)])
def test_local_avg_pool_equals_box_filter(kernel: tuple[int, int]) -> None:
    x = _rand(1, 2, 11, 13)
    out = LocalAvgPool2d(kernel)(x)
    kh, kw = min(kernel[0], 11), min(kernel[1], 13)
    box = F.avg_pool2d(x, (kh, kw), stride=1)  # (1, 2, 11-kh+1, 13-kw+1)
    oh, ow = box.shape[-2:]
    expected = F.pad(box, ((13 - ow) // 2, (13 - ow + 1) // 2, (11 - oh) // 2, (11 - oh + 1) // 2), mode="replicate")
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_local_avg_pool_is_global_when_kernel_covers_map() -> None:
    x = _rand(2, 3, 6, 8)
    torch.testing.assert_close(LocalAvgPool2d((6, 8))(x), x.mean(dim=(2, 3), keepdim=True))


def test_replace_global_pools_counts_and_swaps() -> None:
    blocks = torch.nn.Sequential(NAFBlock(4), NAFBlock(4))
    assert replace_global_pools(blocks, (5, 6)) == 2
    assert all(isinstance(b.sca[0], LocalAvgPool2d) and b.sca[0].kernel_size == (5, 6) for b in blocks)
    assert replace_global_pools(blocks, (5, 6)) == 0

"""ReferenceEncoder: pyramid shapes, the authors' key layout, block-count rule, errors,
gradients."""

from __future__ import annotations

import pytest
import torch

from textualdeg.restoration.reference.encoder import ReferenceEncoder, ResidualBlock


def _photo(photo_rgb, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo_rgb[60 : 60 + h, 90 : 90 + w]).permute(2, 0, 1)[None].contiguous()  # (1, 3, h, w)


def test_pyramid_shapes_and_channels(photo_rgb) -> None:
    enc = ReferenceEncoder(in_channels=3, nf=4, num_levels=4, num_blocks=(1,))
    feats = enc(_photo(photo_rgb, 40, 24))
    assert [tuple(f.shape) for f in feats] == [(1, 4, 40, 24), (1, 8, 20, 12), (1, 16, 10, 6), (1, 32, 5, 3)]
    assert enc.channels == (4, 8, 16, 32) and enc.downsample_factor == 8
    # odd sizes round up (stride-2 conv with padding 1)
    assert [tuple(f.shape[2:]) for f in enc(_photo(photo_rgb, 13, 7))] == [(13, 7), (7, 4), (4, 2), (2, 1)]


def test_authors_key_layout_five_levels() -> None:
    with torch.device("meta"):
        enc = ReferenceEncoder(in_channels=3, nf=64, num_levels=5, num_blocks=(4, 4, 4, 4))
    keys = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert keys["conv_L1.weight"] == (64, 3, 3, 3)
    assert keys["conv_L5.weight"] == (1024, 512, 3, 3)
    assert keys["blk_L5.3.conv2.bias"] == (1024,)
    assert "blk_L5.4.conv1.weight" not in keys
    # 5 convs (w, b) + 20 residual blocks x 2 convs x (w, b)
    assert len(keys) == 5 * 2 + 20 * 4
    assert not any(k.startswith("act") for k in keys)


def test_block_counts_repeat_last_entry() -> None:
    enc = ReferenceEncoder(nf=2, num_levels=4, num_blocks=(1, 2))
    assert enc.num_blocks == (1, 2, 2, 2)
    assert [len(getattr(enc, f"blk_L{k}")) for k in range(1, 5)] == [1, 2, 2, 2]


def test_residual_block_is_identity_plus_branch() -> None:
    block = ResidualBlock(3)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    x = torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(block(x), x, atol=0, rtol=0)


def test_every_parameter_gets_a_gradient(photo_rgb) -> None:
    enc = ReferenceEncoder(nf=4, num_levels=3, num_blocks=(1,))
    sum(f.square().mean() for f in enc(_photo(photo_rgb, 16, 20))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(nf=0), "nf"),
        (dict(num_levels=0), "num_levels"),
        (dict(in_channels=True), "in_channels"),
        (dict(num_blocks=()), "num_blocks"),
        (dict(num_blocks=(1, -1)), "num_blocks"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        ReferenceEncoder(**kwargs)


def test_wrong_channel_count_names_the_shape() -> None:
    enc = ReferenceEncoder(in_channels=3, nf=2, num_levels=2, num_blocks=(1,))
    with pytest.raises(ValueError, match=r"\(1, 4, 8, 8\)"):
        enc(torch.zeros(1, 4, 8, 8))

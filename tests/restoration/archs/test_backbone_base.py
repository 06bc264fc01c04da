"""The backbone base helpers: padding modes, argument and input checks."""

from __future__ import annotations

import pytest
import torch

from textualdeg.restoration.archs.backbone_base import as_int_tuple, check_image_input, pad_to_multiple


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_pad_to_multiple_modes() -> None:
    x = _rand(1, 1, 5, 6)
    zeros = pad_to_multiple(x, 4)
    assert zeros.shape == (1, 1, 8, 8) and zeros[..., 5:, :].abs().sum() == 0
    refl = pad_to_multiple(x, 4, mode="reflect")
    torch.testing.assert_close(refl[..., 5, :6], x[..., 3, :])  # row 5 mirrors row 3
    assert pad_to_multiple(x, 1) is x
    tiny = pad_to_multiple(_rand(1, 1, 2, 2), 8, mode="reflect")  # too small to reflect
    assert tiny.shape == (1, 1, 8, 8)


def test_argument_and_input_checks_name_what_is_wrong() -> None:
    assert as_int_tuple("enc_blk_nums", [1, 2], length=2) == (1, 2)
    for value, match in (("12", "sequence"), ([1, 2.0], "ints"), ([1], "2 entries"), ([1, -1], ">= 0")):
        with pytest.raises(ValueError, match=f"enc_blk_nums.*{match}"):
            as_int_tuple("enc_blk_nums", value, length=2)
    check_image_input(_rand(1, 3, 4, 5), 3)
    with pytest.raises(ValueError, match=r"inp must have shape \(B, 3, H, W\); got \(3, 4, 5\)"):
        check_image_input(_rand(3, 4, 5), 3, name="inp")

"""Paired transforms: seeds, padding, aligned crops, BasicSR-compatible flips."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from textualdeg.data.transforms import Dihedral, make_rng, pad_to_size, paired_random_crop, resize_image


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skdata.chelsea()[::6, ::6].astype(np.float32) / 255.0  # 50 x 76


def test_make_rng_depends_only_on_its_keys():
    assert make_rng(1, 2, 3).random() == make_rng(1, 2, 3).random()
    assert make_rng(1, 2, 3).random() != make_rng(1, 3, 2).random()
    with pytest.raises(ValueError, match="-1"):
        make_rng(1, -1)


def test_pad_reflects_bottom_right_like_cv2(photo):
    import cv2

    padded = pad_to_size(photo, 64)
    expected = cv2.copyMakeBorder(photo, 0, 14, 0, 0, cv2.BORDER_REFLECT)
    assert padded.shape == (64, 76, 3)
    np.testing.assert_array_equal(padded, expected)
    assert pad_to_size(photo, 20) is photo


def test_paired_crop_takes_one_window(photo):
    other = 1.0 - photo
    (a, b), (top, left) = paired_random_crop([photo, other], (20, 30), make_rng(0))
    assert a.shape == (20, 30, 3)
    np.testing.assert_array_equal(a, photo[top : top + 20, left : left + 30])
    np.testing.assert_array_equal(b, 1.0 - a)
    with pytest.raises(ValueError, match="one size"):
        paired_random_crop([photo, photo[:-1]], 8, make_rng(0))


def test_dihedral_matches_basicsr_augment(photo):
    import random

    from textualdeg.basicsr_compat import import_basicsr

    import_basicsr()
    from basicsr.data.transforms import augment

    seen = set()
    for seed in range(24):
        random.seed(seed)
        u = [random.random() for _ in range(3)]  # augment draws hflip, vflip, rot90 in this order
        flags = Dihedral(u[0] < 0.5, u[1] < 0.5, u[2] < 0.5)
        seen.add(flags)
        random.seed(seed)
        theirs = augment([photo.copy(), photo.copy()], hflip=True, rotation=True)[0]
        np.testing.assert_array_equal(flags(photo), theirs)
    assert len(seen) >= 6
    draws = {Dihedral.draw(make_rng(0, i)) for i in range(64)}
    assert len(draws) == 8
    assert {Dihedral.draw(make_rng(0, i), use_hflip=False, use_rot=False) for i in range(8)} == {Dihedral()}


def test_resize_keeps_range_and_channels(photo):
    small = resize_image(photo, (25, 38))
    big = resize_image(photo[:, :, :1], (100, 152))
    assert small.shape == (25, 38, 3) and big.shape == (100, 152, 1)
    assert 0 <= small.min() and big.max() <= 1
    assert abs(float(small.mean()) - float(photo.mean())) < 0.01

"""Tests for textualdeg.imageio on scikit-image photographs: formats, bit depths, channel
order, broken files, atomic writes, tensor conversion and folder listing.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from textualdeg.imageio import (
    ImageReadError,
    image_to_tensor,
    list_images,
    read_image,
    tensor_to_image,
    write_image,
)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    """Colour photograph, uint8 RGB (300, 451, 3): odd width, distinct channels."""
    return data.chelsea()


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    """Gray photograph, uint8 (512, 512)."""
    return data.camera()


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_rgb_8bit_roundtrip(tmp_path, chelsea, suffix):
    path = write_image(tmp_path / f"cat{suffix}", chelsea.astype(np.float32) / 255.0)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (300, 451, 3)
    assert 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_array_equal(np.rint(image * 255).astype(np.uint8), chelsea)


def test_channel_order_is_rgb_on_disk_and_in_memory(tmp_path, chelsea):
    path = write_image(tmp_path / "cat.png", chelsea)
    on_disk_bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(on_disk_bgr[:, :, ::-1], chelsea)  # a standard viewer sees RGB
    np.testing.assert_array_equal(read_image(path)[..., 0], chelsea[..., 0] / np.float32(255))


def test_jpeg_is_close(tmp_path):
    rocket = data.rocket()
    path = write_image(tmp_path / "rocket.jpg", rocket, jpeg_quality=95)
    image = read_image(path)
    assert image.shape == rocket.shape
    assert np.abs(image * 255 - rocket).mean() < 3.0
    assert read_image(write_image(tmp_path / "r.jpeg", rocket)).shape == rocket.shape


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_roundtrip_keeps_precision(tmp_path, chelsea, suffix):
    rng = np.random.default_rng(0)
    fine = np.clip(chelsea / 255.0 + rng.normal(0, 1e-3, chelsea.shape), 0, 1).astype(np.float32)
    path = write_image(tmp_path / f"cat16{suffix}", fine, bit_depth=16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    image = read_image(path)
    assert np.abs(image - fine).max() <= 0.5 / 65535 + 1e-7  # far finer than 8 bit (1/510)
    # uint16 arrays are written as is and read back divided by 65535
    raw = (chelsea.astype(np.uint16) * 257)
    np.testing.assert_allclose(read_image(write_image(tmp_path / f"raw{suffix}", raw, bit_depth=16)),
                               chelsea / 255.0, atol=1e-6)


def test_16bit_only_for_png_and_tiff(tmp_path, chelsea):
    with pytest.raises(ValueError, match="bit_depth=16"):
        write_image(tmp_path / "x.jpg", chelsea, bit_depth=16)
    with pytest.raises(ValueError, match="bit_depth=12"):
        write_image(tmp_path / "x.png", chelsea, bit_depth=12)
    with pytest.raises(ValueError, match="uint16 but bit_depth=8"):
        write_image(tmp_path / "x.png", chelsea.astype(np.uint16))
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "x.gif", chelsea)


def test_gray_files_and_channel_modes(tmp_path, camera, chelsea):
    gray_path = write_image(tmp_path / "camera.png", camera)
    assert cv2.imread(str(gray_path), cv2.IMREAD_UNCHANGED).ndim == 2  # stored as 1 channel
    rgb = read_image(gray_path)
    assert rgb.shape == (512, 512, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    np.testing.assert_allclose(rgb[..., 1], camera / 255.0, atol=1e-7)
    assert read_image(gray_path, channels="keep").shape == (512, 512, 1)
    assert read_image(gray_path, channels="gray").shape == (512, 512, 1)
    color_path = write_image(tmp_path / "cat.png", chelsea)
    assert read_image(color_path, channels="keep").shape == (300, 451, 3)
    gray = read_image(color_path, channels="gray")
    expected = (chelsea @ np.array([0.299, 0.587, 0.114])) / 255.0  # BT.601
    assert gray.shape == (300, 451, 1)
    assert np.abs(gray[..., 0] - expected).max() < 1e-3
    with pytest.raises(ValueError, match="channels='bgr'"):
        read_image(color_path, channels="bgr")


def test_16bit_gray_tiff(tmp_path, camera):
    path = write_image(tmp_path / "camera16.tiff", camera.astype(np.float32) / 255.0, bit_depth=16)
    image = read_image(path, channels="keep")
    assert image.shape == (512, 512, 1)
    np.testing.assert_allclose(image[..., 0], camera / 255.0, atol=1e-6)


def test_alpha_is_dropped_with_a_log_note(tmp_path, chelsea, caplog):
    import textualdeg.imageio as imageio_module

    rgba = np.dstack([chelsea[..., ::-1], np.full(chelsea.shape[:2], 128, np.uint8)])  # BGRA
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), rgba)
    imageio_module._warned.discard("alpha")
    with caplog.at_level("WARNING", logger="textualdeg.imageio"):
        image = read_image(path)
    assert image.shape == (300, 451, 3)
    np.testing.assert_allclose(image, chelsea / 255.0, atol=1e-6)
    assert "alpha" in caplog.text and "rgba.png" in caplog.text


def _encoded(image: np.ndarray, suffix: str) -> bytes:
    ok, buffer = cv2.imencode(suffix, image[..., ::-1])
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
@pytest.mark.parametrize("fraction", [0.5, 0.98])
def test_truncated_file_raises_naming_path(tmp_path, chelsea, suffix, fraction):
    full = _encoded(chelsea, suffix)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(full[: int(len(full) * fraction)])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == path
    assert "truncated" in info.value.cause or "decod" in info.value.cause


def test_png_missing_iend_is_caught_even_if_pixels_decode(tmp_path, chelsea):
    # Cut only the 12-byte IEND chunk: every pixel is present, the file is still incomplete.
    full = _encoded(chelsea, ".png")
    assert full.endswith(b"IEND\xaeB`\x82")
    path = tmp_path / "no_iend.png"
    path.write_bytes(full[:-12])
    with pytest.raises(ImageReadError, match="IEND"):
        read_image(path)


def test_jpeg_missing_end_marker_is_caught(tmp_path):
    full = _encoded(data.rocket(), ".jpg")
    path = tmp_path / "no_eoi.jpg"
    path.write_bytes(full[:-2])  # drop only the FFD9 end-of-image marker
    with pytest.raises(ImageReadError, match="end-of-image"):
        read_image(path)


def test_missing_empty_folder_and_non_image(tmp_path):
    with pytest.raises(ImageReadError, match="no such file") as info:
        read_image(tmp_path / "nope.png")
    assert isinstance(info.value, OSError) and "nope.png" in str(info.value)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageReadError, match="not a decodable image") as info:
        read_image(text)
    assert "notes.jpg" in str(info.value)


def test_write_is_atomic_and_keeps_old_file_on_failure(tmp_path, chelsea, camera):
    path = write_image(tmp_path / "out.png", chelsea)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        write_image(path, np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_image(path, np.zeros((4, 4, 2), np.float32))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.png"]  # no temporaries left behind
    write_image(path, camera)  # replaces in place
    assert read_image(path, channels="keep").shape == (512, 512, 1)


def test_float_input_is_clipped_and_rounded(tmp_path):
    image = np.array([[[-0.5, 0.5, 1.5], [0.2 / 255, 0.6 / 255, 1.0]]], np.float32)
    stored = cv2.imread(str(write_image(tmp_path / "clip.png", image)), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(stored[..., ::-1], [[[0, 128, 255], [0, 1, 255]]])


def test_tensor_conversions(chelsea):
    image = chelsea.astype(np.float32) / 255.0
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 300, 451) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor[0].numpy(), image[..., 0])
    np.testing.assert_array_equal(tensor_to_image(tensor), image)
    np.testing.assert_array_equal(tensor_to_image(tensor[None]), image)
    np.testing.assert_allclose(image_to_tensor(chelsea).numpy(), tensor.numpy(), atol=1e-7)
    assert image_to_tensor(chelsea[..., 0]).shape == (1, 300, 451)
    overshoot = tensor_to_image(torch.full((3, 2, 2), 1.25))
    assert overshoot.max() == 1.0
    assert tensor_to_image(torch.full((3, 2, 2), 1.25), clamp=False).max() == 1.25
    with pytest.raises(ValueError, match="shape"):
        tensor_to_image(torch.zeros(2, 3, 4, 4))


def test_list_images(tmp_path, chelsea):
    for name in ("b.png", "a.JPG", "c.tif", "d.bmp"):
        write_image(tmp_path / name, chelsea[:8, :8])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".b.png.123.abc.tmp").write_bytes(b"")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "e.png", chelsea[:8, :8])
    assert [path.name for path in list_images(tmp_path)] == ["a.JPG", "b.png", "c.tif", "d.bmp"]
    assert [path.name for path in list_images(tmp_path, recursive=True)][-1] == "e.png"
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")


def test_gray_file_read_as_rgb_is_reported_once_per_folder(tmp_path, caplog):
    gray = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8, 1)
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "targets" / name, gray)
    with caplog.at_level("WARNING"):
        first = read_image(tmp_path / "targets" / "a.png", "rgb")
        read_image(tmp_path / "targets" / "b.png", "rgb")
    assert first.shape == (8, 8, 3)
    warnings = [r.getMessage() for r in caplog.records if "grayscale but is read as RGB" in r.getMessage()]
    assert len(warnings) == 1 and "a.png" in warnings[0]

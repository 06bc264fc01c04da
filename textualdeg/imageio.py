"""Image files in and out: PNG, JPEG, BMP and TIFF, 8 and 16 bit, gray and RGB.

The one place in the package where uint8/uint16 pixels and OpenCV's BGR order exist.
Everything returned is ``float32``, height x width x channels (HWC), values in
``[0, 1]``, channels in RGB order: 8-bit files are divided by 255, 16-bit files by 65535.
A float32 TIFF is returned as stored (not rescaled). An alpha channel is dropped (logged
once per process). EXIF orientation is not applied: pixels come back as stored.

Broken files raise ``ImageReadError`` naming the path and the cause: missing, empty,
truncated (PNG without its IEND chunk, JPEG without its end-of-image marker after the
last scan, BMP shorter than its header says, or anything OpenCV cannot decode) or not an
image at all. Writes go through ``textualdeg.fileio.atomic_write_bytes``: the file is the
old one or the complete new one, never half of one.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from textualdeg.fileio import atomic_write_bytes
from textualdeg.log import get_logger

logger = get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SIXTEEN_BIT_EXTENSIONS = (".png", ".tif", ".tiff")
CHANNEL_MODES = ("rgb", "gray", "keep")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8"
_BMP_SIGNATURE = b"BM"
_TAIL_BYTES = 4096
_warned: set[str] = set()


class ImageReadError(OSError):
    """An image file is missing, empty, truncated, undecodable or of an unsupported kind.

    Attributes:
        path: the offending file.
        cause: a short human-readable reason.
    """

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"cannot read image {self.path}: {cause}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader workers)
        return (type(self), (self.path, self.cause))


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def _truncation_cause(data: bytes) -> str | None:
    """Cheap structural checks that catch truncation even where a decoder would not."""
    if data.startswith(_PNG_SIGNATURE):
        if b"IEND" not in data[-_TAIL_BYTES:]:
            return "truncated PNG (no IEND chunk at the end)"
    elif data.startswith(_JPEG_SIGNATURE):
        # Inside entropy-coded data 0xFF is stuffed as FF00, so FFD9 after the last
        # start-of-scan (FFDA) is the real end-of-image marker.
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif data.startswith(_BMP_SIGNATURE) and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")
        if declared > len(data):
            return f"truncated BMP (header declares {declared} bytes, file has {len(data)})"
    return None


def _to_float(pixels: np.ndarray, path: Path) -> np.ndarray:
    """uint8 / uint16 / float -> float32 in [0, 1] (floats are kept as stored)."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    if pixels.dtype in (np.float32, np.float64):
        return pixels.astype(np.float32)
    raise ImageReadError(path, f"unsupported pixel type {pixels.dtype} (expected 8/16-bit or float)")


_GRAY_WARNED: set[str] = set()


def _warn_gray_in_rgb(path: str | os.PathLike) -> None:
    """Say (once per folder and process) that a gray file is read as RGB by copying it."""
    folder = str(Path(path).parent)
    if folder not in _GRAY_WARNED:
        _GRAY_WARNED.add(folder)
        logger.warning("%s is grayscale but is read as RGB: its channel is copied to three (further gray "
                       "files in %s are not reported; set in_ch: 1 for gray data)", path, folder)


def read_image(path: str | os.PathLike, channels: str = "rgb") -> np.ndarray:
    """Read an image file as float32 HWC in [0, 1], RGB order.

    Args:
        path: a PNG, JPEG, BMP or TIFF file (the content decides the format).
        channels: ``"rgb"`` returns (H, W, 3), gray files replicated (a warning names the
            first per folder); ``"gray"`` returns
            (H, W, 1), colour files converted with BT.601 weights (0.299, 0.587, 0.114);
            ``"keep"`` returns (H, W, 1) for gray files and (H, W, 3) for colour ones.

    Returns:
        float32 array (H, W, C), values in [0, 1] for 8- and 16-bit files.

    Raises:
        ValueError: ``channels`` is not one of ``"rgb"``, ``"gray"``, ``"keep"``.
        ImageReadError: naming the path and the cause (missing, empty, truncated,
            not an image, unsupported pixel type).
    """
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels={channels!r}: expected one of {CHANNEL_MODES}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, expected an image file") from None
    except OSError as error:
        raise ImageReadError(path, f"cannot open ({error.strerror or error})") from error
    if not data:
        raise ImageReadError(path, "file is empty (0 bytes)")
    cause = _truncation_cause(data)
    if cause is not None:
        raise ImageReadError(path, cause)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise ImageReadError(path, f"OpenCV could not decode it ({error})") from error
    if pixels is None:
        raise ImageReadError(
            path, "not a decodable image (unknown format, or a corrupt or truncated file)"
        )
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W) -> (H, W, 1)
    if pixels.shape[2] == 4:
        _warn_once("alpha", "dropping the alpha channel of %s (and of any later RGBA image)", path)
        pixels = pixels[:, :, :3]
    if pixels.shape[2] == 3:
        pixels = pixels[:, :, ::-1]  # BGR -> RGB
    elif pixels.shape[2] != 1:
        raise ImageReadError(path, f"unsupported channel count {pixels.shape[2]}")
    image = _to_float(pixels, path)
    if channels == "rgb" and image.shape[2] == 1:
        _warn_gray_in_rgb(path)
        image = np.repeat(image, 3, axis=2)  # (H, W, 1) -> (H, W, 3)
    elif channels == "gray" and image.shape[2] == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[:, :, None]
    return np.ascontiguousarray(image)


def _quantize(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """float [0, 1] / uint8 / uint16 -> uint8 or uint16 pixels, HWC or HW."""
    if image.dtype == np.uint8:
        return image if bit_depth == 8 else image.astype(np.uint16) * 257
    if image.dtype == np.uint16:
        if bit_depth == 8:
            raise ValueError("image is uint16 but bit_depth=8: convert explicitly or use bit_depth=16")
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image dtype {image.dtype}: expected float in [0, 1], uint8 or uint16")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    peak = 255.0 if bit_depth == 8 else 65535.0
    scaled = np.rint(np.clip(image, 0.0, 1.0) * peak)
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def write_image(
    path: str | os.PathLike,
    image: np.ndarray,
    bit_depth: int = 8,
    *,
    jpeg_quality: int = 95,
) -> Path:
    """Write an image atomically; the extension decides the format.

    Args:
        path: destination ending in .png, .jpg/.jpeg, .bmp or .tif/.tiff; the parent
            folder is created.
        image: (H, W, 3) RGB, (H, W, 1) or (H, W) gray; float in [0, 1] (clipped, then
            rounded), or uint8 / uint16 written as is (uint8 scaled by 257 for 16 bit).
        bit_depth: 8 or 16; 16 only for PNG and TIFF.
        jpeg_quality: JPEG quality 0-100.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: unsupported extension, bit depth, shape or dtype, or non-finite values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"path={str(path)!r}: extension {suffix!r} is not one of {IMAGE_EXTENSIONS}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth={bit_depth!r}: expected 8 or 16")
    if bit_depth == 16 and suffix not in SIXTEEN_BIT_EXTENSIONS:
        raise ValueError(f"bit_depth=16 needs one of {SIXTEEN_BIT_EXTENSIONS}, got {suffix!r}")
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # (H, W, 1) -> (H, W)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image shape {image.shape}: expected (H, W), (H, W, 1) or (H, W, 3)")
    pixels = _quantize(image, bit_depth)
    if pixels.ndim == 3:
        pixels = pixels[:, :, ::-1]  # RGB -> BGR for OpenCV
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if suffix in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(pixels), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {pixels.shape} {pixels.dtype} image as {suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, encoded.tobytes())


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """Numpy HWC image -> float32 tensor (C, H, W).

    Args:
        image: (H, W, C) or (H, W); float in [0, 1] (kept as is), uint8 (/255) or
            uint16 (/65535).

    Returns:
        float32 tensor (C, H, W), a copy not sharing memory with ``image``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]  # (H, W) -> (H, W, 1)
    if image.ndim != 3:
        raise ValueError(f"image shape {image.shape}: expected (H, W, C) or (H, W)")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    else:
        raise ValueError(f"image dtype {image.dtype}: expected float, uint8 or uint16")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (C, H, W)


def tensor_to_image(tensor: torch.Tensor, clamp: bool = True) -> np.ndarray:
    """Tensor (C, H, W) or (1, C, H, W) -> numpy float32 (H, W, C).

    Args:
        tensor: image tensor on any device, any float dtype, values nominally in [0, 1].
        clamp: clip to [0, 1] (network outputs overshoot slightly).

    Returns:
        float32 array (H, W, C).
    """
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]  # (1, C, H, W) -> (C, H, W)
    if tensor.ndim != 3:
        raise ValueError(f"tensor shape {tuple(tensor.shape)}: expected (C, H, W) or (1, C, H, W)")
    tensor = tensor.detach().to(device="cpu", dtype=torch.float32)
    if clamp:
        tensor = tensor.clamp(0.0, 1.0)
    return np.ascontiguousarray(tensor.numpy().transpose(1, 2, 0))  # (H, W, C)


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """List image files in a folder, sorted by path.

    Hidden files (names starting with '.', e.g. temporaries of interrupted atomic
    writes) are skipped; extensions are matched case-insensitively.

    Args:
        folder: the folder to scan.
        recursive: include sub-folders.

    Returns:
        Sorted list of paths with an extension in ``IMAGE_EXTENSIONS``.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        entry
        for entry in candidates
        if entry.suffix.lower() in IMAGE_EXTENSIONS
        and not entry.name.startswith(".")
        and entry.is_file()
    )

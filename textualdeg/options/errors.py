"""The one error type of option handling: :class:`OptionsError`.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

__all__ = [
    "OptionsError",
]


class OptionsError(ValueError):
    """An option file, override or schema problem.

    Args:
        message: the full message (names the key, the source and the fix).
        key: the dotted key concerned (``"train.total_iter"``), if any.
        source: the file the key came from, ``"--set"``, or None.
    """

    def __init__(self, message: str, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source

"""Plain option values: deep copies as plain YAML types, and ``~`` / ``${ENV}`` expansion.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from typing import Any

from textualdeg.options.errors import OptionsError

__all__ = [
    "expand_path_string",
    "plain",
]

_ENV_PATTERN = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_path_string(text: str, key: str, source: str) -> str:
    """Expand environment variables (an undefined one is an error) and a leading ``~``.

    Args:
        text: the path as written.
        key: the dotted option key, named in the error.
        source: the file (or ``--set``) the value came from, named in the error.

    Returns:
        The expanded path.

    Raises:
        OptionsError: ``text`` uses an environment variable that is not set.
    """

    def replace(match: re.Match) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name not in os.environ:
            raise OptionsError(
                f"option '{key}' (from {source}) uses the environment variable '{name}', which is not set",
                key=key,
                source=source,
            )
        return os.environ[name]

    return os.path.expanduser(_ENV_PATTERN.sub(replace, text))


def plain(value: Any) -> Any:
    """Deep copy as plain YAML types: Mappings -> dict, tuples -> list.

    Args:
        value: any option value (``Options`` views included).

    Returns:
        An independent copy made of dicts, lists and scalars.
    """
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return copy.deepcopy(value)

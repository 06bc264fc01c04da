"""Command-line overrides: ``--set a.b.c=value`` (the value parsed as YAML) on top of the files.

Setting a key inside a missing mapping creates the mapping; a mapping value merges into
an existing mapping.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from textualdeg.options.errors import OptionsError
from textualdeg.options.yaml_files import merge, parse_yaml

__all__ = [
    "OVERRIDE_SOURCE",
    "apply_overrides",
]

OVERRIDE_SOURCE = "--set"
_KEY_PART = re.compile(r"[A-Za-z0-9_\-]+\Z")


def _parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into key parts and the YAML-parsed value."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(_KEY_PART.match(part) for part in parts):
        raise OptionsError(
            f"bad override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.total_iter=1000",
            source=OVERRIDE_SOURCE,
        )
    return parts, parse_yaml(text, f"{OVERRIDE_SOURCE} {item!r}")


def _apply_override(data: dict, parts: list[str], value: Any, origins: dict) -> None:
    """Set ``data[parts[0]]...[parts[-1]] = value``, creating missing mappings."""
    node = data
    for depth, part in enumerate(parts[:-1]):
        if part not in node:
            node[part] = {}
            origins[tuple(parts[: depth + 1])] = OVERRIDE_SOURCE
        node = node[part]
        if not isinstance(node, dict):
            prefix = ".".join(parts[: depth + 1])
            raise OptionsError(
                f"cannot override '{'.'.join(parts)}': '{prefix}' is a {type(node).__name__}, not a mapping",
                key=".".join(parts),
                source=OVERRIDE_SOURCE,
            )
    merge(node, {parts[-1]: value}, tuple(parts[:-1]), OVERRIDE_SOURCE, origins)


def apply_overrides(data: dict, overrides: Sequence[str] | Mapping[str, Any], origins: dict) -> None:
    """Apply ``--set`` strings (``"a.b=1"``) or a mapping of dotted key -> value.

    Args:
        data: the composed options, changed in place.
        overrides: ``"a.b.c=value"`` strings (value parsed as YAML) or a mapping of
            dotted key -> value, applied in order.
        origins: key path -> source, updated with ``--set`` for every key set.

    Raises:
        OptionsError: a malformed override, or a key path through a non-mapping.
    """
    if isinstance(overrides, Mapping):
        items = [(_checked_key(str(k)), v) for k, v in overrides.items()]
    else:
        if isinstance(overrides, str):
            raise OptionsError(f"overrides must be a list of KEY=VALUE strings, got the string {overrides!r}")
        items = [_parse_override(item) for item in overrides]
    for parts, value in items:
        _apply_override(data, parts, copy.deepcopy(value), origins)


def _checked_key(key: str) -> list[str]:
    """Split a dotted override key, rejecting empty or malformed parts."""
    parts = key.split(".")
    if not all(_KEY_PART.match(part) for part in parts):
        raise OptionsError(f"bad override key {key!r}: expected a dotted key like train.total_iter", source=OVERRIDE_SOURCE)
    return parts

"""Option files on disk: strict YAML parsing, ``base:`` chains and the deep merge.

A file may name one base file or a list of them (paths relative to the including
file). Bases are merged in order, then the file itself on top: mappings merge key by
key (deep), every other value (lists included) is replaced. Every key path remembers
the file that set it last, so errors can name it.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from textualdeg.options.errors import OptionsError
from textualdeg.options.values import expand_path_string

__all__ = [
    "compose_with_origins",
    "merge",
    "parse_yaml",
]

_BASE_KEY = "base"


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-4`` as a float (YAML 1.2)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Build a mapping, raising on a key given twice (merge keys ``<<`` excepted)."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: let the base class report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 needs a dot and a signed exponent for a float; accept "1e-4", "3e5", "1.5E3" too.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` strictly (duplicate keys are errors, ``1e-4`` is a float).

    Args:
        text: the YAML text.
        source: the file (or ``--set`` item) it came from, named in the error.

    Returns:
        The parsed value.

    Raises:
        OptionsError: naming ``source`` on a syntax error.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise OptionsError(f"cannot parse {source}: {err}", source=source) from err


def _read_yaml_file(path: Path, included_from: str | None) -> dict:
    """Read one option file as a mapping (an empty file is ``{}``)."""
    where = f" (base of {included_from})" if included_from else ""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise OptionsError(f"cannot read option file {path}{where}: {err.strerror or err}", source=str(path)) from err
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionsError(
            f"option file {path}{where} must hold a mapping at the top level, got {type(data).__name__}",
            source=str(path),
        )
    return data


def _record_origins(data: Mapping, prefix: tuple[str, ...], source: str, origins: dict) -> None:
    """Note ``source`` as the origin of every key path in ``data``."""
    for key, value in data.items():
        path = (*prefix, str(key))
        origins[path] = source
        if isinstance(value, dict):
            _record_origins(value, path, source, origins)


def merge(dst: dict, src: Mapping, prefix: tuple[str, ...], source: str, origins: dict) -> None:
    """Deep-merge ``src`` into ``dst``: mappings merge, anything else (lists too) replaces.

    Args:
        dst: the mapping merged into, in place.
        src: the mapping merged on top (its values are deep-copied).
        prefix: key path of ``dst`` inside the whole options.
        source: the file (or ``--set``) ``src`` came from.
        origins: key path -> source, updated in place for every key ``src`` sets.
    """
    for key, value in src.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            origins[path] = source
            merge(dst[key], value, path, source, origins)
        else:
            dst[key] = copy.deepcopy(value)
            origins[path] = source
            if isinstance(value, dict):
                _record_origins(value, path, source, origins)


def _base_paths(data: dict, path: Path) -> list[Path]:
    """The ``base:`` entries of one file as paths (relative to that file's folder)."""
    bases = data.pop(_BASE_KEY, None)
    if bases is None:
        return []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise OptionsError(
            f"'base' in {path} must be a file name or a list of file names, got {bases!r}",
            key=_BASE_KEY,
            source=str(path),
        )
    return [Path(os.path.normpath(path.parent / expand_path_string(b, _BASE_KEY, str(path)))) for b in bases]


def compose_with_origins(path: Path) -> tuple[dict, dict]:
    """Compose ``path`` with its ``base:`` chain and note which file set each key last.

    Args:
        path: the option file.

    Returns:
        The merged data (``base:`` keys removed) and key path -> file.

    Raises:
        OptionsError: a file is missing or malformed, or ``base:`` is cyclic.
    """
    files: list[tuple[Path, dict]] = []
    _collect_files(path, files, (), None)
    merged: dict = {}
    origins: dict = {(): str(path)}
    for file_path, data in files:
        merge(merged, data, (), str(file_path), origins)
    return merged, origins


def _collect_files(path: Path, out: list, stack: tuple[Path, ...], included_from: str | None) -> None:
    """Append ``(path, data)`` for ``path``'s bases (recursively, in order), then for ``path``."""
    resolved = path.resolve()
    if resolved in stack:
        chain = " -> ".join(str(p) for p in (*stack, resolved))
        raise OptionsError(f"'base' inheritance cycle: {chain}", key=_BASE_KEY, source=str(path))
    data = _read_yaml_file(path, included_from)
    for base in _base_paths(data, path):
        _collect_files(base, out, (*stack, resolved), str(path))
    out.append((path, data))

"""Loading and saving options: file -> ``base:`` chain -> overrides -> validated :class:`Options`.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from textualdeg.fileio import atomic_write_text
from textualdeg.options.overrides import apply_overrides
from textualdeg.options.schema import Section
from textualdeg.options.validation import validate_options
from textualdeg.options.values import plain
from textualdeg.options.view import Options
from textualdeg.options.yaml_files import compose_with_origins, merge

__all__ = [
    "load_options",
    "options_from_dict",
    "save_options",
]


def options_from_dict(
    data: Mapping[str, Any],
    schema: Section,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    source: str = "<dict>",
) -> Options:
    """Validate an in-memory mapping (no ``base:``), e.g. in tests; see :func:`load_options`.

    Args:
        data: the raw options.
        schema: the root section.
        overrides: ``"a.b=value"`` strings or a mapping of dotted key -> value.
        source: the name used for ``data`` in error messages.

    Returns:
        The validated, read-only options.
    """
    merged: dict = {}
    origins: dict = {(): source}
    merge(merged, plain(data), (), source, origins)
    return _finish(merged, origins, schema, overrides, source)


def load_options(
    path: str | os.PathLike,
    schema: Section,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Options:
    """Load an option file: ``base:`` chain, overrides, validation, defaults.

    Args:
        path: the YAML option file.
        schema: the root section describing every accepted key.
        overrides: ``--set`` strings ``"a.b.c=value"`` (value parsed as YAML; e.g.
            ``"name=debug"``, ``"train.optim_g.lr=1e-4"``) or a mapping of dotted key ->
            value, applied in order after all files. Missing mappings on the way are
            created; a mapping value merges into an existing mapping.

    Returns:
        The validated, read-only options.

    Raises:
        OptionsError: a file is missing or malformed, ``base:`` is cyclic, an override is
            malformed, or validation fails (unknown key with the closest valid key, wrong
            type with the expected type, missing required key, undefined ``${ENV}``).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    data, origins = compose_with_origins(path)
    return _finish(data, origins, schema, overrides, str(path))


def _finish(
    data: dict, origins: dict, schema: Section, overrides: Sequence[str] | Mapping[str, Any], source: str
) -> Options:
    """Apply overrides, validate against ``schema``, log the warnings, wrap."""
    if not isinstance(schema, Section):
        raise ValueError(f"schema={schema!r}: expected a Section")
    apply_overrides(data, overrides or (), origins)
    return Options._view(validate_options(schema, data, origins, source), "")


def save_options(opt: Options | Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write resolved options as YAML, atomically (temp file, fsync, ``os.replace``).

    The parent folder is created if needed. Loading the file again with the same schema
    gives the same options.

    Args:
        opt: the options (``Options`` or a plain mapping).
        path: destination, typically ``experiments/<name>/<name>.yml``.

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    data = opt.to_dict() if isinstance(opt, Options) else plain(opt)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)

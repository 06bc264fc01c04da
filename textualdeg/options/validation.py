"""Validation of option data against a schema: unknown keys, types, defaults, legacy keys.

An unknown or misspelt key is an :class:`OptionsError` naming the dotted key, the file
it came from (or ``--set``) and the closest valid key; a wrong type names the key and
the expected type; a missing required key names it. Defaults are filled, numbers are
coerced (``lr: 2e-4`` is a float, although YAML 1.1 reads it as a string), ``~`` and
``${ENV}`` are expanded in path fields, legacy keys are renamed (``lqroot`` ->
``dataroot_lq``, one deprecation warning) and keys that accelerate made obsolete
(``num_gpu``) are dropped with one warning.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

from textualdeg.log import get_logger
from textualdeg.options.errors import OptionsError
from textualdeg.options.schema import Field, ListOf, MapOf, SchemaNode, Section, type_name
from textualdeg.options.values import expand_path_string, plain

logger = get_logger(__name__)

__all__ = [
    "coerce_default",
    "validate_options",
]


class _Mismatch(Exception):
    """A value does not have the shape a type spec asks for (turned into OptionsError)."""


class _Context:
    """Book-keeping for one validation run: origins, deprecations, ignored keys."""

    def __init__(self, main_source: str, origins: dict | None = None) -> None:
        self.main_source = main_source
        self.origins = origins if origins is not None else {(): main_source}
        self.renamed: list[str] = []
        self.ignored: list[str] = []

    def source(self, path: tuple[str, ...]) -> str:
        """The file (or ``--set``) that set ``path`` or its nearest ancestor."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]]
        return self.main_source

    def rename(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        """Carry the origins of ``old`` and its sub-keys over to ``new``."""
        for path, source in list(self.origins.items()):
            if path[: len(old)] == old:
                self.origins[new + path[len(old) :]] = source


def _dotted(path: tuple[str, ...]) -> str:
    """``("datasets", "train", "[2]")`` -> ``"datasets.train[2]"``."""
    text = ""
    for part in path:
        text += part if part.startswith("[") or not text else f".{part}"
    return text


def _short(value: Any) -> str:
    """repr of ``value`` trimmed to 60 characters for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validate(node: SchemaNode, value: Any, path: tuple[str, ...], ctx: _Context) -> Any:
    """Validate ``value`` against any schema node; returns the cleaned value."""
    if isinstance(node, Field):
        return _validate_field(node, value, path, ctx)
    if not isinstance(value, Mapping):
        raise _type_error(path, "mapping", value, ctx)
    if isinstance(node, MapOf):
        return _validate_map(node, value, path, ctx)
    return _validate_section(node, value, path, ctx)


def _type_error(path: tuple[str, ...], expected: str, value: Any, ctx: _Context) -> OptionsError:
    """OptionsError for a value of the wrong type."""
    got = "null" if value is None else f"{type(value).__name__} {_short(value)}"
    source = ctx.source(path)
    return OptionsError(
        f"option '{_dotted(path)}' (from {source}): expected {expected}, got {got}", key=_dotted(path), source=source
    )


def _check_keys_are_strings(value: Mapping, path: tuple[str, ...], ctx: _Context) -> None:
    """Option keys must be strings (``1: x`` is almost always a mistake)."""
    for key in value:
        if not isinstance(key, str):
            source = ctx.source(path)
            raise OptionsError(
                f"option '{_dotted(path) or '<top level>'}' (from {source}) has a non-string key {key!r}",
                key=_dotted(path),
                source=source,
            )


def _resolve_aliases(section: Section, value: dict, path: tuple[str, ...], ctx: _Context) -> None:
    """Rename legacy keys to their current names in place, noting each for the warning."""
    for legacy, current in section.aliases.items():
        if legacy not in value:
            continue
        if current in value:
            key = _dotted((*path, legacy))
            raise OptionsError(
                f"options '{key}' (deprecated) and '{_dotted((*path, current))}' are both given "
                f"(from {ctx.source((*path, legacy))}); keep only '{current}'",
                key=key,
                source=ctx.source((*path, legacy)),
            )
        value[current] = value.pop(legacy)
        ctx.rename((*path, legacy), (*path, current))
        ctx.renamed.append(f"{_dotted((*path, legacy))} -> {_dotted((*path, current))}")


def _unknown_key_error(section: Section, key: str, path: tuple[str, ...], ctx: _Context) -> OptionsError:
    """OptionsError naming an unknown key, its file and the closest valid key."""
    full = _dotted((*path, key))
    source = ctx.source((*path, key))
    close = difflib.get_close_matches(key, list(section.fields), n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{_dotted((*path, close[0]))}'?"
    else:
        hint = f"valid keys here: {', '.join(sorted(section.fields)) or '(none)'}"
    return OptionsError(f"unknown option '{full}' in {source}; {hint}", key=full, source=source)


def _validate_section(section: Section, value: Mapping, path: tuple[str, ...], ctx: _Context) -> dict:
    """Validate a declared mapping: aliases, ignored keys, unknown keys, fields, defaults."""
    _check_keys_are_strings(value, path, ctx)
    value = dict(value)
    _resolve_aliases(section, value, path, ctx)
    out: dict = {}
    for key, item in value.items():
        if key in section.fields:
            out[key] = _validate(section.fields[key], item, (*path, key), ctx)
        elif key in section.ignored:
            ctx.ignored.append(_dotted((*path, key)))
        elif section.open:
            out[key] = copy.deepcopy(item)
        else:
            raise _unknown_key_error(section, key, path, ctx)
    for key, node in section.fields.items():
        if key not in out:
            out[key] = _missing_value(node, (*path, key), ctx)
    return out


def _missing_value(node: SchemaNode, path: tuple[str, ...], ctx: _Context) -> Any:
    """Value for an absent key: the default, an empty block, or a 'missing' error."""
    if isinstance(node, Section):
        return _validate_section(node, {}, path, ctx)
    if isinstance(node, MapOf):
        return {}
    if node.required:
        source = ctx.source(path[:-1])
        what = f" ({node.help})" if node.help else ""
        raise OptionsError(
            f"missing required option '{_dotted(path)}'{what}: expected {type_name(node.type_)} in {source}",
            key=_dotted(path),
            source=source,
        )
    return copy.deepcopy(node.default)


def _validate_map(node: MapOf, value: Mapping, path: tuple[str, ...], ctx: _Context) -> dict:
    """Validate a free-key mapping: every value against ``node.section``."""
    _check_keys_are_strings(value, path, ctx)
    return {key: _validate(node.section, item, (*path, key), ctx) for key, item in value.items()}


def _validate_field(field: Field, value: Any, path: tuple[str, ...], ctx: _Context) -> Any:
    """Type-check and coerce one value, then apply choices and path expansion."""
    if value is None:
        if field.nullable:
            return None
        raise _type_error(path, type_name(field.type_), value, ctx)
    try:
        value = _coerce(field.type_, value, path, ctx)
    except _Mismatch:
        raise _type_error(path, type_name(field.type_), value, ctx) from None
    if field.choices is not None and value not in field.choices:
        source = ctx.source(path)
        lowered = {str(c).lower(): c for c in field.choices}  # "adamw" -> "AdamW"
        close = difflib.get_close_matches(str(value).lower(), list(lowered), n=1)
        hint = f"; did you mean {lowered[close[0]]!r}?" if close else ""
        raise OptionsError(
            f"option '{_dotted(path)}' (from {source}) must be one of {list(field.choices)}, got {value!r}{hint}",
            key=_dotted(path),
            source=source,
        )
    if field.path:
        value = _expand_paths(value, path, ctx)
    return value


def _coerce(spec: Any, value: Any, path: tuple[str, ...], ctx: _Context) -> Any:
    """Coerce ``value`` to ``spec``; raises _Mismatch when its shape does not fit."""
    if isinstance(spec, tuple):
        for option in spec:
            try:
                return _coerce(option, value, path, ctx)
            except _Mismatch:
                continue
        raise _Mismatch
    if isinstance(spec, ListOf):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [_validate(spec.item, item, (*path, f"[{i}]"), ctx) for i, item in enumerate(value)]
    if isinstance(spec, (Section, MapOf)):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _validate(spec, value, path, ctx)
    return _coerce_scalar(spec, value)


def _coerce_scalar(spec: type, value: Any) -> Any:
    """Coerce to one of str/int/float/bool/list/dict (bools are not numbers)."""
    if spec is bool or spec is str:
        if isinstance(value, spec):
            return value
        raise _Mismatch
    if spec is float:
        return _to_float(value)
    if spec is int:
        return _to_int(value)
    if spec is list and isinstance(value, (list, tuple)):
        return plain(value)
    if spec is dict and isinstance(value, Mapping):
        return plain(value)
    raise _Mismatch


def _to_float(value: Any) -> float:
    """int, float or a numeric string ("2e-4") -> float."""
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise _Mismatch from None
    raise _Mismatch


def _to_int(value: Any) -> int:
    """int, an integral float (3e5) or a numeric string -> int; fractions are rejected."""
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = _to_float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Mismatch


def _expand_paths(value: Any, path: tuple[str, ...], ctx: _Context) -> Any:
    """Expand ``${ENV}``/``$ENV`` then ``~`` in every string of ``value``."""
    if isinstance(value, str):
        return expand_path_string(value, _dotted(path), ctx.source(path))
    if isinstance(value, list):
        return [_expand_paths(item, (*path, f"[{i}]"), ctx) for i, item in enumerate(value)]
    return value


def _warn_once(ctx: _Context) -> None:
    """Log at most one deprecation warning and one ignored-keys warning."""
    if ctx.renamed:
        logger.warning("deprecated option keys read under their new names: %s", ", ".join(ctx.renamed))
    if ctx.ignored:
        logger.warning(
            "ignoring option keys %s: accepted for compatibility, not used (accelerate owns distribution)",
            ", ".join(ctx.ignored),
        )


def coerce_default(field_type: Any, default: Any) -> Any:
    """Coerce a schema default through its field's type (``Field`` checks its default so).

    Args:
        field_type: the field's type spec.
        default: the declared default.

    Returns:
        The coerced default.

    Raises:
        ValueError: ``default`` does not fit ``field_type``.
    """
    try:
        return _coerce(field_type, default, (), _Context("<schema>"))
    except (_Mismatch, OptionsError) as err:
        raise ValueError(
            f"Field default={default!r} does not fit type_={type_name(field_type)}"
        ) from err


def validate_options(schema: Section, data: Mapping, origins: dict, source: str) -> dict:
    """Validate composed option data against the root section, then log the warnings.

    Args:
        schema: the root section.
        data: the composed options (files and overrides).
        origins: key path -> the file (or ``--set``) that set it, for error messages.
        source: the main file, named when a key has no recorded origin.

    Returns:
        The validated data with defaults filled (plain dicts and lists).

    Raises:
        OptionsError: an unknown key, a wrong type, a missing required key or an
            undefined ``${ENV}``.
    """
    ctx = _Context(source, origins)
    validated = _validate_section(schema, data, (), ctx)
    _warn_once(ctx)
    return validated

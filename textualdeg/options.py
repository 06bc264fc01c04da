"""Option files: YAML with inheritance, command-line overrides and schema validation.

An experiment is one YAML file in BasicSR's vocabulary (``name``, ``datasets.train``,
``network_g``, ``train.optim_g``...). This module turns it into a read-only, validated
:class:`Options` object:

1. ``base:`` inheritance: a file may name one base file or a list of them (paths relative
   to the including file). Bases are merged in order, then the file itself on top:
   mappings merge key by key (deep), every other value (lists included) is replaced.
2. Overrides ``--set a.b.c=value`` (the value is parsed as YAML) are applied on top;
   setting a key inside a missing mapping creates the mapping.
3. Validation against a declared schema (:class:`Section`, :class:`Field`,
   :class:`MapOf`, :class:`ListOf`): an unknown or misspelt key is an
   :class:`OptionsError` naming the dotted key, the file it came from (or ``--set``) and
   the closest valid key; a wrong type names the key and the expected type; a missing
   required key names it. Defaults are filled, numbers are coerced (``lr: 2e-4`` is a
   float, although YAML 1.1 reads it as a string), ``~`` and ``${ENV}`` are expanded in
   path fields, legacy keys are renamed (``lqroot`` -> ``dataroot_lq``, one deprecation
   warning) and keys that accelerate made obsolete (``num_gpu``) are dropped with one
   warning.

Example::

    SCHEMA = Section({
        "name": Field(str, help="experiment name"),
        "train": Section({"total_iter": Field(int, help="optimizer steps"),
                          "lr": Field(float, default=2e-4, help="learning rate")}),
    })
    opt = load_options("options/exp.yml", SCHEMA, ["train.total_iter=1000"])
    opt.train.total_iter  # 1000

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml

from textualdeg.fileio import atomic_write_text
from textualdeg.log import get_logger

logger = get_logger(__name__)

__all__ = [
    "REQUIRED",
    "Field",
    "ListOf",
    "MapOf",
    "Options",
    "OptionsError",
    "Section",
    "add_option_arguments",
    "describe_options",
    "load_options",
    "options_from_dict",
    "parse_options",
    "save_options",
]

OVERRIDE_SOURCE = "--set"
_BASE_KEY = "base"
_SCALAR_TYPES = (str, int, float, bool, list, dict)
_ENV_PATTERN = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_KEY_PART = re.compile(r"[A-Za-z0-9_\-]+\Z")


class _Required:
    """Type of the ``REQUIRED`` sentinel (a field without a default)."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


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


# --------------------------------------------------------------------------- schema


class ListOf:
    """A list whose items are all validated against ``item``.

    Args:
        item: a type (``int``, ``str``...), a tuple of types, a nested ``ListOf``, a
            ``Section``/``MapOf`` (list of mappings) or a ``Field`` (for choices/path).
    """

    def __init__(self, item: Any) -> None:
        self.item = item if isinstance(item, Field) else Field(item)

    def __repr__(self) -> str:
        return f"ListOf({_type_name(self.item.type_)})"


class Field:
    """One option value: its type, default, meaning and checks.

    Args:
        type_: ``str``, ``int``, ``float``, ``bool``, ``list``, ``dict``, a ``ListOf``, a
            ``Section``/``MapOf`` (e.g. ``Field(Section(...), default=None)`` for an
            optional block), or a tuple of those meaning "any of". ``float`` accepts ints
            and numeric strings (``"2e-4"``); ``int`` accepts integral floats and strings
            (``3e5``) and rejects fractional ones; ``bool`` is neither.
        default: value used when the key is absent; ``REQUIRED`` (the default) makes the
            key mandatory; ``None`` makes the field nullable.
        help: one-line meaning, shown by :func:`describe_options`.
        path: expand ``~`` and ``${ENV}`` / ``$ENV`` in string values (an undefined
            variable is an error).
        choices: allowed values (checked after coercion), or None for any.

    Raises:
        ValueError: ``type_`` is not a supported type spec, or ``default`` / ``choices``
            do not fit it.
    """

    def __init__(
        self,
        type_: Any,
        default: Any = REQUIRED,
        help: str = "",  # noqa: A002 - the contract's argument name
        path: bool = False,
        choices: Sequence[Any] | None = None,
    ) -> None:
        _check_type_spec(type_)
        self.type_ = type_
        self.help = help
        self.path = bool(path)
        self.choices = tuple(choices) if choices is not None else None
        self.default = default if default is REQUIRED or default is None else self._checked_default(default)

    @property
    def required(self) -> bool:
        """True when the key must be given (no default)."""
        return self.default is REQUIRED

    @property
    def nullable(self) -> bool:
        """True when ``null`` is an accepted value (the default is None)."""
        return self.default is None

    def _checked_default(self, default: Any) -> Any:
        """Coerce ``default`` through the field's own type; ValueError if it does not fit."""
        try:
            value = _coerce(self.type_, default, (), _Context("<schema>"))
        except (_Mismatch, OptionsError) as err:
            raise ValueError(
                f"Field default={default!r} does not fit type_={_type_name(self.type_)}"
            ) from err
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"Field default={default!r} is not one of choices={list(self.choices)}")
        return value

    def __repr__(self) -> str:
        return f"Field({_type_name(self.type_)}, default={self.default!r})"


class Section:
    """A mapping with a declared set of keys.

    Args:
        fields: key -> ``Field`` / ``Section`` / ``MapOf``. A missing ``Section`` child is
            filled from its own defaults (use ``Field(Section(...), default=None)`` for
            an optional block that stays null when absent).
        help: one-line meaning.
        aliases: legacy key -> current key (``{"lqroot": "dataroot_lq"}``); a legacy key is
            read as the current one and logged in one deprecation warning.
        ignored: keys that are accepted and dropped, with one warning (``num_gpu``).
        open: when True, keys outside ``fields`` are kept as given without validation
            (``network_g``: ``type`` plus constructor kwargs); declared fields are still
            validated and defaulted.

    Raises:
        ValueError: a field value is not a schema node, or an alias / ignored key clashes
            with a field.
    """

    def __init__(
        self,
        fields: Mapping[str, Field | Section | MapOf],
        help: str = "",  # noqa: A002 - the contract's argument name
        aliases: Mapping[str, str] | None = None,
        ignored: Sequence[str] | set[str] = (),
        open: bool = False,  # noqa: A002 - the contract's argument name
    ) -> None:
        for key, node in fields.items():
            if not isinstance(key, str) or not isinstance(node, (Field, Section, MapOf)):
                raise ValueError(
                    f"Section fields[{key!r}]={node!r}: expected a str key and a Field, Section or MapOf"
                )
        self.fields = dict(fields)
        self.help = help
        self.aliases = dict(aliases or {})
        self.ignored = frozenset(ignored)
        self.open = bool(open)
        for legacy, current in self.aliases.items():
            if current not in self.fields or legacy in self.fields:
                raise ValueError(
                    f"Section aliases[{legacy!r}]={current!r}: the target must be a field and the legacy key must not"
                )
        clash = self.ignored & (set(self.fields) | set(self.aliases))
        if clash:
            raise ValueError(f"Section ignored={sorted(self.ignored)}: {sorted(clash)} are also fields or aliases")

    def __repr__(self) -> str:
        return f"Section({sorted(self.fields)}{', open=True' if self.open else ''})"


class MapOf:
    """A mapping with free keys (``datasets: {train: ..., val_1: ...}``) and validated values.

    Args:
        section: the schema of every value: a ``Section``, a ``Field`` or a ``MapOf``.
        help: one-line meaning.
    """

    def __init__(self, section: Section | Field | MapOf, help: str = "") -> None:  # noqa: A002
        if not isinstance(section, (Section, Field, MapOf)):
            raise ValueError(f"MapOf section={section!r}: expected a Section, Field or MapOf")
        self.section = section
        self.help = help

    def __repr__(self) -> str:
        return f"MapOf({self.section!r})"


_Node = Union[Field, Section, MapOf]


def _check_type_spec(spec: Any) -> None:
    """Raise ValueError unless ``spec`` is a supported ``Field`` type spec."""
    if isinstance(spec, tuple):
        if not spec:
            raise ValueError("Field type_=(): an empty tuple accepts nothing")
        for option in spec:
            _check_type_spec(option)
    elif not (spec in _SCALAR_TYPES or isinstance(spec, (ListOf, Section, MapOf))):
        raise ValueError(
            f"Field type_={spec!r}: expected str, int, float, bool, list, dict, ListOf, Section, MapOf or a tuple"
        )


def _type_name(spec: Any) -> str:
    """Human name of a type spec: ``int``, ``list of int``, ``float or str``, ``mapping``."""
    if isinstance(spec, tuple):
        return " or ".join(_type_name(option) for option in spec)
    if isinstance(spec, ListOf):
        return f"list of {_type_name(spec.item.type_)}"
    if isinstance(spec, (Section, MapOf)):
        return "mapping"
    if isinstance(spec, Field):
        return _type_name(spec.type_)
    return spec.__name__


# --------------------------------------------------------------------------- YAML reading


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


def _parse_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; OptionsError naming ``source`` on a syntax error."""
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
    data = _parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionsError(
            f"option file {path}{where} must hold a mapping at the top level, got {type(data).__name__}",
            source=str(path),
        )
    return data


# --------------------------------------------------------------------------- composing


def _record_origins(data: Mapping, prefix: tuple[str, ...], source: str, origins: dict) -> None:
    """Note ``source`` as the origin of every key path in ``data``."""
    for key, value in data.items():
        path = (*prefix, str(key))
        origins[path] = source
        if isinstance(value, dict):
            _record_origins(value, path, source, origins)


def _merge(dst: dict, src: Mapping, prefix: tuple[str, ...], source: str, origins: dict) -> None:
    """Deep-merge ``src`` into ``dst``: mappings merge, anything else (lists too) replaces."""
    for key, value in src.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            origins[path] = source
            _merge(dst[key], value, path, source, origins)
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
    return [Path(os.path.normpath(path.parent / _expand_path_string(b, _BASE_KEY, str(path)))) for b in bases]


def _compose_with_origins(path: Path) -> tuple[dict, dict]:
    """Compose ``path`` and compute, for every key path, the file that set it last."""
    files: list[tuple[Path, dict]] = []
    _collect_files(path, files, (), None)
    merged: dict = {}
    origins: dict = {(): str(path)}
    for file_path, data in files:
        _merge(merged, data, (), str(file_path), origins)
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


# --------------------------------------------------------------------------- overrides


def _parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into key parts and the YAML-parsed value."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(_KEY_PART.match(part) for part in parts):
        raise OptionsError(
            f"bad override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.total_iter=1000",
            source=OVERRIDE_SOURCE,
        )
    return parts, _parse_yaml(text, f"{OVERRIDE_SOURCE} {item!r}")


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
    _merge(node, {parts[-1]: value}, tuple(parts[:-1]), OVERRIDE_SOURCE, origins)


def _apply_overrides(data: dict, overrides: Sequence[str] | Mapping[str, Any], origins: dict) -> None:
    """Apply ``--set`` strings (``"a.b=1"``) or a mapping of dotted key -> value."""
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


# --------------------------------------------------------------------------- validation


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


def _validate(node: _Node, value: Any, path: tuple[str, ...], ctx: _Context) -> Any:
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


def _missing_value(node: _Node, path: tuple[str, ...], ctx: _Context) -> Any:
    """Value for an absent key: the default, an empty block, or a 'missing' error."""
    if isinstance(node, Section):
        return _validate_section(node, {}, path, ctx)
    if isinstance(node, MapOf):
        return {}
    if node.required:
        source = ctx.source(path[:-1])
        what = f" ({node.help})" if node.help else ""
        raise OptionsError(
            f"missing required option '{_dotted(path)}'{what}: expected {_type_name(node.type_)} in {source}",
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
        raise _type_error(path, _type_name(field.type_), value, ctx)
    try:
        value = _coerce(field.type_, value, path, ctx)
    except _Mismatch:
        raise _type_error(path, _type_name(field.type_), value, ctx) from None
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
        return _plain(value)
    if spec is dict and isinstance(value, Mapping):
        return _plain(value)
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
        return _expand_path_string(value, _dotted(path), ctx.source(path))
    if isinstance(value, list):
        return [_expand_paths(item, (*path, f"[{i}]"), ctx) for i, item in enumerate(value)]
    return value


def _expand_path_string(text: str, key: str, source: str) -> str:
    """Expand environment variables (an undefined one is an error) and a leading ``~``."""

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


def _plain(value: Any) -> Any:
    """Deep copy as plain YAML types: Mappings -> dict, tuples -> list."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


def _warn_once(ctx: _Context) -> None:
    """Log at most one deprecation warning and one ignored-keys warning."""
    if ctx.renamed:
        logger.warning("deprecated option keys read under their new names: %s", ", ".join(ctx.renamed))
    if ctx.ignored:
        logger.warning(
            "ignoring option keys %s: accepted for compatibility, not used (accelerate owns distribution)",
            ", ".join(ctx.ignored),
        )


# --------------------------------------------------------------------------- Options


class Options(Mapping):
    """Read-only nested view of validated options.

    ``opt.train.total_iter`` and ``opt["train"]["total_iter"]`` both work; nested
    mappings come back as ``Options`` and lists as tuples, so nothing can be changed in
    place. A missing key raises ``AttributeError`` / ``KeyError`` naming the full dotted
    key; assignment raises. ``to_dict()`` returns a plain deep copy. Keys that shadow a
    method name (``keys``, ``items``...) are reached with ``opt["keys"]``.

    Args:
        data: the option values (deep-copied).
        prefix: dotted key of this view inside the whole options, for error messages.
    """

    __slots__ = ("_data", "_prefix")

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        object.__setattr__(self, "_data", _plain(data))
        object.__setattr__(self, "_prefix", prefix)

    @classmethod
    def _view(cls, data: dict, prefix: str) -> Options:
        """Wrap ``data`` without copying (internal: the data is never handed out)."""
        view = cls.__new__(cls)
        object.__setattr__(view, "_data", data)
        object.__setattr__(view, "_prefix", prefix)
        return view

    def _key(self, key: str) -> str:
        return f"{self._prefix}.{key}" if self._prefix else str(key)

    def _wrap(self, value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return Options._view(value, key)
        if isinstance(value, list):
            return tuple(self._wrap(item, f"{key}[{i}]") for i, item in enumerate(value))
        return value

    def _missing(self, key: str) -> str:
        close = difflib.get_close_matches(str(key), [str(k) for k in self._data], n=1)
        hint = f"; did you mean '{self._key(close[0])}'?" if close else ""
        return f"no option '{self._key(key)}'{hint}"

    def __getitem__(self, key: str) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            raise KeyError(self._missing(key)) from None
        return self._wrap(value, self._key(key))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in Options.__slots__:
            raise AttributeError(name)
        if name not in self._data:
            raise AttributeError(self._missing(name))
        return self._wrap(self._data[name], self._key(name))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"options are read-only: cannot set '{self._key(name)}' (use --set or the YAML file)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"options are read-only: cannot delete '{self._key(name)}'")

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(f"options are read-only: cannot set '{self._key(key)}' (use --set or the YAML file)")

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"options are read-only: cannot delete '{self._key(key)}'")

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == _plain(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self._data if isinstance(k, str)})

    def __reduce__(self) -> tuple:
        return (Options, (self._data, self._prefix))

    def __repr__(self) -> str:
        return f"Options({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain, independent deep copy (dicts and lists) of these options."""
        return copy.deepcopy(self._data)


# --------------------------------------------------------------------------- public API


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
    _merge(merged, _plain(data), (), source, origins)
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
    data, origins = _compose_with_origins(path)
    return _finish(data, origins, schema, overrides, str(path))


def _finish(
    data: dict, origins: dict, schema: Section, overrides: Sequence[str] | Mapping[str, Any], source: str
) -> Options:
    """Apply overrides, validate against ``schema``, log the warnings, wrap."""
    if not isinstance(schema, Section):
        raise ValueError(f"schema={schema!r}: expected a Section")
    _apply_overrides(data, overrides or (), origins)
    ctx = _Context(source, origins)
    validated = _validate_section(schema, data, (), ctx)
    _warn_once(ctx)
    return Options._view(validated, "")


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
    data = opt.to_dict() if isinstance(opt, Options) else _plain(opt)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def add_option_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``-opt/--opt FILE`` (required) and repeatable ``--set KEY=VALUE`` to ``parser``.

    After parsing, ``args.opt`` is the file and ``args.set`` the list of overrides, ready
    for ``load_options(args.opt, SCHEMA, args.set)``.

    Args:
        parser: the script's parser.

    Returns:
        The same parser.
    """
    parser.add_argument("-opt", "--opt", required=True, metavar="FILE", help="YAML option file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one option, e.g. --set train.total_iter=1000 (value parsed as YAML; repeatable)",
    )
    return parser


def parse_options(argv: Sequence[str] | None, schema: Section, description: str | None = None) -> Options:
    """Parse ``-opt FILE [--set k=v ...]`` from ``argv`` and load the options.

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.
        schema: the root section for this script.
        description: the ``--help`` text.

    Returns:
        The validated, read-only options.
    """
    parser = add_option_arguments(argparse.ArgumentParser(description=description))
    args = parser.parse_args(argv)
    return load_options(args.opt, schema, args.set)


def describe_options(schema: Section | MapOf | Field, prefix: str = "") -> str:
    """One line per key: dotted key, type, default and meaning (for docs and ``--help``).

    Args:
        schema: a section (or any node) to describe.
        prefix: dotted key of ``schema``; ``<name>`` marks free keys of a ``MapOf``.

    Returns:
        The description, one key per line.
    """
    lines: list[str] = []
    if isinstance(schema, Field):
        default = "required" if schema.required else f"default {schema.default!r}"
        extra = f", one of {list(schema.choices)}" if schema.choices else ""
        extra += ", path" if schema.path else ""
        lines.append(f"{prefix}: {_type_name(schema.type_)} ({default}{extra}) {schema.help}".rstrip())
        specs = schema.type_ if isinstance(schema.type_, tuple) else (schema.type_,)
        lines.extend(describe_options(s, prefix) for s in specs if isinstance(s, (Section, MapOf)))
    elif isinstance(schema, MapOf):
        lines.append(describe_options(schema.section, f"{prefix}.<name>" if prefix else "<name>"))
    else:
        for key, node in schema.fields.items():
            full = f"{prefix}.{key}" if prefix else key
            if isinstance(node, Field):
                lines.append(describe_options(node, full))
            else:
                lines.append(f"{full}: {node.help}".rstrip() if node.help else f"{full}:")
                lines.append(describe_options(node, full))
    return "\n".join(line for line in lines if line)

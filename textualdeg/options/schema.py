"""The schema vocabulary: :class:`Field`, :class:`Section`, :class:`MapOf`, :class:`ListOf`.

A schema declares every accepted key with its type, default and one-line meaning;
``validation.py`` checks option data against it.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

__all__ = [
    "REQUIRED",
    "Field",
    "ListOf",
    "MapOf",
    "SchemaNode",
    "Section",
    "type_name",
]

_SCALAR_TYPES = (str, int, float, bool, list, dict)


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


class ListOf:
    """A list whose items are all validated against ``item``.

    Args:
        item: a type (``int``, ``str``...), a tuple of types, a nested ``ListOf``, a
            ``Section``/``MapOf`` (list of mappings) or a ``Field`` (for choices/path).
    """

    def __init__(self, item: Any) -> None:
        self.item = item if isinstance(item, Field) else Field(item)

    def __repr__(self) -> str:
        return f"ListOf({type_name(self.item.type_)})"


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
        from textualdeg.options.validation import coerce_default  # validation imports this module

        value = coerce_default(self.type_, default)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"Field default={default!r} is not one of choices={list(self.choices)}")
        return value

    def __repr__(self) -> str:
        return f"Field({type_name(self.type_)}, default={self.default!r})"


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


SchemaNode = Union[Field, Section, MapOf]


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


def type_name(spec: Any) -> str:
    """Human name of a type spec: ``int``, ``list of int``, ``float or str``, ``mapping``.

    Args:
        spec: a ``Field`` type spec (or a ``Field``).

    Returns:
        The name used in error messages and descriptions.
    """
    if isinstance(spec, tuple):
        return " or ".join(type_name(option) for option in spec)
    if isinstance(spec, ListOf):
        return f"list of {type_name(spec.item.type_)}"
    if isinstance(spec, (Section, MapOf)):
        return "mapping"
    if isinstance(spec, Field):
        return type_name(spec.type_)
    return spec.__name__

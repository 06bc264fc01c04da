"""The read-only, nested :class:`Options` view that code reads (``opt.train.total_iter``).

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from textualdeg.options.values import plain

__all__ = [
    "Options",
]


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
        object.__setattr__(self, "_data", plain(data))
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
            return self._data == plain(other)
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

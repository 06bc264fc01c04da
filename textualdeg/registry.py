"""Name -> class registries for archs, datasets, losses and lr schedulers.

Keeps BasicSR's API (``register``, ``get``, ``in``, ``keys``) without its import
scanning: registries are filled by explicit imports (see
``textualdeg/restoration/archs/__init__.py``). A duplicate name is an error and an
unknown name raises ``KeyError`` listing every registered name.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterator


class Registry:
    """A named mapping from strings to classes or functions.

    Args:
        name (str): what the registry holds, used in error messages ("arch").
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._entries: dict[str, Any] = {}

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """Register ``obj`` under ``name`` (default: its ``__name__``).

        Usable as ``@REG.register()``, ``@REG.register(name="X")`` or
        ``REG.register(cls)``.
        """
        if obj is None:
            return lambda o: self.register(o, name=name)
        key = name or obj.__name__
        if key in self._entries:
            raise KeyError(
                f"{self._name} '{key}' is already registered "
                f"(by {self._entries[key].__module__}); names must be unique"
            )
        self._entries[key] = obj
        return obj

    def get(self, name: str) -> Any:
        """Return the entry called ``name``; ``KeyError`` listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(
                f"unknown {self._name} '{name}'; registered {self._name}s: {known}"
            ) from None

    def build(self, spec: dict[str, Any], **extra: Any) -> Any:
        """Instantiate ``spec['type']`` with the remaining keys (BasicSR's build_network)."""
        if "type" not in spec:
            raise KeyError(f"{self._name} spec needs a 'type' key; got keys {sorted(spec)}")
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        kwargs.update(extra)
        cls = self.get(spec["type"])
        problem = _argument_problem(cls, kwargs)
        if problem:
            raise TypeError(f"cannot build {self._name} '{spec['type']}' with {sorted(kwargs)}: {problem}")
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise TypeError(f"cannot build {self._name} '{spec['type']}' with {sorted(kwargs)}: {err}") from err
        except ValueError as err:
            if type(err) is not ValueError:  # a subclass (OptionsError, ...) callers may catch: as raised
                raise
            # a bad value: the constructor's message names the argument, this names the type
            raise ValueError(f"cannot build {self._name} '{spec['type']}': {err}") from err

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def keys(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self._name!r}, {self.keys()})"


def _argument_problem(obj: Any, kwargs: dict[str, Any]) -> str | None:
    """Name the unknown and the missing keyword arguments of ``obj(**kwargs)``, if any.

    Returns None when the call fits the signature (or the signature cannot be read).
    """
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    problems = []
    for key in sorted(set(kwargs) - set(named)):
        close = difflib.get_close_matches(key, list(named), n=1)
        problems.append(f"unknown argument '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in kwargs]
    problems += [f"missing argument '{n}'" for n in missing]
    if not problems:
        return None
    return "; ".join(problems) + f"; it takes: {', '.join(named) or '(no arguments)'}"


ARCH_REGISTRY = Registry("arch")
DATASET_REGISTRY = Registry("dataset")
LOSS_REGISTRY = Registry("loss")
SCHEDULER_REGISTRY = Registry("lr scheduler")

__all__ = ["Registry", "ARCH_REGISTRY", "DATASET_REGISTRY", "LOSS_REGISTRY", "SCHEDULER_REGISTRY"]

"""A schema as text: one line per key with its type, default and meaning.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

from textualdeg.options.schema import Field, MapOf, Section, type_name

__all__ = [
    "describe_options",
]


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
        lines.append(f"{prefix}: {type_name(schema.type_)} ({default}{extra}) {schema.help}".rstrip())
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

"""The option arguments of every script: ``-opt FILE`` and repeatable ``--set KEY=VALUE``.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from textualdeg.options.loading import load_options
from textualdeg.options.schema import Section
from textualdeg.options.view import Options

__all__ = [
    "add_option_arguments",
    "parse_options",
]


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

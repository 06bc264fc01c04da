"""Option files: YAML with inheritance, command-line overrides and schema validation.

An experiment is one YAML file in BasicSR's vocabulary (``name``, ``datasets.train``,
``network_g``, ``train.optim_g``...). This package turns it into a read-only, validated
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

One module per job: ``schema.py`` (the vocabulary), ``yaml_files.py`` (reading files and
``base:`` chains), ``overrides.py`` (``--set``), ``validation.py`` (checking against the
schema), ``view.py`` (the ``Options`` view), ``loading.py`` (load and save),
``command_line.py`` (``-opt`` / ``--set`` arguments), ``describe.py`` (the schema as
text), ``errors.py`` and ``values.py`` (shared by the others).

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from textualdeg.options.command_line import add_option_arguments, parse_options
from textualdeg.options.describe import describe_options
from textualdeg.options.errors import OptionsError
from textualdeg.options.loading import load_options, options_from_dict, save_options
from textualdeg.options.schema import REQUIRED, Field, ListOf, MapOf, Section
from textualdeg.options.view import Options

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

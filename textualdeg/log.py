"""Logging for textualdeg: one ``get_logger`` for the whole package.

Library modules call ``get_logger(__name__)`` and never ``print``. Entry points call
``setup_logging`` once: INFO on the main process, ERROR elsewhere (so a two-process
run logs each line once), optionally mirrored to a text file under
``experiments/<name>/logs/``.

Paper: arXiv:2312.17334.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Return the standard-library logger called ``name``."""
    return logging.getLogger(name)


def setup_logging(log_file: str | Path | None = None, *, is_main_process: bool = True) -> None:
    """Configure the ``textualdeg`` logger tree once per process.

    Args:
        log_file: optional text file that receives the same lines (main process only).
        is_main_process: INFO level when True, ERROR otherwise; third-party libraries
            (diffusers, transformers) are lowered to WARNING / ERROR the same way.
    """
    root = logging.getLogger("textualdeg")
    root.setLevel(logging.INFO if is_main_process else logging.ERROR)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    root.addHandler(stream)
    if log_file is not None and is_main_process:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(file_handler)
    root.propagate = False
    library_level = logging.WARNING if is_main_process else logging.ERROR
    for library in ("diffusers", "transformers", "accelerate"):
        logging.getLogger(library).setLevel(library_level)

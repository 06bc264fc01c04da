"""The one place textualdeg imports basicsr.

basicsr 1.4.2 (the only PyPI release) imports
``torchvision.transforms.functional_tensor``, a module torchvision removed (it is now the
private ``torchvision.transforms._functional_tensor``), and its package ``__init__``
imports every dataset, arch and model module, so even ``from basicsr.metrics import
calculate_psnr`` fails on current torchvision. ``import_basicsr`` registers the old
module name as an alias of the new one in ``sys.modules`` (only if nothing else
provides it; no attribute of any library object is changed) and then imports basicsr.
Importing basicsr takes about 5 s because of its eager ``__init__``; call this lazily.

We use basicsr for what it does well: the metric reference in tests, paired crops and
augmentation, lr schedulers.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_OLD_NAME = "torchvision.transforms.functional_tensor"
_NEW_NAME = "torchvision.transforms._functional_tensor"


def _alias_functional_tensor() -> None:
    """Make ``torchvision.transforms.functional_tensor`` importable on new torchvision."""
    if _OLD_NAME in sys.modules:
        return
    try:
        importlib.import_module(_OLD_NAME)  # old torchvision: the real module exists
        return
    except ImportError:
        pass
    sys.modules.setdefault(_OLD_NAME, importlib.import_module(_NEW_NAME))


def import_basicsr() -> ModuleType:
    """Import basicsr after making its stale torchvision import resolve.

    Returns:
        The ``basicsr`` module (``basicsr.metrics``, ``basicsr.data.transforms`` and
        ``basicsr.utils`` are importable afterwards).

    Raises:
        ImportError: basicsr is not installed (install it with
            ``pip install --no-build-isolation --no-deps basicsr==1.4.2``).
    """
    _alias_functional_tensor()
    try:
        return importlib.import_module("basicsr")
    except ImportError as err:
        raise ImportError(
            "textualdeg needs basicsr 1.4.2 for this feature; install it with "
            "`pip install --no-build-isolation --no-deps basicsr==1.4.2` "
            f"(import failed: {err})"
        ) from err


__all__ = ["import_basicsr"]

"""Import layering: ``pretrained/`` below ``data/`` below ``restoration/`` and ``guidance/``.

Checked by parsing every module's imports (top level and inside functions) with ``ast``,
so a lazy import that reaches upward is caught too.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "textualdeg"


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``import a.b``, ``from a.b import c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(("layer", "above"), [
    ("data", ("textualdeg.restoration", "textualdeg.guidance", "textualdeg.demo")),
    ("pretrained", ("textualdeg.data", "textualdeg.restoration", "textualdeg.guidance", "textualdeg.demo")),
])
def test_lower_layers_never_import_upward(layer, above):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    upward = {f"{path.relative_to(PACKAGE.parent)}: {name}" for path in files for name in _imported_modules(path)
              if any(name == top or name.startswith(top + ".") for top in above)}
    assert not upward, sorted(upward)


@pytest.mark.parametrize("module", ["textualdeg.restoration.reference.encoder",
                                    "textualdeg.restoration.reference.guided",
                                    "textualdeg.restoration.archs.memory"])
def test_module_imports_first_in_a_fresh_interpreter(module):
    """No import cycle bites whichever of these modules a script imports first."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

"""The ``textualdeg`` command: exit statuses whatever a command returns.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from textualdeg import cli


@pytest.mark.parametrize("returned, status", [({"written": 3}, 0), (Path("experiments/x"), 0), (None, 0), (2, 2)])
def test_command_results_become_exit_statuses(monkeypatch, returned, status):
    """``generate`` returns a summary dict and the trainers a path: both mean success."""
    import textualdeg.guidance.generate as generate

    monkeypatch.setattr(generate, "main", lambda argv: returned)
    assert cli.main(["generate", "-opt", "x.yml"]) == status

"""A tiny random BERT folder (the one `textualdeg make-tiny` writes), shared by the instruction tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from textualdeg.instruction.phrasings import instruction_split
from textualdeg.pretrained.bert import save_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    split = instruction_split()
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", [t for t, _ in split.train + split.val], seed=30)

"""Instructions as guidance: TextPromptIR's instruction encoder and its instruction set.

``phrasings`` holds the instruction set (many phrasings per task, split by phrasing),
``encoder`` the BERT + task head (``InstructionEncoder``), ``train`` its fine-tuning under
the training engine, ``schema`` its option schema. transformers is imported by
``encoder`` (through ``textualdeg.pretrained.bert``) only when a model is loaded.

TextPromptIR: arXiv:2312.06162. Paper: "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from textualdeg.instruction.phrasings import ALL_TASKS, InstructionSplit, instruction_split

__all__ = ["ALL_TASKS", "InstructionSplit", "instruction_split"]

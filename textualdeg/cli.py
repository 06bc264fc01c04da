"""The ``textualdeg`` command.

Sub-commands dispatch to the package; each imports its stage lazily so that
``textualdeg --help`` is fast and a stage's heavy dependencies (diffusers,
transformers) load only when that stage runs.

    textualdeg make-tiny DIR                 tiny random-weight SD/CLIP/DINOv2/BERT folders
    textualdeg train-instruction -opt FILE   fine-tune TextPromptIR's instruction encoder
    textualdeg train-daclip -opt FILE        DA-CLIP's degradation-aware controller
    textualdeg classify-degradation --input DIR --daclip PATH
    textualdeg evaluate-daclip ...           DA-CLIP classifier accuracy and confusion matrix
    textualdeg train-restoration -opt FILE   stage 4 (same as scripts/train/train_restoration.py)
    textualdeg evaluate -opt FILE            stage 5 (same as scripts/eval/evaluate.py)
    textualdeg restore --input ... --output ... --experiment ...

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# sub-command -> (module, function taking argv, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "make-tiny": ("textualdeg.guidance.tiny", "main", "write tiny random-weight model folders"),
    "train-i2t": ("textualdeg.guidance.train", "main_i2t", "stage 1: train the image-to-text mapper"),
    "train-tr": ("textualdeg.guidance.train", "main_tr", "stage 2: train the textual-restoration mapper"),
    "generate": ("textualdeg.guidance.generate", "main", "stage 3: generate guidance images"),
    "train-instruction": ("textualdeg.instruction.train", "main",
                          "TextPromptIR: fine-tune the instruction encoder (BERT + task head)"),
    "train-daclip": ("textualdeg.daclip.train", "main",
                     "DA-CLIP: train the degradation-aware controller on a CSV of (image, caption, degradation)"),
    "classify-degradation": ("textualdeg.daclip.classify", "main",
                             "DA-CLIP: print the predicted degradation of each image"),
    "evaluate-daclip": ("textualdeg.daclip.classify", "main_evaluate",
                        "DA-CLIP: per-class accuracy and confusion matrix on a labelled folder"),
    "train-restoration": ("textualdeg.restoration.train", "main", "stage 4: train a guided backbone"),
    "evaluate": ("textualdeg.evaluation", "main", "stage 5: PSNR/SSIM under a named protocol"),
    "restore": ("textualdeg.restore_photos", "main", "restore your own images with a trained experiment"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textualdeg",
        description="TextualDegRemoval training framework (arXiv:2312.17334).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in _COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textualdeg`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        parser.error(f"unknown command '{command}'; choose from {', '.join(_COMMANDS)}")
    module_name, function_name, _ = _COMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(rest)
    # commands return their results (a path, a summary dict) or an exit status (int)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())

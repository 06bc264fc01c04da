"""Fine-tune TextPromptIR's instruction encoder (BERT + task head) from an option file.

TextPromptIR: arXiv:2312.06162. Paper: "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

    python scripts/train/train_instruction_encoder.py -opt options/train_instruction/textpromptir_tiny_cpu.yml
    accelerate launch scripts/train/train_instruction_encoder.py -opt options/train_instruction/textpromptir_bert_base.yml
"""

from __future__ import annotations

import argparse
from typing import Sequence

from textualdeg.instruction.schema import INSTRUCTION_SCHEMA
from textualdeg.instruction.train import train_instruction_encoder
from textualdeg.options import add_option_arguments, load_options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``-opt FILE`` and repeatable ``--set key.path=value``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_option_arguments(parser).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    train_instruction_encoder(load_options(args.opt, INSTRUCTION_SCHEMA, args.set))


if __name__ == "__main__":
    main(parse_args())

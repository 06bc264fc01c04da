"""Train the DA-CLIP controller (frozen CLIP, contrastive content + degradation losses) from an option file.

DA-CLIP: "Controlling Vision-Language Models for Multi-Task Image Restoration" (Luo et al.,
ICLR 2024), arXiv:2310.01018. See docs/daclip.md.

    python scripts/train/train_daclip.py -opt options/train_daclip/daclip_tiny_cpu.yml
    accelerate launch scripts/train/train_daclip.py -opt options/train_daclip/daclip_vit_b_32.yml
"""

from __future__ import annotations

import argparse
from typing import Sequence

from textualdeg.daclip.schema import DACLIP_SCHEMA
from textualdeg.daclip.train import train_daclip
from textualdeg.options import add_option_arguments, load_options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``-opt FILE`` and repeatable ``--set key.path=value``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_option_arguments(parser).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    train_daclip(load_options(args.opt, DACLIP_SCHEMA, args.set))


if __name__ == "__main__":
    main(parse_args())

"""Train a (guided) restoration network from a BasicSR-style option file (stage 4).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

    python scripts/train/train_restoration.py -opt options/train_restoration/tiny_cpu.yml
    torchrun --nproc_per_node 4 scripts/train/train_restoration.py -opt FILE --set train.total_iter=1000
    accelerate launch --config_file configs/accelerate/4_gpu.yaml scripts/train/train_restoration.py -opt FILE
"""

from __future__ import annotations

import argparse
from typing import Sequence

from textualdeg.options import add_option_arguments, load_options
from textualdeg.restoration.schema import RESTORATION_SCHEMA
from textualdeg.restoration.train import train


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``-opt FILE`` and repeatable ``--set key.path=value``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_option_arguments(parser).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    train(load_options(args.opt, RESTORATION_SCHEMA, args.set))


if __name__ == "__main__":
    main(parse_args())

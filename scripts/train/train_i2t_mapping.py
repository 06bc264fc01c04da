"""Stage 1: train the image-to-text mapper and the global cross-attention K/V.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

    python scripts/train/train_i2t_mapping.py -opt options/train_i2t/sd21base_vith14.yml
    torchrun --nproc_per_node 4 scripts/train/train_i2t_mapping.py -opt FILE --set train.max_train_steps=1000
    accelerate launch --config_file configs/accelerate/4_gpu.yaml scripts/train/train_i2t_mapping.py -opt FILE
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from textualdeg.guidance.schema import I2T_SCHEMA
from textualdeg.guidance.train import train_mapper
from textualdeg.options import add_option_arguments, load_options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``-opt FILE`` and repeatable ``--set key.path=value``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_option_arguments(parser).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    train_mapper(load_options(args.opt, I2T_SCHEMA, args.set), "i2t")


if __name__ == "__main__":
    main(parse_args())

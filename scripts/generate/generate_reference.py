"""Stage 3: generate one guidance image per degraded input (LQ -> CLIP -> I2T -> TR -> DDIM + CFG).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

    python scripts/generate/generate_reference.py -opt options/generate/sd21base_vith14.yml
    torchrun --nproc_per_node 4 scripts/generate/generate_reference.py -opt FILE --set generate.steps=50
    accelerate launch --config_file configs/accelerate/4_gpu.yaml scripts/generate/generate_reference.py -opt FILE
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from textualdeg.guidance.generate import generate
from textualdeg.guidance.schema import GENERATE_SCHEMA
from textualdeg.options import add_option_arguments, load_options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``-opt FILE`` and repeatable ``--set key.path=value``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_option_arguments(parser).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    generate(load_options(args.opt, GENERATE_SCHEMA, args.set))


if __name__ == "__main__":
    main(parse_args())

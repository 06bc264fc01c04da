"""Evaluate a restoration checkpoint: PSNR/SSIM per image and per test set, protocol recorded.

    python scripts/eval/evaluate.py -opt options/test/deblur_gopro.yml
    python scripts/eval/evaluate.py -opt options/test/denoise_color_sigma25.yml \
        --set path.pretrain_network_g=experiments/017_x/checkpoints/net_g_latest.safetensors --set test.tile=512

Writes results/<name>/{results.json, results.md, <dataset>/per_image.csv}. The option keys
are declared in ``textualdeg.evaluation.EVALUATION_SCHEMA``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import argparse

from textualdeg.evaluation import EVALUATION_SCHEMA, evaluate
from textualdeg.log import setup_logging
from textualdeg.options import add_option_arguments, load_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``-opt FILE`` and repeatable ``--set key.path=value``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_option_arguments(parser).parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    """Load the options and run the evaluation; returns the results record."""
    setup_logging()
    opt = load_options(args.opt, EVALUATION_SCHEMA, args.set)
    return evaluate(opt)


if __name__ == "__main__":
    main(parse_args())

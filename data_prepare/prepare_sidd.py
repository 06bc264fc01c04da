"""Prepare SIDD: Abdelhamed et al., CVPR 2018, 'A High-Quality Denoising Dataset for Smartphone Cameras' (SIDD-Medium sRGB).

Usage:
    python data_prepare/prepare_sidd.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_sidd.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('SIDD'))

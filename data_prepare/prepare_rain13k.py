"""Prepare Rain13K: Zamir et al., CVPR 2021 (MPRNet's merged deraining train set: Rain14000, Rain1800, Rain800, Rain12).

Usage:
    python data_prepare/prepare_rain13k.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_rain13k.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Rain13K'))

"""Prepare Rain100H: Yang et al., CVPR 2017 (heavy rain test set).

Usage:
    python data_prepare/prepare_rain100h.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_rain100h.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Rain100H'))

"""Prepare BSD400: Martin et al., ICCV 2001 (Berkeley Segmentation Dataset, 400 training images, gray).

Usage:
    python data_prepare/prepare_bsd400.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_bsd400.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('BSD400'))

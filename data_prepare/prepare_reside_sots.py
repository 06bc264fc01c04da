"""Prepare RESIDE_SOTS: Li et al., TIP 2019 (RESIDE Synthetic Objective Testing Set).

Usage:
    python data_prepare/prepare_reside_sots.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_reside_sots.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('RESIDE_SOTS'))

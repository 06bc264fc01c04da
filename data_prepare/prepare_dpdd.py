"""Prepare DPDD: Abuolaim and Brown, ECCV 2020, 'Defocus Deblurring Using Dual-Pixel Data' (dd_dp_dataset_png, 16-bit).

Usage:
    python data_prepare/prepare_dpdd.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_dpdd.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('DPDD'))

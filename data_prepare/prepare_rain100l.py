"""Prepare Rain100L: Yang et al., CVPR 2017, 'Deep Joint Rain Detection and Removal from a Single Image'.

Usage:
    python data_prepare/prepare_rain100l.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_rain100l.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Rain100L'))

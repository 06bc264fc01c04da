"""Prepare Set12: Zhang et al., TIP 2017 (DnCNN's 12 gray test images).

Usage:
    python data_prepare/prepare_set12.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_set12.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Set12'))

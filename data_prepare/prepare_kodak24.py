"""Prepare Kodak24: Kodak Lossless True Color Image Suite (kodim01-24).

Usage:
    python data_prepare/prepare_kodak24.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_kodak24.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Kodak24'))

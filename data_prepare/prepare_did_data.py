"""Prepare DID-Data: Zhang and Patel, CVPR 2018, 'Density-aware Single Image De-raining using a Multi-stream Dense Network'.

Usage:
    python data_prepare/prepare_did_data.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_did_data.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('DID-Data'))

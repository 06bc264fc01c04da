"""Prepare CBSD68: Martin et al., ICCV 2001 (68 test images of BSDS300, colour).

Usage:
    python data_prepare/prepare_cbsd68.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_cbsd68.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('CBSD68'))

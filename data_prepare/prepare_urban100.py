"""Prepare Urban100: Huang et al., CVPR 2015, 'Single Image Super-Resolution from Transformed Self-Exemplars' (HR images).

Usage:
    python data_prepare/prepare_urban100.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_urban100.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Urban100'))

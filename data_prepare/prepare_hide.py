"""Prepare HIDE: Shen et al., ICCV 2019, 'Human-Aware Motion Deblurring' (HIDE_dataset).

Usage:
    python data_prepare/prepare_hide.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_hide.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('HIDE'))

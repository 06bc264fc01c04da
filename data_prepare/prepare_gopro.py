"""Prepare GoPro: Nah et al., CVPR 2017, 'Deep Multi-scale CNN for Dynamic Scene Deblurring' (GOPRO_Large.zip).

Usage:
    python data_prepare/prepare_gopro.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_gopro.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('GoPro'))

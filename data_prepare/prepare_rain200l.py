"""Prepare Rain200L: Yang et al., CVPR 2017 / TPAMI 2019 (RainTrainL / Rain200L as DRSformer distributes it).

Usage:
    python data_prepare/prepare_rain200l.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_rain200l.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Rain200L'))

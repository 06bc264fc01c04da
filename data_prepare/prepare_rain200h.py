"""Prepare Rain200H: Yang et al., CVPR 2017 / TPAMI 2019 (RainTrainH / Rain200H as DRSformer distributes it).

Usage:
    python data_prepare/prepare_rain200h.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_rain200h.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('Rain200H'))

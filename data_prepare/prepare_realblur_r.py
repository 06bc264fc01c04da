"""Prepare RealBlur_R: Rim et al., ECCV 2020 (RealBlur-R, raw-derived variant).

Usage:
    python data_prepare/prepare_realblur_r.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_realblur_r.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('RealBlur_R'))

"""Prepare RealBlur_J: Rim et al., ECCV 2020, 'Real-World Blur Dataset for Learning and Benchmarking Deblurring Algorithms'.

Usage:
    python data_prepare/prepare_realblur_j.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_realblur_j.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('RealBlur_J'))

"""Prepare DND: Plotz and Roth, CVPR 2017, 'Benchmarking Denoising Algorithms with Real Photographs'.

Usage:
    python data_prepare/prepare_dnd.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_dnd.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('DND'))

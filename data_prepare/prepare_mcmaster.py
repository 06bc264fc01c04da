"""Prepare McMaster: Zhang et al., JEI 2011 (McMaster colour demosaicking set, 18 images).

Usage:
    python data_prepare/prepare_mcmaster.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_mcmaster.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('McMaster'))

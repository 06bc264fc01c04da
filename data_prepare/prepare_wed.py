"""Prepare WED: Ma et al., TIP 2017, 'Waterloo Exploration Database' (pristine_images).

Usage:
    python data_prepare/prepare_wed.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_wed.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('WED'))

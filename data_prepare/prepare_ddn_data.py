"""Prepare DDN-Data: Fu et al., CVPR 2017, 'Removing Rain from Single Images via a Deep Detail Network' (Rain14000).

Usage:
    python data_prepare/prepare_ddn_data.py --source DOWNLOAD_DIR --output datasets
    python data_prepare/prepare_ddn_data.py --check --output datasets

See data_prepare/DatasetPreparation.md for the download, its license and the layout.
"""

import sys

from textualdeg.data.prepare import main

if __name__ == "__main__":
    sys.exit(main('DDN-Data'))

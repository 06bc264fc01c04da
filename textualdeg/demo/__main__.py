"""``python -m textualdeg.demo``: run the demo (see ``textualdeg.demo.run``)."""

import sys

from textualdeg.demo.run import main

sys.exit(main())

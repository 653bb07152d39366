"""``python -m crfrnn``: the same command line as the ``crfrnn`` console script."""

import sys

from crfrnn.cli import main

sys.exit(main())

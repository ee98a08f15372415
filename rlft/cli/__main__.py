"""``python -m rlft.cli <command> ...``: the same as the ``rlft`` console script."""

import sys

from . import main

sys.exit(main())

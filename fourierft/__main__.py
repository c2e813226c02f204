"""``python -m fourierft``: the same command line as the ``fourierft`` script."""

from __future__ import annotations

import sys

from fourierft.cli import main

if __name__ == "__main__":
    sys.exit(main())

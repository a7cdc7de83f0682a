"""``python -m pyroflows.cli``: the ``pyroflows`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())

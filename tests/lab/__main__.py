"""``python -m tests.lab`` is ``python -m testbed.multihost``."""

import sys

from testbed.multihost.__main__ import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m pflask`."""

import sys

from pflask.cli import main

sys.exit(main())

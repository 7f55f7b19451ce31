"""`python -m neuromas ...` (and `torchrun ... -m neuromas train ...`): the `neuromas` command line."""

import sys

from neuromas.cli import main

sys.exit(main())

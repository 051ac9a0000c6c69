"""`python -m potstill.cli ...` (what `accelerate launch` starts for `potstill train-worker`)."""

import sys

from potstill.cli import main

sys.exit(main())

"""`python -m nanogpt ...` (also what `torchrun -m nanogpt train ...` runs)."""

import sys

from .cli import main

sys.exit(main())

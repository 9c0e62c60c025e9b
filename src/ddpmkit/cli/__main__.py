"""`python -m ddpmkit.cli ...` (and `torchrun ... -m ddpmkit.cli train ...`): the `ddpm` command."""

import sys

from . import main

sys.exit(main())

"""python -m cascade.bank: see cascade.bank.cli."""

import sys

from cascade.bank.cli import main

sys.exit(main())

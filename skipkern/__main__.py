"""``python -m skipkern``: the command line (see skipkern.cli)."""
import sys

from skipkern.cli import main

sys.exit(main())

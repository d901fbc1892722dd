"""``python -m bpflbr_shell``: the same entry point as the ``bpflbr-shell`` script."""

import sys

from bpflbr_shell.cli import main

sys.exit(main())

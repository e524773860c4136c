"""``python -m dstcore.cli``: the ``dst`` command line (what the Snakemake rules run)."""

import sys

from dstcore.cli import main

sys.exit(main())

"""``python -m bksdm_ext`` is the ``bksdm`` command."""
import sys

from .cli import main

sys.exit(main())

"""``python -m mvptr.cli``: the ``mvptr`` command."""

import sys

from . import main

sys.exit(main())

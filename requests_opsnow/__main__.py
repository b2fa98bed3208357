"""``python -m requests_opsnow``: the same as the ``opsnow`` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m segflow`` is the ``segflow`` command."""

import sys

from .cli import main

sys.exit(main())

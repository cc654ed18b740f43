"""``python -m fewshot`` is the ``fewshot`` command."""

import sys

from .cli import main

sys.exit(main())

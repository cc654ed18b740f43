"""``python -m fewshot`` is the ``fewshot`` command."""

import sys

from fewshot.cli import main

sys.exit(main())

"""``python -m ntkfast`` is the ``ntkfast`` command."""
import sys

from .cli import main

sys.exit(main())

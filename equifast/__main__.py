"""``python -m equifast ...``: the ``equifast`` command, from the interpreter that runs it (a
venv's, without putting its scripts on PATH)."""
import sys

from .cli import main

sys.exit(main())

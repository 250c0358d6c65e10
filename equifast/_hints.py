"""The "did you mean" hint of equifast's error messages."""

import difflib
from typing import Iterable


def did_you_mean(word, choices: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` for the ``choices`` that look like ``word``, ``""`` for none."""
    close = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""

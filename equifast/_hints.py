"""Hints of equifast's error messages: "did you mean", and what to install."""

import difflib
import importlib
import re
from typing import Dict, Iterable


def did_you_mean(word, choices: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` for the ``choices`` that look like ``word``, ``""`` for none."""
    choices = list(choices)
    close = difflib.get_close_matches(str(word), choices, n=n, cutoff=0.6)
    if not close:  # another case: "NONE" has no letter in common with "none"
        lowered = {}
        for choice in choices:
            lowered.setdefault(str(choice).lower(), choice)
        close = [lowered[c] for c in difflib.get_close_matches(str(word).lower(), list(lowered),
                                                               n=n, cutoff=0.6)]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def as_flags(message: str, flags: Dict[str, str]) -> str:
    """``message`` with each Python argument written `` `name` `` given as its command-line flag
    and each ``name='value'`` or ``name=number`` as ``flag value`` (``flags``: name -> flag),
    for the errors and warnings a command shows."""
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", flag)
        message = re.sub(rf"(?<![\w.]){re.escape(name)}=(?:'([^'\s]*)'|(-?\d+(?:\.\d+)?)(?![\w.]))",
                         lambda m: f"{flag} {m[1] if m[1] is not None else m[2]}", message)
    return message


def import_optional(module: str, extra: str, what: str):
    """``module`` imported, or a ``ModuleNotFoundError`` saying that ``what`` needs it and which
    extra of equifast installs it (Python's own names the module only)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{what} needs {module.split('.')[0]}, which does not import here ({err}); install "
            f"it with `pip install \"equifast[{extra}]\"` (from a clone: pip install "
            f"--no-build-isolation -e \".[{extra}]\").", name=module) from err


# advice to download, which the commands that read data in place (measure, sweeps) cannot take:
# training's clause (", or pass download=True (--download)") and torchvision's sentence
# ("Dataset not found or corrupted. You can use download=True to download it"); a dot inside a
# path (/data/places.v2/val.txt) ends no sentence
_DOWNLOAD_ADVICE = (re.compile(r",? or [^,.;]*?(?:download=True \(--download\)|--download)[^,.;]*"),
                    re.compile(r"(?:^|\.\s+)[^.()]*\bdownload=True\b[^.()]*(?=[.)]|$)"))


def without_download_advice(message: str) -> str:
    """``message`` without its advice to download (pass ``download=True``), the rest whole."""
    for pattern in _DOWNLOAD_ADVICE:
        message = pattern.sub("", message)
    return message.strip()

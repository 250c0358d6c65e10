"""How equifast's commands meet a terminal, a log file or a pipe: help texts, one-line
warnings, progress only on a terminal, a closed pipe, an output encoding that lacks a character.
Shared by ``equifast`` and ``equifast sweep`` (also a Ray job's entry point)."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

__all__ = ["HelpFormatter", "interactive", "show_warning", "closed_pipe", "tolerant_output"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` only where the help text does not already say it, and not for
    flags or options without a default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def interactive(stream) -> bool:
    """Whether ``stream`` is a terminal: a progress bar redrawn with carriage returns is
    garbage in a log file or a pipe."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def show_warning(message, category, filename, lineno, file=None, line=None):
    """equifast's own warnings as one line, like its errors (Python would name our source line
    and print it); other libraries' as Python shows them."""
    from .warning import EquifastWarning

    text = f"equifast: warning: {message}\n" if issubclass(category, EquifastWarning) else \
        warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(text)


def closed_pipe() -> int:
    """After a ``BrokenPipeError`` (stdout's reader left, as ``| head`` does): no second error
    when Python flushes what stdout still buffers at exit. Returns the exit status, 141."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no file descriptor (a test's)
        pass
    return 141  # 128 + SIGPIPE, as the shell reports a process a closed pipe ended


def tolerant_output() -> None:
    """stdout and stderr write what their encoding lacks as escapes: under an ASCII or Latin-1
    locale a path or model name with ``é`` or ``ρ`` printed after the work is done was an
    error (UnicodeEncodeError, exit 2) of a run that had succeeded."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # closed, or a stream that cannot change
                pass

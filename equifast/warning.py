"""The category of equifast's own warnings.

Filter them as a whole (``warnings.simplefilter("ignore", equifast.EquifastWarning)``); the
``equifast`` command shows them in one line, like its errors.
"""

import os
import sys
import warnings

__all__ = ["EquifastWarning"]


class EquifastWarning(UserWarning):
    """A warning of equifast: something measured, trained or drawn differently than asked, or
    not at all (no accuracy, a point skipped, a slower path)."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _internal() -> tuple:
    """equifast's folders: the package's, and those of equifast.training and
    equifast.distributed, which an editable install keeps in their own folders."""
    extra = (sys.modules.get(n) for n in ("equifast.training", "equifast.distributed"))
    return (_PACKAGE,) + tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                               for m in extra if getattr(m, "__file__", None))


def warn(message: str, category=EquifastWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line: the first caller
    outside equifast, however deep in equifast it is issued. A fixed ``stacklevel`` named a line
    of equifast when the warning came through another of its functions (``measure`` calling
    ``equivariance_scores``), and ``sys:1`` when it counted past the top of the stack."""
    # the frames of decorators around equifast's functions (@torch.no_grad()) are equifast's too
    wrappers = {os.path.abspath(m.__file__) for m in (sys.modules.get("torch.utils._contextlib"),
                                                      sys.modules.get("contextlib")) if m}
    internal = _internal()
    frame, level = sys._getframe(1), 2  # stacklevel 2: warn's caller
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(internal) and path not in wrappers:
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)

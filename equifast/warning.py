"""The category of equifast's own warnings.

Filter them as a whole (``warnings.simplefilter("ignore", equifast.EquifastWarning)``); the
``equifast`` command shows them in one line, like its errors.
"""

__all__ = ["EquifastWarning"]


class EquifastWarning(UserWarning):
    """A warning of equifast: something measured, trained or drawn differently than asked, or
    not at all (no accuracy, a point skipped, a slower path)."""

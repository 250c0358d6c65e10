"""Atomic file writes: readers see the old file or the whole new one, never half of it.

Shared by reports, training runs (checkpoints, metrics) and the sweep results store.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Sequence, Union

__all__ = ["atomic_write", "write_text_atomic", "write_csv_atomic", "save_figure_atomic",
           "check_own_folder"]


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a uniquely named file beside ``path``, flush it to disk and
    rename it over ``path`` (``os.replace`` is atomic on POSIX and Windows). The temporary
    file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Union[str, os.PathLike], data: Union[str, bytes]) -> Path:
    """Write text or bytes to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data) if isinstance(data, bytes)
                        else tmp.write_text(data))


def write_csv_atomic(path: Union[str, os.PathLike], table) -> Path:
    """Write a pandas table to ``path`` as CSV (no index), atomically."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def save_figure_atomic(fig, path: Union[str, os.PathLike], dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically, in the format of ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".").lower() or None
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))


def check_own_folder(path: Union[str, os.PathLike], markers: Sequence[str], what: str,
                     flag: str) -> Path:
    """Raise ``FileExistsError`` unless ``path`` is missing, empty, or holds one of ``markers``
    (what this library writes there first): a user's own files are never replaced. ``what``
    names the folder ("a run folder"), ``flag`` the argument that gave it (``--out``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"Expected {flag} {str(path)!r} to be a folder, but it is a file.")
    if path.is_dir() and not any((path / m).exists() for m in markers):
        others = sorted(p.name for p in path.iterdir())
        if others:
            raise FileExistsError(f"Expected {flag} {str(path)!r} to be {what} (with {markers[0]}) "
                                  f"or empty, but it holds other files: {others[:5]}. "
                                  f"Use another {flag}.")
    return path

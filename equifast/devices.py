"""Which device a run uses: the one asked for, checked before any work, or the best present."""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["parse_device", "resolve_device"]


def parse_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a ``torch.device``, whether or not this machine has it.

    Raises:
        ValueError: a value torch does not take as a device.
    """
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"Expected a device like 'cpu', 'cuda' or 'cuda:1', but got {device!r}.") from e


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``device`` as a ``torch.device`` (default: ``cuda`` when present, else ``cpu``).

    Raises:
        ValueError: an unknown device string, a CUDA device this machine does not have
            (no GPU, or an index past the last one), ``meta``, or another backend this torch
            cannot make a tensor on (``mps`` off a Mac).
    """
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Expected a CUDA device for {str(dev)!r}, but torch sees none on this "
                             "machine; use device 'cpu' (--device cpu), or none for the best "
                             "present.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"Expected a CUDA device index below {torch.cuda.device_count()}, but got "
                             f"{str(dev)!r}.")
    elif dev.type == "meta":  # shapes without values: every score would fail on .item()
        raise ValueError("Expected a device that holds values, but got 'meta' (tensors of shapes "
                         "alone); use 'cpu' or 'cuda'.")
    elif dev.type != "cpu":
        try:  # mps, xpu, xla...: torch names the backend it lacks only once a tensor is made
            torch.empty(0, device=dev)
        except Exception as err:  # NotImplementedError, AssertionError, RuntimeError, ImportError
            said = (str(err).splitlines() or [""])[0].split(". ")[0].rstrip(".")  # its first sentence
            raise ValueError(f"Expected a device this torch can use, but {str(dev)!r} is not "
                             f"available here ({type(err).__name__}: {said}); use 'cpu' or "
                             "'cuda'.") from err
    return dev

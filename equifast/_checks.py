"""The argument checks of equifast, training and the sweeps, written once: "an integer >= N",
a seed torch takes, and a path flag that is not empty."""

import numbers
import sys
from typing import Iterable, Optional, Tuple


def is_integer(value) -> bool:
    """Whether ``value`` is a whole number given as one: a Python or NumPy integer (a count read
    from a pandas table is ``numpy.int64``) or a 0-dim integer torch tensor; not a bool (``True``
    is 1 to Python, but never meant as a count) and not a float, even ``2.0``."""
    if isinstance(value, numbers.Integral):  # int, and numpy's integers (not numpy's bool)
        return not isinstance(value, bool)
    torch = sys.modules.get("torch")  # a tensor means torch is imported: no import here
    return (torch is not None and isinstance(value, torch.Tensor) and value.dim() == 0
            and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool))


def check_integer(name: str, value, minimum: int = 1, allow_none: bool = False,
                  none_means: str = "") -> Optional[int]:
    """``value`` as a Python ``int`` (``None`` when ``allow_none`` and it is ``None``), or a
    ``ValueError`` "Expected {name} to be an integer >= {minimum} (or None: {none_means}), but
    got ...". ``name`` is written as given: ```n_images``` for an argument, ``--n-images`` for
    a flag; the "(or None: ...)" part is said only when ``none_means`` is given."""
    if value is None and allow_none:
        return None
    if not is_integer(value) or value < minimum:
        either = f" (or None: {none_means})" if allow_none and none_means else ""
        raise ValueError(f"Expected {name} to be an integer >= {minimum}{either}, but got {value!r}.")
    return int(value)


# what torch's generators take, but negatives: torch takes a seed s < 0 as 2**64 + s, so -1
# was another seed than 2**64 - 1 in the meta, and in a mean over seeds, but the same run
SEED_RANGE = (0, 2 ** 64 - 1)


def checked_seed(seed, name: str = "`seed`") -> int:
    """``seed`` as a Python ``int``, or a ``ValueError`` naming ``name``: a NumPy integer (a seed
    from ``np.arange`` or a pandas table) and a 0-dim integer tensor are taken (torch's
    ``manual_seed`` raised "an integer is required" for a NumPy one, and "Overflow when
    unpacking long long" for one out of its range); a negative one is refused, as the sweeps
    refuse it (it draws what ``2**64 + seed`` draws)."""
    if not is_integer(seed) or not SEED_RANGE[0] <= int(seed) <= SEED_RANGE[1]:
        negative = (f" (torch draws for it what it draws for {2 ** 64 + int(seed)}: pass that)"
                    if is_integer(seed) and -2 ** 63 <= int(seed) < 0 else "")
        raise ValueError(f"Expected {name} to be an integer in {SEED_RANGE[0]}..{SEED_RANGE[1]} "
                         f"(the seeds torch takes), but got {seed!r}{negative}.")
    return int(seed)


def check_path_flags(flags: Iterable[Tuple[str, Optional[str]]]) -> None:
    """A ``ValueError`` for the first ``(flag, value)`` given as an empty string: ``--out ""``
    (an unset shell variable) would otherwise be the working folder, or the flag's default
    folder, whose runs ``--overwrite`` replaces."""
    for flag, value in flags:
        if value is not None and not value.strip():
            raise ValueError(f"Expected {flag} to name a folder, but it is empty (an unset "
                             "variable?); leave it out for its default.")

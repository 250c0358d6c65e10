"""Transforms of the input image and their counterparts on a representation (SPEC section 2).

Each transform ``T`` acts on an image batch ``[N, C, H, W]`` and, scaled to the size of a
representation, on a feature map ``[N, K, h, w]`` (``T_l``). The operator never builds
``T_l(f)``: it reads ``f`` through :meth:`Transform.index_map`, which is ``T_l`` applied to the
grid of positions, so values and indices always move the same way.
"""
from __future__ import annotations

import abc
import operator
import re
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import torch

from ._checks import is_integer
from ._hints import did_you_mean

__all__ = [
    "Transform",
    "repeated_position",
    "Rotation",
    "Flip",
    "Translation",
    "Identity",
    "diagonal_shifts",
    "rotations",
    "flips",
    "parse_transforms",
]

Size = Tuple[int, int]


def _whole(v) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or getattr(v, "dtype", None) == torch.bool:
        # operator.index(True) is 1: a size (True, 32) was read as (1, 32)
        raise TypeError(f"a bool, {v!r}, is no size")
    return operator.index(v)


def check_size(size, name: str = "`input_size`") -> Size:
    """``size`` as ``(H, W)``, two positive ints (whole floats taken); ``ValueError`` naming
    ``name`` otherwise."""
    try:
        h, w = (_whole(v) for v in size)
    except (TypeError, ValueError):
        h = w = 0
    if h < 1 or w < 1:
        raise ValueError(f"Expected {name} to be (H, W), two positive ints, but got {size!r}.")
    return h, w


def _size(x, name: str = "`input_size`") -> Size:
    """The ``(H, W)`` of a tensor's last two dims, or of a size (checked: int() made a 4.5 a 4,
    and a 0 failed deep inside, in a ZeroDivisionError)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[-2]), int(x.shape[-1])
    return check_size(x, name)


def _check_image(x: torch.Tensor, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected `{what}` to be a torch.Tensor, but got {type(x).__name__}.")
    if x.dim() < 2:
        raise ValueError(
            f"Expected `{what}` to have spatial dims last ([N, C, H, W]), but got shape {tuple(x.shape)}."
        )


def repeated_position(index: torch.Tensor):
    """A value that occurs more than once in the int64 ``[P]`` tensor ``index``, else ``None``."""
    ordered = torch.sort(index).values
    same = torch.nonzero(ordered[1:] == ordered[:-1]).reshape(-1)
    return int(ordered[same[0]]) if same.numel() else None


def _whole_field(transform, arg: str) -> None:
    """Check that field ``arg`` is an integer and store it as a Python int: a NumPy or torch
    integer (``np.arange``'s) is taken, and a float or bool refused (a bool tensor too:
    ``operator.index(torch.tensor(True))`` is 1, so ``Translation(torch.tensor(True), 1)`` was
    a shift of 1)."""
    v = getattr(transform, arg)
    if not is_integer(v):
        raise TypeError(f"Expected `{arg}` to be an int, but got {v!r}.")
    object.__setattr__(transform, arg, operator.index(v))  # the report's meta is JSON, the cache key exact


class Transform(abc.ABC):
    """A transform of the input image with a counterpart on every representation.

    Subclasses define :attr:`name` and :meth:`on_map`, which moves the values of a map of size
    ``(h, w)`` that came from an input of size ``input_size``: it returns a map of the same
    shape in which each position lands in one place at most (dropped ones land nowhere) and
    positions left without a source take ``fill`` (:meth:`index_map` refuses anything else).
    ``family`` names the group a report averages the transform in; :meth:`check_input` may
    refuse image sizes. A transform's index maps are cached only when it is a frozen dataclass
    whose fields are all its state, so ``on_map`` must depend on nothing else then.
    """

    family: str = "transform"

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short stable name, e.g. ``translation(2,2)`` or ``rotation(90)``."""

    @abc.abstractmethod
    def on_map(self, f: torch.Tensor, input_size: Size, fill: float = 0.0) -> torch.Tensor:
        """Apply ``T_l`` to a map ``f`` (``[..., h, w]``) that came from an input of ``input_size``."""

    def check_input(self, size: Size) -> None:
        """Raise ``ValueError`` if this transform cannot act on an image of ``size``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the transform to an image batch ``x`` (``[N, C, H, W]``)."""
        _check_image(x)
        self.check_input(_size(x))
        out = self.on_map(x, _size(x), fill=0.0)
        if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
                and out.device == x.device):  # else the model failed on it, naming no transform
            got = (f"a {out.dtype} tensor of shape {tuple(out.shape)} on {out.device}"
                   if isinstance(out, torch.Tensor) else f"a {type(out).__name__}")
            raise ValueError(f"Expected {self.name}.on_map to return images like its input (a "
                             f"{x.dtype} tensor of shape {tuple(x.shape)} on {x.device}), but it "
                             f"returned {got}.")
        return out

    def index_map(self, map_size: Size, input_size: Size, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flat positions compared on a map of ``map_size``.

        Returns ``(a_index, b_index)``, int64 ``[P]``: ``T_l(f)`` at flat position
        ``b_index[p]`` is ``f`` at ``a_index[p]``, so the operator compares
        ``fx[..., a_index[p]]`` with ``ftx[..., b_index[p]]``. What ``on_map`` returns is checked
        here (it must only move, drop or fill positions), so that the maps lie in ``[0, h*w)``.
        """
        h, w = _size(map_size, "`map_size`")
        # the input is checked here too: the maps are public (ops.equivariance_scores takes
        # them), and a shift as large as the input rolled each map back onto itself, scoring 1
        self.check_input(_size(input_size))
        grid = torch.arange(h * w, dtype=torch.int64, device=device).view(1, h, w)
        moved = self.on_map(grid, input_size, fill=-1)
        # A subclass's on_map may be wrong; a map that does not only move positions would make
        # the operator read outside the feature map.
        if not isinstance(moved, torch.Tensor) or moved.device != grid.device:
            got = (f"a tensor on {moved.device}" if isinstance(moved, torch.Tensor)
                   else f"a {type(moved).__name__}")
            raise ValueError(f"Expected {self.name}.on_map to return a tensor where its input "
                             f"lies ({grid.device}), but it returned {got}.")
        lo, hi = (int(v) for v in torch.aminmax(moved)) if moved.numel() else (0, 0)
        if moved.shape != grid.shape or moved.dtype != torch.int64 or lo < -1 or hi >= h * w:
            raise ValueError(
                f"Expected {self.name}.on_map to move the positions of a {h}x{w} map (int64 "
                f"values in [0, {h * w}), `fill` where vacated), but it returned a "
                f"{moved.dtype} tensor of shape {tuple(moved.shape)} with values in [{lo}, {hi}]; "
                "on_map must only move, drop or fill values."
            )
        moved = moved.reshape(-1)
        valid = moved >= 0
        b_index = torch.nonzero(valid).reshape(-1)
        a_index = moved[valid]
        if a_index.numel() == 0:
            raise ValueError(
                f"{self.name} leaves no position to compare on a {h}x{w} map (input {input_size}); "
                "use a smaller shift or mode='circular'."
            )
        copied = repeated_position(a_index)
        if copied is not None:  # a copy, or a vacated position given a value instead of `fill`
            raise ValueError(
                f"Expected {self.name}.on_map to move each position of a {h}x{w} map to one place "
                f"at most, but position {copied} (row {copied // w}, column {copied % w}) lands "
                "in several; on_map must be one-to-one on the positions it keeps and put `fill` "
                "where nothing lands."
            )
        return a_index, b_index

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class Identity(Transform):
    """The identity: every representation is compared with itself (scores 1 where defined)."""

    family: str = field(default="identity", init=False)  # fixed: not an argument

    @property
    def name(self) -> str:
        return "identity"

    def on_map(self, f, input_size, fill=0.0):
        return f


@dataclass(frozen=True, repr=False)
class Rotation(Transform):
    """Rotation by ``quarter_turns`` x 90 degrees, as ``torch.rot90(x, q, dims=(-2, -1))``."""

    quarter_turns: int = 1
    family: str = field(default="rotation", init=False)  # fixed: a stray argument is an error

    def __post_init__(self):
        _whole_field(self, "quarter_turns")
        if self.quarter_turns % 4 == 0:  # it would count as a rotation in the family's mean
            raise ValueError(f"Expected `quarter_turns` not to be a whole turn, but got "
                             f"{self.quarter_turns}; that is the identity: use ef.Identity().")
        # as its name: Rotation(-1) == Rotation(3), one key in a set or the index-map cache
        object.__setattr__(self, "quarter_turns", self.quarter_turns % 4)

    @property
    def name(self) -> str:
        return f"rotation({90 * (self.quarter_turns % 4)})"

    def check_input(self, size):
        h, w = size
        if h != w:
            raise ValueError(
                f"Expected a square image or map for {self.name}, but got {h}x{w}; "
                "crop or resize to a square first."
            )

    def on_map(self, f, input_size, fill=0.0):
        self.check_input(_size(f))
        return torch.rot90(f, self.quarter_turns, dims=(-2, -1))


@dataclass(frozen=True, repr=False)
class Flip(Transform):
    """Mirror: ``"horizontal"`` flips the last dim (columns), ``"vertical"`` the one before."""

    direction: str = "horizontal"
    family: str = field(default="flip", init=False)  # fixed: a stray argument is an error

    def __post_init__(self):
        if self.direction not in ("horizontal", "vertical"):
            raise ValueError(
                f"Expected `direction` to be 'horizontal' or 'vertical', but got {self.direction!r}."
            )

    @property
    def name(self) -> str:
        return f"flip({self.direction})"

    def on_map(self, f, input_size, fill=0.0):
        return torch.flip(f, dims=(-1,) if self.direction == "horizontal" else (-2,))


def scale_shift(shift: int, map_len: int, input_len: int, rounding: str = "down") -> int:
    """The shift on a map of length ``map_len`` for a shift on an input of ``input_len``.

    ``rounding="down"`` rounds ``shift * map_len / input_len`` toward zero (the thesis'
    "rounding down"); ``"nearest"`` rounds half away from zero. Integer arithmetic, so no
    float error decides a boundary case.
    """
    num = abs(shift) * map_len
    if rounding == "down":
        mag = num // input_len
    elif rounding == "nearest":
        mag = (2 * num + input_len) // (2 * input_len)
    else:
        raise ValueError(f"Expected `rounding` to be 'down' or 'nearest', but got {rounding!r}.")
    return mag if shift >= 0 else -mag


@dataclass(frozen=True, repr=False)
class Translation(Transform):
    """Shift content by ``(dy, dx)`` pixels of the input.

    ``mode="circular"`` rolls (``torch.roll``) and compares all positions; ``mode="zero"``
    moves content and fills vacated pixels with 0, and compares only the positions inside the
    overlap of both maps. On a map of height ``h`` from an input of height ``H`` the shift is
    ``dy * h / H`` rounded by ``rounding`` (see :func:`scale_shift`); it may be 0, which makes
    ``T_l`` the identity on that map. The family (what a report averages over) names the options
    that are not the default: ``translation``, ``translation-zero``, ``translation-nearest``,
    ``translation-zero-nearest``, so that shifts measured differently are never averaged together.
    """

    dy: int = 1
    dx: int = 1
    mode: str = "circular"
    rounding: str = "down"
    family: str = field(default="translation", init=False)  # from the options, always

    def __post_init__(self):
        for arg in ("dy", "dx"):
            _whole_field(self, arg)
        if self.mode not in ("circular", "zero"):
            raise ValueError(f"Expected `mode` to be 'circular' or 'zero', but got {self.mode!r}.")
        if self.rounding not in ("down", "nearest"):
            raise ValueError(
                f"Expected `rounding` to be 'down' or 'nearest', but got {self.rounding!r}."
            )
        if self.dy == 0 and self.dx == 0:  # it would count as a shift in the family's mean
            raise ValueError("Expected a shift, but dy and dx are both 0; that is the identity: "
                             "use ef.Identity().")
        object.__setattr__(self, "family", shift_family(self.mode, self.rounding))

    @property
    def name(self) -> str:
        suffix = ("" if self.mode == "circular" else ",zero") + (
            "" if self.rounding == "down" else ",nearest")
        return f"translation({self.dy},{self.dx}{suffix})"

    def check_input(self, size):
        h, w = size
        if abs(self.dy) >= h or abs(self.dx) >= w:
            raise ValueError(
                f"{self.name} is as large as or larger than the {h}x{w} image: expected |dy| < {h} and |dx| < {w}; "
                "use smaller shifts or larger images."
            )

    def map_shift(self, map_size: Size, input_size: Size) -> Size:
        """The scaled ``(dy, dx)`` on a map of ``map_size``."""
        (h, w), (H, W) = _size(map_size, "`map_size`"), _size(input_size)
        return (scale_shift(self.dy, h, H, self.rounding), scale_shift(self.dx, w, W, self.rounding))

    def on_map(self, f, input_size, fill=0.0):
        h, w = _size(f)
        sy, sx = self.map_shift((h, w), input_size)
        if self.mode == "circular":
            return torch.roll(f, shifts=(sy, sx), dims=(-2, -1))
        if abs(sy) >= h or abs(sx) >= w:
            raise ValueError(
                f"{self.name} scales to a shift of ({sy},{sx}) on a {h}x{w} map, which leaves no "
                "overlap to compare; use smaller shifts, rounding='down', or mode='circular'."
            )
        out = torch.full_like(f, fill)
        out[..., max(sy, 0): h + min(sy, 0), max(sx, 0): w + min(sx, 0)] = \
            f[..., max(-sy, 0): h + min(-sy, 0), max(-sx, 0): w + min(-sx, 0)]
        return out


def shift_family(mode: str = "circular", rounding: str = "down") -> str:
    """The family of a :class:`Translation` with these options: ``translation`` for circular
    shifts rounded down (the thesis'), with the other options named: ``translation-zero``,
    ``translation-nearest``, ``translation-zero-nearest``."""
    return "-".join(["translation"] + [o for o in (mode, rounding) if o not in ("circular", "down")])


def diagonal_shifts(start: int = 1, stop: int = 32, mode: str = "circular",
                    rounding: str = "down") -> List[Translation]:
    """The thesis' translation family: ``Translation(s, s)`` for ``s`` in ``start..stop``."""
    if not (is_integer(start) and is_integer(stop)):  # range() or `<` failed on them
        raise TypeError(f"Expected `start` and `stop` to be integers (shifts in pixels), but got "
                        f"start={start!r}, stop={stop!r}.")
    start, stop = int(start), int(stop)
    if start < 1 or stop < start:
        raise ValueError(f"Expected 1 <= start <= stop, but got start={start}, stop={stop}.")
    return [Translation(s, s, mode=mode, rounding=rounding) for s in range(start, stop + 1)]


def rotations() -> List[Rotation]:
    """The thesis' rotation family: quarter turns 1, 2 and 3 (90, 180, 270 degrees)."""
    return [Rotation(q) for q in (1, 2, 3)]


def flips() -> List[Flip]:
    """Both mirrors: horizontal and vertical."""
    return [Flip("horizontal"), Flip("vertical")]


def check_labels(transforms: Sequence[Transform]) -> None:
    """Raise ``ValueError`` unless each transform's ``name`` and ``family`` are non-empty
    strings: a report keys its scores by them (a ``family`` of ``None`` left a report with no
    part rows)."""
    for t in transforms:
        for attr in ("name", "family"):
            value = getattr(t, attr)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Expected the `{attr}` of the transform {type(t).__name__} to be "
                                 f"a non-empty string (reports key its scores by it), but got "
                                 f"{value!r}.")


def check_distinct(transforms: Sequence[Transform]) -> None:
    """Raise ``ValueError`` if a transform repeats (its scores would count twice)."""
    names = [t.name for t in transforms]
    repeats = sorted({n for n in names if names.count(n) > 1})
    if repeats:
        raise ValueError(f"Expected distinct transforms, but {', '.join(repeats)} "
                         f"{'is' if len(repeats) == 1 else 'are'} given more than once.")


_KINDS = ("translation", "rotation", "flip", "identity")  # what parse_transforms takes


def _shift_range(rng: str) -> Tuple[int, int]:
    """``(start, stop)`` of a translation spec's ``START-STOP`` or ``SHIFT`` (``1-32``, ``4``)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", rng)
    if m is None:
        form = ("the shifts of a translation spec are a range START-STOP or one SHIFT of whole "
                f"numbers from 1 (e.g. 1-32 or 4), but got {rng!r}")
        negative = re.search(r"(?:^|-)-(\d+)", rng)
        if negative:  # e.g. translation:-3 or translation:1--3
            s = negative.group(1)
            form += (f"; a spec shifts content down and right only, by (s, s) for s >= 1: for a "
                     f"negative shift use the Python API, ef.Translation(-{s}, -{s})")
        raise ValueError(form)
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _translation_named(args: str) -> Translation:
    """The translation whose name is ``translation(args)``: ``dy,dx[,zero][,nearest]``."""
    fields = [a.strip().lower() for a in args.split(",")]
    options = fields[2:]
    if len(fields) < 2 or not all(re.fullmatch(r"-?\d+", f) for f in fields[:2]) or not (
            set(options) <= {"zero", "nearest"} and len(set(options)) == len(options)):
        raise ValueError(f"the name of a translation is translation(dy,dx), then zero and/or "
                         f"nearest where not circular or rounded down, but got "
                         f"'translation({args})'")
    dy, dx = fields[:2]
    return Translation(int(dy), int(dx), mode="zero" if "zero" in options else "circular",
                       rounding="nearest" if "nearest" in options else "down")


def parse_transforms(specs: Sequence[str] | str) -> List[Transform]:
    """Parse command-line transform specs into transforms.

    Accepted: ``translation:1-32`` (diagonal shifts 1..32), ``translation:4`` (shift 4),
    ``translation:1-16:zero``, ``translation:1-16:nearest`` (scaled shifts rounded to nearest),
    ``rotation`` (90/180/270), ``rotation:90``, ``flip``,
    ``flip:horizontal``, ``identity``; and the transforms' own names, as a report's
    ``meta["transforms"]`` lists them (``translation(2,5)``, ``translation(3,3,zero)``,
    ``rotation(90)``, ``flip(vertical)``). Several specs may be joined with commas.

    >>> [t.name for t in parse_transforms("translation:1-2,rotation:180")]
    ['translation(1,1)', 'translation(2,2)', 'rotation(180)']
    >>> parse_transforms("translation(2,5,zero),flip(vertical)") == [
    ...     Translation(2, 5, mode="zero"), Flip("vertical")]
    True
    """
    if isinstance(specs, str):
        specs = [specs]
    if not isinstance(specs, (list, tuple)) or not all(isinstance(c, str) for c in specs):
        raise TypeError(f"Expected transform specs as a string or a list of strings, like "
                        f"'translation:1-32,rotation', but got {specs!r}.")
    out: List[Transform] = []
    # the commas inside a name's parentheses are its own: "translation(1,1),rotation"
    for spec in (s.strip() for chunk in specs for s in re.split(r",(?![^()]*\))", chunk)):
        if not spec:
            continue
        kind, _, rest = spec.partition(":")
        kind = kind.lower()
        try:
            # rotation(90): rotation:90; a space before the "(" was an unknown kind 'rotation (90)'
            named = re.fullmatch(r"(\w+)\s*\(([^()]+)\)", spec)
            if named:
                kind, rest = named[1].lower(), named[2]
            if named and kind == "translation":
                out.append(_translation_named(rest))
            elif kind in ("translation", "shift", "shifts"):
                rng, _, options = rest.partition(":")
                kw, given = {"mode": "circular", "rounding": "down"}, {}
                # spaces around an option, as around the shifts ("translation:1-3 : zero" was
                # an unknown option ' zero')
                for opt in filter(None, (o.strip() for o in options.lower().split(":"))):
                    if opt not in ("circular", "zero", "down", "nearest"):
                        raise ValueError(f"unknown option {opt!r}: a mode (circular, zero) "
                                         "or a rounding (down, nearest)")
                    key = "mode" if opt in ("circular", "zero") else "rounding"
                    if key in given:  # e.g. translation:1-3:zero:circular
                        raise ValueError(f"two {key} options, {given[key]!r} and {opt!r}")
                    kw[key] = given[key] = opt  # an unknown option fails in Translation
                out += diagonal_shifts(*_shift_range(rng or "1-32"), **kw)
            elif kind in ("rotation", "rotations"):
                if rest:
                    if not re.fullmatch(r"\s*-?\d+\s*", rest):
                        raise ValueError(f"the angle of a rotation is whole degrees, a multiple of "
                                         f"90 (rotation:90, rotation:180, rotation:270), or none "
                                         f"for all three, but got {rest!r}")
                    deg = int(rest)
                    if deg % 90:
                        raise ValueError("rotation angles must be multiples of 90")
                    if deg % 360 == 0:  # Rotation's own advice, ef.Identity(), is Python
                        raise ValueError(f"a rotation by {deg} degrees is a whole turn, the "
                                         "identity: use the spec 'identity'")
                    out.append(Rotation(deg // 90))
                else:
                    out += rotations()
            elif kind in ("flip", "flips"):  # any case, as the kinds
                out += [Flip(rest.strip().lower())] if rest else flips()
            elif kind == "identity":
                if rest:
                    raise ValueError("identity takes no options")
                out.append(Identity())
            else:
                raise ValueError(f"unknown kind {kind!r}{did_you_mean(kind, _KINDS)}")
        except ValueError as err:
            raise ValueError(
                f"Expected a transform spec like 'translation:1-32', 'translation:4', "
                f"'translation:1-16:zero:nearest', 'rotation', 'rotation:90', 'flip:horizontal' "
                f"or 'identity', or a transform's name like 'translation(2,5)', but got {spec!r} "
                f"({str(err).rstrip('.')})."
            ) from None
    if not out:
        raise ValueError(f"Expected at least one transform spec, but got {specs!r}.")
    return out

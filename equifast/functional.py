"""The measure of SPEC section 1 as one function, on whichever backend is present.

:func:`equivariance_scores` checks its inputs, then runs the fused operator
(``torch.ops.equifast.equivariance_scores``) when the compiled extension is present and the
plain PyTorch reference (:mod:`equifast.reference`) otherwise; :func:`backend` says which.
The streaming side (:mod:`equifast.aggregate`) calls this same function on every batch.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import weakref
from typing import Dict, Optional, Sequence, Tuple

import torch

from . import ops, reference
from .aggregate import flat_in_memory_order
from .reference import TOLERANCE, Scores, is_vector
from .transforms import Identity, Transform, repeated_position
from .warning import warn

__all__ = ["equivariance_scores", "check_finite", "check_all_finite", "finite_marker",
           "raise_unless_finite", "backend", "Scores", "TOLERANCE"]

_BACKENDS = ("auto", "operator", "reference")


def backend() -> str:
    """``"operator"`` when the compiled fused operator is loaded, else ``"reference"``."""
    return "operator" if ops.available() else "reference"


@functools.lru_cache(maxsize=1)
def _warn_fallback() -> None:
    why = ops.load_error() or "not built"
    # a build against another torch (pip's build isolation, or torch upgraded since) loads
    # with an undefined C++ symbol: say so, it reads as a bare "rebuild" otherwise
    hint = (" It was built against another torch than this one" if "undefined symbol" in why
            else "")
    warn(
        f"equifast: the compiled operator (equifast._C) is not available ({why}), so scores "
        f"are computed by the slower PyTorch reference.{hint} Rebuild it against the installed "
        "torch with `pip install --no-build-isolation -e .`.")


def _cache_key(transform: Transform):
    """What identifies a transform's index maps: its class and field values, when it is a frozen
    dataclass whose compared fields are all its state (as the built-in transforms are), else
    ``None`` (not cached). A transform that can change would keep its old maps; and one with
    more state than its compared fields (a subclass that sets attributes of its own, a field
    with ``compare=False``) would share the maps of another that differs only there."""
    if not (dataclasses.is_dataclass(transform) and transform.__dataclass_params__.frozen):
        return None
    fields = dataclasses.fields(transform)
    state = getattr(transform, "__dict__", {})
    if not all(f.compare for f in fields) or not set(state) <= {f.name for f in fields}:
        return None
    key = (type(transform), tuple(getattr(transform, f.name) for f in fields))
    try:
        hash(key)
    except TypeError:  # a frozen dataclass of a list, say
        return None
    return key


def _index_map(transform: Transform, map_size: Tuple[int, int], input_size: Tuple[int, int],
                device: torch.device):
    """The transform's index maps, checked; cached where :func:`_cache_key` identifies them."""
    key = _cache_key(transform)
    device = _device_key(device)
    build = functools.partial(_checked_index_map, transform, map_size, input_size, device)
    return build() if key is None else _map_cache.get((key, map_size, input_size, device), build)


def _device_key(device) -> torch.device:
    """``device`` as its tensors name it: ``cuda`` is the current ``cuda:i``, ``cpu:0`` is
    ``cpu``. Otherwise a map cached for ``Measurer``'s device (``cuda``) was built and kept again
    for its features' (``cuda:0``): twice the maps, on the GPU."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cpu" and device.index is not None:
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _checked_index_map(transform: Transform, map_size: Tuple[int, int],
                       input_size: Tuple[int, int], device: torch.device):
    a, b = transform.index_map(map_size, input_size, device=device)
    if type(transform).index_map is Transform.index_map:
        return a, b  # the base method checked what on_map returned
    hw = map_size[0] * map_size[1]  # a subclass overrides index_map itself: checked here
    ok = all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 1
             for t in (a, b)) and a.shape == b.shape and a.numel() > 0
    if ok:
        lo_a, hi_a, lo_b, hi_b = torch.stack([a.min(), a.max(), b.min(), b.max()]).tolist()
        ok = min(lo_a, lo_b) >= 0 and max(hi_a, hi_b) < hw
    if not ok:
        raise ValueError(f"Expected {transform.name}.index_map{(map_size, input_size)} to return "
                         f"two int64 [P] tensors of flat positions in [0, {hw}), but it did not.")
    for which, t in (("read", a), ("written", b)):
        p = repeated_position(t)
        if p is not None:
            raise ValueError(f"Expected {transform.name}.index_map{(map_size, input_size)} to pair "
                             f"each position once at most, but position {p} is {which} twice or "
                             "more.")
    return a, b


# Index maps are cached (building one syncs with the device) and checked here once, so the
# operator is called with check_indices=False: no host sync per call on CUDA. The cache is
# bounded by bytes as well as entries: a map holds 16 bytes a compared position (4 MiB for the
# 512x512 maps of a 1024-pixel input's stride-2 stem), so 4096 entries could pin 16 GiB, of
# device memory on a GPU, for the life of the process (a sweep's worker measures model after
# model). One run's maps (every transform at every map size) are well inside the bound: 190 MiB
# for the 35 default transforms at 1024 pixels (EfficientNet's 512x512 stem), 9 MiB at 224;
# larger runs keep theirs as long as their Measurer lives. Both bounds may be changed.
INDEX_MAP_CACHE_BYTES = 512 * 2**20
INDEX_MAP_CACHE_ENTRIES = 4096


class _MapCache:
    """Least recently used index maps, at most ``INDEX_MAP_CACHE_ENTRIES`` of them holding at
    most ``INDEX_MAP_CACHE_BYTES`` together; a map larger than that alone is not kept. A map
    still held elsewhere (a :class:`~equifast.measurement.Measurer` holds those of its run) is
    found again rather than built again, so a run larger than the bound does not rebuild its
    maps every batch."""

    def __init__(self):
        self._maps: "collections.OrderedDict" = collections.OrderedDict()  # key -> (maps, bytes)
        self._alive = weakref.WeakValueDictionary()  # (key, 0 or 1) -> a map anyone still holds
        self.bytes = 0
        self._lock = threading.Lock()  # threads may measure at once

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, key, build):
        with self._lock:
            hit = self._maps.get(key)
            if hit is not None:
                self._maps.move_to_end(key)
                return hit[0]
            maps = (self._alive.get((key, 0)), self._alive.get((key, 1)))
        if maps[0] is None or maps[1] is None:
            maps = build()  # outside the lock: it may take a while, and raises for a bad transform
            with self._lock:
                self._alive[(key, 0)], self._alive[(key, 1)] = maps
        size = sum(t.numel() * t.element_size() for t in maps)
        with self._lock:
            if key not in self._maps and size <= INDEX_MAP_CACHE_BYTES:
                self._maps[key] = (maps, size)
                self.bytes += size
            while self._maps and (self.bytes > INDEX_MAP_CACHE_BYTES
                                  or len(self._maps) > INDEX_MAP_CACHE_ENTRIES):
                self.bytes -= self._maps.popitem(last=False)[1][1]
        return maps

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()
            self._alive.clear()
            self.bytes = 0


_map_cache = _MapCache()


def _check(fx, ftx, metric, vector_mode, eps, backend_name):
    reference.check_pair(fx, ftx)  # floating, one shape, no empty dim, one device
    if fx.is_meta:  # failed in the finiteness check or the index maps, with no word of why
        raise ValueError("Expected `fx` and `ftx` to hold data (CPU or CUDA tensors), but got meta "
                         "tensors, which have shapes only; equifast.ops.equivariance_scores takes "
                         "them (its fake gives the shapes of the scores).")
    reference.check_options(metric, vector_mode, eps)
    if backend_name not in _BACKENDS:
        raise ValueError(f"Expected `backend` to be one of {_BACKENDS}, but got {backend_name!r}.")


def check_finite(t: torch.Tensor, name: str = "fx") -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or infinity."""
    check_all_finite({name: t})


def finite_marker(t: torch.Tensor) -> torch.Tensor:
    """A float64 scalar where ``t`` lives, finite exactly when every value of ``t`` is. No host
    transfer, so that a caller can fetch many at once."""
    t = t.detach()
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=t.device)
    # The least and largest values: NaN reaches both, -inf the least, +inf the largest. Read
    # once, in memory order, with no temporary: a float64 sum would first copy t to float64 on
    # the CPU (15-30x slower). Halved, so that their sum cannot overflow.
    least, largest = torch.aminmax(flat_in_memory_order(t))
    return least.double() * 0.5 + largest.double() * 0.5


def raise_unless_finite(names: Sequence[str], markers: Sequence[torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the first tensor whose :func:`finite_marker` (``markers``, in
    the order of ``names``) is not finite: one host transfer for all."""
    device = markers[0].device
    stacked = torch.stack([m.to(device, non_blocking=True) for m in markers])
    for name, finite in zip(names, torch.isfinite(stacked).tolist()):
        if not finite:
            raise ValueError(
                f"Expected `{name}` to be finite, but it holds NaN or infinity; check the model "
                "and its input (a diverged checkpoint, or unnormalised images under float16)."
            )


def check_all_finite(tensors: Dict[str, torch.Tensor]) -> None:
    """:func:`check_finite` for several tensors (by name), with one host transfer."""
    if tensors:
        raise_unless_finite(list(tensors), [finite_marker(t) for t in tensors.values()])


def equivariance_scores(fx: torch.Tensor, ftx: torch.Tensor, transform: Optional[Transform] = None,
                        metric: str = "correlation", input_size=None, vector_mode: str = "per_image",
                        eps: float = TOLERANCE, backend: str = "auto", check: bool = True,
                        tensor_cores: bool = True) -> Scores:
    """Channel and layer equivariance scores of one representation under one transform.

    Args:
        fx: ``f_l(x)``, ``[N, K, H_l, W_l]`` or ``[N, K]``: float32/float16/bfloat16 for the
            operator; float64 maps are scored in float64 by the reference (``"auto"``). The
            scores carry no gradient: the inputs are detached in every backend.
        ftx: ``f_l(T(x))``, the same shape.
        transform: ``T``. Its counterpart ``T_l`` is applied to ``fx`` here (read through an
            index map, never copied). ``None`` is the identity.
        metric: ``"correlation"`` (Pearson, default) or ``"cosine"``.
        input_size: ``(H, W)`` of the image ``T`` acted on, to scale shifts; defaults to the
            map's own size.
        vector_mode: for vectors (``[N, K]`` or 1x1 maps): ``"per_image"`` (one score per image
            over the ``K`` entries: invariance) or ``"across_images"`` (per channel, across the
            images of this batch; use :func:`equifast.measure` to stream a whole set).
        eps: the tolerance below which a vector is undefined (see :mod:`equifast.reference`).
        backend: ``"auto"`` (the operator if compiled, else the reference), ``"operator"`` or
            ``"reference"``.
        check: check that ``fx`` and ``ftx`` are finite (callers that checked them already,
            like :func:`equifast.measure`, pass ``False``).
        tensor_cores: let the operator multiply on CUDA tensor cores (TF32 / float16 /
            bfloat16, within about 1e-3 of the reference; see :func:`equifast.ops.equivariance_scores`);
            ``False`` keeps float32 arithmetic (1e-5). The CPU and the reference ignore it.

    Returns:
        :class:`Scores` ``(channel, layer, layer_index)``, each ``[N, K]``: float32 scores in
        [0, 1], NaN where undefined; ``layer_index`` is the ``k'`` that gave the layer score
        (-1 where undefined).

    Example:
        >>> import torch, equifast as ef
        >>> x = torch.randn(2, 8, 16, 16)
        >>> t = ef.Rotation(quarter_turns=1)
        >>> s = ef.functional.equivariance_scores(x, t(x), t)   # a map rotated exactly
        >>> bool((s.channel > 0.999).all())
        True
    """
    _check(fx, ftx, metric, vector_mode, eps, backend)
    # bool() of anything was taken before: check=None skipped the finiteness check, and
    # tensor_cores="False" multiplied on tensor cores
    check, tensor_cores = ops._flag("check", check), ops._flag("tensor_cores", tensor_cores)
    reference.check_transform(transform)
    if input_size is not None:
        input_size = reference.check_input_size(input_size)
    # compare in the wider type: float16 would overflow float32 values
    common = torch.promote_types(fx.dtype, ftx.dtype)
    wide = common == torch.float64 and not is_vector(fx)
    if wide and backend == "operator":
        # a cast to the kernels' float32 overflowed, underflowed or rounded float64 maps
        raise TypeError("Expected float32, float16 or bfloat16 maps for backend='operator', but "
                        f"got {fx.dtype} and {ftx.dtype}; cast them (fx.float()) or use "
                        "backend='auto' or 'reference', which score float64 maps in float64.")
    # measurements, not a loss: no gradient in any backend (the operator has no derivative)
    fx, ftx = fx.detach().to(common), ftx.detach().to(common)
    if check:
        check_all_finite({"fx": fx, "ftx": ftx})
    if is_vector(fx):
        if transform is not None and input_size is not None:
            transform.check_input(input_size)
        if metric == "correlation" and vector_mode == "per_image" and fx[0].numel() == 1:
            # as one compared position of a map: a centred single value is zero
            warn("A vector of one entry ([N, 1]: a single logit or channel) has no correlation "
                 "within an image: its per-image scores are undefined (NaN); use "
                 "vector_mode='across_images' (the correlation across images) or metric='cosine'.")
        return reference.vector_scores(fx.flatten(1), ftx.flatten(1), metric, vector_mode, eps)
    transform = transform if transform is not None else Identity()
    map_size = (int(fx.shape[-2]), int(fx.shape[-1]))
    size = input_size or map_size
    transform.check_input(size)  # a shift as large as the image would wrap around silently
    a_index, b_index = _index_map(transform, map_size, size, fx.device)
    if metric == "correlation" and a_index.numel() == 1:
        # SPEC: no compared position is an error; one leaves every centred vector zero
        warn(f"{transform.name} leaves one position to compare on a {map_size[0]}x"
             f"{map_size[1]} map (input {size[0]}x{size[1]}): its correlation scores are "
             "undefined (NaN); use cosine, smaller shifts or mode='circular'.")
    if backend == "reference" or (backend == "auto" and (wide or not ops.available())):
        if backend == "auto" and not wide:
            _warn_fallback()
        return reference.equivariance_scores(fx, ftx, transform, metric, size, vector_mode, eps)
    if not ops.available():
        raise RuntimeError("backend='operator' was asked for, but equifast._C is not built; "
                           "run `pip install --no-build-isolation -e .`.")
    channel, layer, index = ops.equivariance_scores(fx, ftx, a_index, b_index,
                                                    metric == "correlation", float(eps),
                                                    tensor_cores, check_indices=False)
    return Scores(channel, layer, index)

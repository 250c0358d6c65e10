"""The compiled operator ``equifast::equivariance_scores``: typed wrapper and fake.

The operator is defined in ``csrc/`` (schema in ``csrc/equifast.cpp``, kernels in
``csrc/cpu`` and ``csrc/cuda``) and registered with PyTorch's dispatcher when
``equifast._C`` is imported. This module is its Python surface:

- :func:`load` / :func:`available`: import the extension, without failing when it was not
  built (then :mod:`equifast.reference` is the fallback, see :mod:`equifast.functional`);
- :func:`equivariance_scores`: the typed wrapper;
- the fake (meta) implementation right under it, whose ``torch._check`` calls mirror the
  C++ ``TORCH_CHECK`` calls of ``csrc/scores.h`` one for one, with the same messages, so the
  operator works under ``torch.compile`` and ``torch.export``;
- its autograd rule: scores are measurements and carry no gradient (outputs never require
  grad), so features that require grad are scored alike in eager mode and compiled.

The operator is also callable as ``torch.ops.equifast.equivariance_scores`` (for instance
from a ``torch.jit.script`` function) once :func:`load` returned ``True``.

On CUDA tensors, ``EQUIFAST_CUDA_KERNEL=triton`` makes :func:`equivariance_scores` run the
opt-in Triton kernels of :mod:`equifast.ops_triton` instead of ``csrc/cuda``
(:func:`cuda_kernel`); the CPU, and ``torch.ops`` calls, are unchanged.

Example:
    >>> import torch, equifast as ef
    >>> from equifast import ops
    >>> fx, ftx = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    >>> a, b = ef.Rotation(1).index_map((4, 4), (32, 32))
    >>> if ops.available():
    ...     channel, layer, index = ops.equivariance_scores(fx, ftx, a, b, True, 1e-5)
    ...     channel.shape
    torch.Size([2, 8])
"""
from __future__ import annotations

import contextlib
import numbers
import os
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ._checks import is_integer

__all__ = ["load", "available", "load_error", "cuda_kernel", "equivariance_scores"]

_OP_NAME = "equifast::equivariance_scores"
_loaded: Optional[bool] = None
_error: Optional[str] = None


def load() -> bool:
    """Import ``equifast._C`` (registering the operator) once; ``True`` if that worked.

    Never raises: when the extension is missing or fails to load, the reason is kept in
    :func:`load_error` and ``False`` is returned.
    """
    global _loaded, _error
    if _loaded is None:
        try:
            from . import _C  # noqa: F401  (registers torch.ops.equifast.*)
        except (ImportError, OSError) as err:
            _loaded, _error = False, f"{type(err).__name__}: {err}"
        else:
            _loaded = True
            _register_fake()
            _register_autograd()
    return _loaded


def available() -> bool:
    """``True`` when the compiled operator is registered and can be called."""
    return load()


def cuda_kernel() -> str:
    """Which kernels run the operator on CUDA tensors: ``"cuda"`` (``csrc/cuda``, the default)
    or ``"triton"`` (:mod:`equifast.ops_triton`), from ``EQUIFAST_CUDA_KERNEL``."""
    name = os.environ.get("EQUIFAST_CUDA_KERNEL", "cuda") or "cuda"
    if name not in ("cuda", "triton"):
        raise ValueError(f"Expected EQUIFAST_CUDA_KERNEL to be 'cuda' or 'triton', but got {name!r}.")
    return name


def load_error() -> Optional[str]:
    """Why :func:`load` failed (``None`` if it did not, or was not tried yet)."""
    return _error


def equivariance_scores(fx: Tensor, ftx: Tensor, a_index: Tensor, b_index: Tensor,
                        centered: bool, eps: float, tensor_cores: bool = True,
                        check_indices: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Channel and layer scores of one representation, in one fused pass (SPEC section 1).

    Pair ``p`` compares ``fx[n, k, a_index[p]]`` with ``ftx[n, k', b_index[p]]`` (flat
    positions ``i * W + j``); ``Transform.index_map(map_size, input_size)`` gives the indices,
    so no transformed copy of ``fx`` is made and the ``K x K`` similarity matrix is only ever
    held in tiles. Per-row statistics are float64, the dot products float32-accumulated.

    Args:
        fx: ``f_l(x)``, ``[N, K, H, W]`` float32, float16 or bfloat16, any strides.
        ftx: ``f_l(T(x))``, same shape, dtype and device.
        a_index: int64 ``[P]``, flat positions in ``[0, H*W)`` read from ``fx``.
        b_index: int64 ``[P]``, flat positions in ``[0, H*W)`` read from ``ftx``.
        centered: ``True`` for Pearson correlation, ``False`` for cosine.
        eps: a row ``u`` is undefined when ``||u - mean|| <= eps * ||u||``
            (``equifast.reference.TOLERANCE`` by default elsewhere).
        tensor_cores: on CUDA (sm_80 and newer), multiply on tensor cores: TF32 for float32
            inputs, native float16/bfloat16, float32 accumulation; scores then lie within
            about 1e-3 (TF32, float16) or 1e-2 (bfloat16) of the float64 reference.
            ``False`` multiplies in float32 (within 1e-5), as the CPU always does.
        check_indices: check that the indices lie in ``[0, H*W)``. On CUDA that costs a host
            sync per call, so ``False`` skips it there, for maps that were checked when they
            were built (``Transform.index_map`` checks its own); the CPU always checks.

    On CUDA, ``EQUIFAST_CUDA_KERNEL=triton`` runs :mod:`equifast.ops_triton` (opt-in, same
    results within the tolerances above) instead of the compiled CUDA kernels.

    Returns:
        ``(channel, layer, layer_index)``, each ``[N, K]`` on ``fx``'s device: float32
        scores in ``[0, 1]`` (NaN where undefined) and the int64 arg-max ``k'`` of the
        similarity before the ReLU (so a row of negative similarities, layer score 0, still
        names its closest channel; ties: smallest ``k'``; -1 where the layer score is NaN).

    Raises:
        RuntimeError: if the extension is not built (see :func:`load_error`), or on bad
            inputs (the messages say what was expected and what was received).

    Example:
        >>> import torch, equifast as ef
        >>> from equifast import ops
        >>> f = torch.randn(1, 3, 4, 4)
        >>> a, b = ef.Flip("horizontal").index_map((4, 4), (4, 4))
        >>> if ops.available():
        ...     c, l, i = ops.equivariance_scores(f, torch.flip(f, dims=(-1,)), a, b, True, 1e-5)
        ...     bool(torch.allclose(c, torch.ones(1, 3)))
        True
    """
    if not load():
        raise RuntimeError(
            f"The compiled operator {_OP_NAME} is not available ({_error}); build it with "
            "`pip install --no-build-isolation -e .` or use equifast.reference."
        )
    centered, tensor_cores, check_indices = (
        _flag(name, value) for name, value in (("centered", centered),
                                               ("tensor_cores", tensor_cores),
                                               ("check_indices", check_indices)))
    # float(None) failed with no word of `eps`, and so did float() of a tensor that holds no
    # one real value (several, a complex one, a meta tensor's none)
    if (isinstance(eps, bool) or not isinstance(eps, (numbers.Real, Tensor))
            or isinstance(eps, Tensor) and (eps.numel() != 1 or eps.is_complex() or eps.is_meta)):
        raise TypeError(f"Expected `eps` to be a finite number >= 0, but got {eps!r}.")
    eps = float(eps)
    # not a tensor: the schema's own error ("Expected a value of type 'Tensor' for argument
    # 'fx'"), not an AttributeError here
    if isinstance(fx, Tensor) and fx.device.type == "cuda" and cuda_kernel() == "triton":
        return _triton_scores(fx, ftx, a_index, b_index, centered, eps, tensor_cores,
                              check_indices)
    return torch.ops.equifast.equivariance_scores.default(fx, ftx, a_index, b_index, centered,
                                                          eps, tensor_cores, check_indices)


def _flag(name: str, value) -> bool:
    """``value`` as a bool: a bool, a NumPy bool or an integer 0 or 1, else a ``TypeError``.
    ``bool()`` of anything was taken before: ``centered="cosine"`` scored the correlation."""
    if isinstance(value, (bool, np.bool_)) or (is_integer(value) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"Expected `{name}` to be a bool, but got {value!r}.")


def _triton_scores(fx, ftx, a_index, b_index, centered, eps, tensor_cores, check_indices):
    """The operator by :mod:`equifast.ops_triton`, with the compiled operator's input checks."""
    _check_inputs(fx, ftx, a_index, b_index, eps)
    if check_indices:
        _check_index_range(a_index, b_index, fx.shape[-2] * fx.shape[-1])
    try:
        from . import ops_triton
    except ImportError as err:
        raise RuntimeError(f"EQUIFAST_CUDA_KERNEL=triton: {err}; install Triton 3.3 or newer "
                           "(`pip install -U triton`) or unset the variable.") from None
    # Triton launches on the current device (the CPU: its interpreter, tests/triton_on_cpu.py)
    on = torch.cuda.device(fx.device) if fx.device.type == "cuda" else contextlib.nullcontext()
    with on:
        return ops_triton.equivariance_scores(fx, ftx, a_index, b_index, bool(centered),
                                              float(eps), bool(tensor_cores))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype)


def _check_inputs(fx, ftx, a_index, b_index, eps) -> None:
    """The checks of csrc/scores.h's check_inputs, for the fake and the Triton kernels."""
    # One torch._check per TORCH_CHECK in csrc/scores.h (check_inputs), same order and
    # messages. The value range of the indices is data dependent: _check_index_range.
    torch._check(fx.dim() == 4, lambda: (
        f"Expected `fx` to be 4-D [N, K, H, W], but got shape {list(fx.shape)}; "
        "score vectors [N, K] with equifast.functional.equivariance_scores (as [N, K, 1, 1] "
        "maps each channel would have one position, and no correlation)."))
    torch._check(fx.shape == ftx.shape, lambda: (
        f"Expected `fx` and `ftx` to have the same shape, but got {list(fx.shape)} and "
        f"{list(ftx.shape)}."))
    torch._check(fx.dtype in (torch.float32, torch.float16, torch.bfloat16), lambda: (
        f"Expected `fx` to be float32, float16 or bfloat16, but got {_dtype_name(fx.dtype)}."))
    torch._check(ftx.dtype == fx.dtype, lambda: (
        f"Expected `fx` and `ftx` to have the same dtype, but got {_dtype_name(fx.dtype)} "
        f"and {_dtype_name(ftx.dtype)}."))
    torch._check(a_index.dim() == 1 and b_index.dim() == 1, lambda: (
        f"Expected `a_index` and `b_index` to be 1-D [P], but got shapes "
        f"{list(a_index.shape)} and {list(b_index.shape)}."))
    torch._check(a_index.dtype == torch.int64 and b_index.dtype == torch.int64, lambda: (
        f"Expected `a_index` and `b_index` to be torch.int64, but got "
        f"{_dtype_name(a_index.dtype)} and {_dtype_name(b_index.dtype)}; build them with "
        "Transform.index_map."))
    torch._check(a_index.shape[0] == b_index.shape[0], lambda: (
        f"Expected `a_index` and `b_index` to have the same length P, but got "
        f"{a_index.shape[0]} and {b_index.shape[0]}."))
    torch._check(a_index.shape[0] > 0, lambda: (
        "Expected at least one compared position (P >= 1), but got P = 0."))
    torch._check(ftx.device == fx.device and a_index.device == fx.device
                 and b_index.device == fx.device, lambda: (
        f"Expected all inputs on the same device, but got fx on {fx.device}, ftx on "
        f"{ftx.device}, a_index on {a_index.device} and b_index on {b_index.device}."))
    torch._check(eps == eps and abs(eps) != float("inf") and eps >= 0, lambda: (
        f"Expected `eps` to be a finite number >= 0, but got {eps}."))


def _check_index_range(a_index: Tensor, b_index: Tensor, positions: int) -> None:
    """csrc/scores.h's range check of the indices: both maps' bounds in one host transfer."""
    bounds = torch.stack([*torch.aminmax(a_index), *torch.aminmax(b_index)]).tolist()
    for side, name in enumerate(("a_index", "b_index")):
        low, high = bounds[2 * side], bounds[2 * side + 1]
        if low < 0 or high >= positions:
            raise RuntimeError(
                f"Expected `{name}` values to be flat positions in [0, H*W) = [0, {positions}), "
                f"but got values in [{low}, {high}]; build the indices with "
                "Transform.index_map(map_size, input_size).")


def _register_fake() -> None:
    """Register the fake (meta) implementation; called once, after ``_C`` loaded."""

    @torch.library.register_fake(_OP_NAME)
    def _equivariance_scores_fake(fx, ftx, a_index, b_index, centered, eps, tensor_cores=True,
                                   check_indices=True):
        _check_inputs(fx, ftx, a_index, b_index, eps)
        n, k = fx.shape[0], fx.shape[1]
        channel = fx.new_empty((n, k), dtype=torch.float32)
        layer = fx.new_empty((n, k), dtype=torch.float32)
        layer_index = fx.new_empty((n, k), dtype=torch.int64)
        return channel, layer, layer_index


def _register_autograd() -> None:
    """Mark the outputs non-differentiable; called once, after ``_C`` loaded.

    Without a rule, outputs of inputs that require grad claimed to require grad and failed
    in ``backward``, and ``torch.compile`` (AOT autograd) refused the graph outright."""

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output)

    def backward(ctx, *grads):
        return (None,) * 8  # one per schema argument

    torch.library.register_autograd(_OP_NAME, backward, setup_context=setup_context)

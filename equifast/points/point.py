"""A representation point (:class:`Point`), the parts and the layouts it may have, and the
hints the errors of the split give."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

PARTS = ("early", "middle", "late", "pool", "final")
METHODS = ("auto", "fx", "hooks")
LAYOUTS = ("NCHW", "NHWC", "NLC", "NCL", "NC")
_RESERVED = ("pool", "final")

_LIST_HINT = (
    "List candidate names with `[n for n, _ in model.named_modules()]` or "
    "`torchvision.models.feature_extraction.get_graph_node_names(model)`."
)
_REPEATED_HINT = (
    "Name one of its calls by its fx node name instead, with method='fx' or 'auto' (`relu` for "
    "the first call of module `relu`, `relu_1` for the second; list them with "
    "`torchvision.models.feature_extraction.get_graph_node_names(model)`)."
)
_HINT = (
    "Name the points yourself: `equifast.split(model, x, points=[...])` with module names "
    "(`[n for n, _ in model.named_modules()]`) or fx node names (list them with "
    "`torchvision.models.feature_extraction.get_graph_node_names(model)`)."
)


@dataclass(frozen=True)
class Point:
    """One representation of a model.

    Attributes:
        name: the point's name: ``"stem"``, a module name (``"layer1.0"``), ``"pool"``, ``"final"``.
        part: ``"early"``, ``"middle"``, ``"late"``, ``"pool"`` or ``"final"``.
        index: position in execution order (0-based).
        module: qualified name of the module whose output (or input, see ``take``) is the
            point; ``""`` is the model itself; ``None`` for an fx node that is no module's output.
        take: ``"output"`` or ``"input"`` (``pool`` is the input of the classifier).
        node: the fx node name (torchvision's naming) of the value, ``""`` when not traced.
        layout: how the raw value comes: ``"NCHW"``, ``"NHWC"``, ``"NLC"`` (tokens), ``"NCL"``
            (tokens with their channels first, as a ``Conv1d`` makes them) or ``"NC"``.
        prefix_tokens: tokens dropped from the front of an ``"NLC"`` sequence.
        grid: ``(h, w)`` patch grid of an ``"NLC"`` or ``"NCL"`` sequence at the example size.
        shape: the normalised shape (without the batch dim) at the example input.
        token_order: for tokens that come in another order than row by row (timm Hiera's
            unrolled stages), the index of the token at each position of the grid, row by row.
    """

    name: str
    part: str
    index: int
    module: Optional[str] = None
    take: str = "output"
    node: str = ""
    layout: str = "NCHW"
    prefix_tokens: int = 0
    grid: Optional[Tuple[int, int]] = None
    shape: Tuple[int, ...] = ()
    token_order: Optional[Tuple[int, ...]] = field(default=None, repr=False)

    @property
    def is_vector(self) -> bool:
        """Whether the point is a vector (``[K]``, or ``K`` maps of 1x1: ``T_l`` is the identity
        there), as :func:`equifast.reference.is_vector` says of its values."""
        return len(self.shape) != 3 or self.shape[1] * self.shape[2] == 1

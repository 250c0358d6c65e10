"""equifast: how equivariant are the internal representations of image models?

    >>> import equifast as ef
    >>> report = ef.measure("efficientnet_lite0", transforms=ef.rotations())   # doctest: +SKIP
    >>> report.parts                                                           # doctest: +SKIP

See ``ef.functional.equivariance_scores`` for the measure on two tensors, ``ef.split`` for
the representation points of a model, and ``ef.measure`` for a whole model.
"""
from . import functional, ops, reference, transforms
from .functional import backend
from .reference import TOLERANCE, Scores
from .report import Report, combine_runs
from .measurement import MeasureState, Measurer, measure
from .models import load_model
from .points import Point, representations, split
from .transforms import (Flip, Identity, Rotation, Transform, Translation, diagonal_shifts, flips,
                         parse_transforms, rotations)
from .warning import EquifastWarning

__version__ = "0.1.0"

ops.load()  # registers the operator and its fake, so torch.compile/export see it


__all__ = ["functional", "reference", "transforms", "ops", "backend", "TOLERANCE", "Scores",
           "Report", "Transform", "Rotation", "Flip", "Translation", "Identity", "diagonal_shifts",
           "rotations", "flips", "parse_transforms", "split", "Point", "representations", "measure",
           "MeasureState", "Measurer", "load_model", "EquifastWarning", "combine_runs"]

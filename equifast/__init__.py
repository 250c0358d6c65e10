"""equifast: how equivariant are the internal representations of image models?"""
from . import reference, transforms
from .transforms import (Flip, Identity, Rotation, Transform, Translation, diagonal_shifts, flips,
                         parse_transforms, rotations)

__version__ = "0.1.0"

"""Named training recipes with the settings of the thesis' appendix tables 1 and 2.

================================ ====================================================
recipes                          settings
================================ ====================================================
``cnn7-mnist6``,                 objective study (table 1): 7-layer CNN, Adam lr 0.01,
``cnn7-mnist6-rot-inv``,         L2 5e-4, 100 epochs, lr /10 at epochs 25 and 50,
``cnn7-mnist6-rot-eq``,          batch 128
``cnn7-fmnist6[-rot-inv|-rot-eq]``
``resnet44-{none,crop,flip,      augmentation study (table 2): ResNet-44 on CIFAR-10, SGD
cutmix,randaugment}``            lr 0.1, momentum 0.9, L2 1e-4, 200 epochs, /10 at 100
                                 and 150, batch 128
``resnet44-w{1,2,4,8}``          capacity study (SPEC): table 2 at width multipliers 1, 2,
                                 4, 8 (no augmentation)
``wrn40-w{1,2,4,8}``             capacity study as the thesis' text has it: WideResNet-40
                                 with widening factors 1, 2, 4, 8, table 2 (no augmentation)
================================ ====================================================

"L2 reg." is the optimiser's ``weight_decay`` (coupled L2 on every parameter, also for Adam,
not AdamW). The tables' "Weight Decay epochs" and "Weight Decay factor 10.0" are read as the
learning-rate schedule (``milestones``, ``gamma=0.1``): the L2 row is the weight decay, and
nothing else in the tables drops. The learning-rate milestones are epochs; overriding
``epochs`` leaves them where they are (override ``milestones`` too to shorten the schedule:
``--milestones`` on the command line).

The capacity study (thesis 4.2.3) gives only "the same [hyperparameters] as in the data
augmentation experiment of Sec 5.2 (Table 2)" (its 4.2.2): its recipes use no augmentation, the
augmentation study's baseline, so that width is the one thing that changes.

Example:
    >>> r = get_recipe("cnn7-fmnist6", epochs=2, train_subset=2000)
    >>> (r.optimizer, r.lr, r.epochs, r.milestones)
    ('adam', 0.01, 2, (25, 50))
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple

__all__ = ["Recipe", "RECIPES", "get_recipe", "list_recipes", "IGNORED_ON_RESUME"]

# Fields that may change between a run and its resumption or reuse: where the data is, how the
# run is executed, and what is done with the trained model (`measure_images`: a study measured
# with another --n-images reuses its runs). `device` and `num_workers` change the arithmetic or
# the random streams of the augmentations, so a resumed run is then not bitwise the
# uninterrupted one (trainer warns).
IGNORED_ON_RESUME = ("data_root", "download", "device", "num_workers", "name", "measure_images")


# Fields that parametrise one augmentation, by its name's prefix.
_PARAMETERS_OF = ("randaugment_", "cutmix_")

# What runs saved before a field existed did: CutMix mixed every batch.
_BEFORE_FIELDS = {"randaugment_ops": 2, "randaugment_magnitude": 9, "cutmix_alpha": 1.0,
                  "cutmix_prob": 1.0}


_STEP_MAX = 3.4e37  # float32 max / 10


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs; every field may be overridden.

    Attributes:
        name: recipe name (also the default output folder name).
        model: ``"cnn7"``, ``"resnet44"`` or ``"wrn40"``; ``width`` is the channel
            multiplier of the last two.
        dataset: a name of :data:`equifast.training.data.DATASETS`.
        augment: one of :data:`equifast.training.data.AUGMENTATIONS`;
            ``randaugment_ops`` and ``randaugment_magnitude`` (of 31 bins) parametrise
            ``randaugment``, ``cutmix_alpha`` (the Beta distribution's) and ``cutmix_prob`` (the
            share of batches mixed) ``cutmix``. The thesis names the augmentations only: these
            are torchvision's RandAugment defaults and the CutMix paper's CIFAR setting.
        optimizer: ``"adam"`` or ``"sgd"``; ``lr``, ``momentum`` (SGD), ``weight_decay`` (L2).
        epochs: epochs to train; ``milestones`` and ``gamma`` form the MultiStepLR schedule.
        batch_size: global batch size (split across Ray workers).
        seed: training seed (weights, shuffling, augmentation).
        data_seed: seed of the data set itself (rotations, subsets); fixed across seeds.
        data_root: data folder (``None``: Fashion-MNIST's default folder; required otherwise).
        download: let torchvision download missing data.
        train_subset, test_subset: use a seeded random subset of this many images.
        measure_images: validation images used to measure the trained model (thesis: 2000).
        device: ``"cpu"``, ``"cuda"``, ... (``None``: CUDA when available).
        num_workers: data-loader worker processes.
    """

    name: str = "custom"
    model: str = "cnn7"
    width: int = 1
    dataset: str = "mnist6"
    augment: str = "none"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    cutmix_alpha: float = 1.0
    cutmix_prob: float = 0.5
    optimizer: str = "adam"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 5e-4
    epochs: int = 100
    milestones: Tuple[int, ...] = (25, 50)
    gamma: float = 0.1
    batch_size: int = 128
    seed: int = 0
    data_seed: int = 0
    data_root: Optional[str] = None
    download: bool = False
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    measure_images: int = 2000
    device: Optional[str] = None
    num_workers: int = 0

    def _check_types(self) -> None:
        """Raise TypeError for a field of another type than declared (``epochs="2"`` passed
        every check, then failed deep in training); whole floats such as ``lr=1`` are fine."""
        allowed = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
        for f in fields(self):
            value = getattr(self, f.name)
            optional = f.type.startswith("Optional[")
            kind = f.type.removeprefix("Optional[").removesuffix("]")
            if kind not in allowed or (optional and value is None):
                continue
            if kind == "str" and isinstance(value, os.PathLike):  # data_root=Path(...)
                value = os.fspath(value)
                object.__setattr__(self, f.name, value)
            # NumPy's numbers (a setting read from a table) as Python's: the recipe is JSON
            if kind in ("int", "float") and type(value) not in (bool, int, float) and \
                    isinstance(value, numbers.Integral if kind == "int" else numbers.Real):
                value = int(value) if isinstance(value, numbers.Integral) else float(value)
                object.__setattr__(self, f.name, value)
            if not isinstance(value, allowed[kind]) or (kind != "bool" and isinstance(value, bool)):
                raise TypeError(f"Expected `{f.name}` to be {'an' if kind == 'int' else 'a'} "
                                f"{kind}{' or None' if optional else ''}, but got {value!r}.")

    def __post_init__(self):
        from .data import AUGMENTATIONS, DATASETS
        from .models import MODELS
        checks = [("model", self.model, tuple(MODELS)), ("dataset", self.dataset, DATASETS),
                  ("augment", self.augment, AUGMENTATIONS),
                  ("optimizer", self.optimizer, ("adam", "sgd"))]
        for what, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"Expected `{what}` to be one of {list(allowed)}, "
                                 f"but got {value!r}.")
        self._check_types()
        if self.dataset.endswith("-rot-eq") and self.model != "cnn7":
            # only CNN7 has the turn head a Rot-Eq data set trains (thesis 4.2.1)
            raise ValueError(f"Expected model 'cnn7' for the Rot-Eq data set {self.dataset!r} "
                             f"(the only model with a head for the quarter turns), but got "
                             f"{self.model!r}.")
        for what in ("epochs", "batch_size", "width"):
            if int(getattr(self, what)) < 1:
                raise ValueError(f"Expected `{what}` to be >= 1, but got {getattr(self, what)!r}.")
        if self.model == "cnn7" and self.width != 1:  # trained at width 1, recorded as another run
            raise ValueError(f"Expected `width` 1 for model 'cnn7' (the thesis' CNN7 has one "
                             f"width; `width` multiplies the ResNets' channels), but got {self.width!r}.")
        for what in ("train_subset", "test_subset", "measure_images"):
            v = getattr(self, what)
            if v is not None and int(v) < 1:
                raise ValueError(f"Expected `{what}` to be >= 1 (or None: all), but got {v!r}.")
        if not (0 <= int(self.randaugment_ops) and 0 <= int(self.randaugment_magnitude) <= 30):
            raise ValueError(f"Expected `randaugment_ops` >= 0 and `randaugment_magnitude` in "
                             f"0..30 (of RandAugment's 31 bins), but got {self.randaugment_ops!r} "
                             f"and {self.randaugment_magnitude!r}.")
        if not (0 < float(self.cutmix_alpha) < float("inf") and 0 <= float(self.cutmix_prob) <= 1):
            raise ValueError(f"Expected `cutmix_alpha` > 0 and `cutmix_prob` in [0, 1], but got "
                             f"{self.cutmix_alpha!r} and {self.cutmix_prob!r}.")
        # the optimisers scale a step by lr (Adam by lr / (1 - beta1) = 10 lr) and decay by
        # weight_decay in float32: past float32's range torch raises deep in the first step
        step = f"a number in [0, {_STEP_MAX:.2g}] (float32 optimiser arithmetic overflows beyond)"
        # a negative gamma or decay trained with a sign-flipped schedule or penalty, silently
        for what, ok, wanted in (("lr", lambda v: 0 <= v <= _STEP_MAX, step),
                                 ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
                                 ("weight_decay", lambda v: 0 <= v <= _STEP_MAX, step),
                                 ("gamma", lambda v: 0 < v < float("inf"), "a finite number > 0")):
            if not ok(float(getattr(self, what))):
                raise ValueError(f"Expected `{what}` to be {wanted}, but got "
                                 f"{getattr(self, what)!r}.")
        if self.optimizer == "adam" and float(self.momentum) != 0:
            # Adam has no momentum argument (its beta1 plays that part): it was ignored
            raise ValueError(f"Expected `momentum` 0 with optimizer 'adam' (Adam has no momentum "
                             f"setting; it is SGD's), but got {self.momentum!r}.")
        for what in ("seed", "data_seed"):
            # numpy's generators refuse negative seeds, torch's overflow past 64 bits: both
            # deep in training
            if not 0 <= getattr(self, what) < 2**32:
                raise ValueError(f"Expected `{what}` to be an integer in 0..{2**32 - 1}, but got "
                                 f"{getattr(self, what)!r}.")
        if self.num_workers < 0:
            raise ValueError(f"Expected `num_workers` >= 0 (0: load in this process), but got "
                             f"{self.num_workers!r}.")
        if isinstance(self.milestones, (str, bytes)) or not isinstance(self.milestones, Iterable) \
                or not all(isinstance(m, numbers.Integral) and not isinstance(m, bool)
                           for m in self.milestones):
            # a string's characters or floats were silently read as other epochs ("59": 5, 9)
            raise TypeError(f"Expected `milestones` to be a sequence of int epochs, but got "
                            f"{self.milestones!r}.")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            # MultiStepLR would take a repeat as two drops and silently ignore epoch 0
            raise ValueError(f"Expected `milestones` to be increasing epochs >= 1, but got "
                             f"{list(self.milestones)}.")

    def replace(self, **overrides) -> "Recipe":
        """A copy with some fields changed; ``None`` values are ignored (CLI defaults).

        Example:
            >>> get_recipe("resnet44-crop").replace(epochs=1, seed=None).seed
            0
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"Expected recipe fields among {sorted(names)}, but got {unknown}.")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> Dict:
        """JSON-ready dict (``milestones`` as a list)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "Recipe":
        """Inverse of :meth:`to_dict`; unknown keys are an error. A field that a stored run
        predates takes the value that run used (:data:`_BEFORE_FIELDS`), not today's default."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:  # Recipe(**d) said "unexpected keyword argument" in a traceback
            raise ValueError(f"Expected the fields of a recipe, but got unknown ones {unknown}: "
                             "a recipe written by another version of equifast?")
        return cls(**{**_BEFORE_FIELDS, **d, "milestones": tuple(d.get("milestones", ()))})

    def differences(self, other: "Recipe") -> Dict[str, Tuple]:
        """``{field: (this one's, other's)}`` of the fields that make the two recipes train
        another model (not :data:`IGNORED_ON_RESUME`, nor the parameters of augmentations
        neither uses)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in IGNORED_ON_RESUME
                and not (k.startswith(_PARAMETERS_OF) and
                         k.split("_")[0] not in (self.augment, other.augment))}

    def same_run(self, other: "Recipe") -> bool:
        """Whether two recipes train the same model (no :meth:`differences`)."""
        return not self.differences(other)


def _objective(dataset: str) -> Recipe:
    return Recipe(name=f"cnn7-{dataset}", model="cnn7", dataset=dataset, optimizer="adam",
                  lr=0.01, weight_decay=5e-4, epochs=100, milestones=(25, 50), batch_size=128)


def _cifar(name: str, model: str = "resnet44", augment: str = "none", width: int = 1) -> Recipe:
    return Recipe(name=name, model=model, width=width, dataset="cifar10", augment=augment,
                  optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, epochs=200,
                  milestones=(100, 150), batch_size=128)


RECIPES: Dict[str, Recipe] = {}
for _ds in ("mnist6", "mnist6-rot-inv", "mnist6-rot-eq",
            "fmnist6", "fmnist6-rot-inv", "fmnist6-rot-eq"):
    RECIPES[f"cnn7-{_ds}"] = _objective(_ds)
for _aug in ("none", "crop", "flip", "cutmix", "randaugment"):
    RECIPES[f"resnet44-{_aug}"] = _cifar(f"resnet44-{_aug}", augment=_aug)
for _model in ("resnet44", "wrn40"):
    for _w in (1, 2, 4, 8):
        RECIPES[f"{_model}-w{_w}"] = _cifar(f"{_model}-w{_w}", model=_model, width=_w)


def list_recipes() -> List[str]:
    """The recipe names, in study order."""
    return list(RECIPES)


def get_recipe(name: str, **overrides) -> Recipe:
    """The recipe ``name`` with optional field overrides (``None`` overrides are ignored).

    Raises:
        ValueError: unknown name or field, or a value out of range.
        TypeError: a field of another type than declared (``epochs="2"``).
    """
    if name not in RECIPES:
        raise ValueError(f"Expected a recipe name in {list_recipes()}, but got {name!r}. "
                         f"List them with `equifast train --list`.")
    return RECIPES[name].replace(**overrides)

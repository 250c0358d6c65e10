"""The thesis studies of section 4.2: train every setting and seed, measure, tabulate, draw.

============================ ================================ =========================
study                        settings (recipes)               measured with
============================ ================================ =========================
``objective``                ``cnn7-mnist6``, ``-rot-inv``,   rotations 90, 180, 270
                             ``-rot-eq`` (figure 7)
``objective-fashion``        the same on Fashion-MNIST        rotations 90, 180, 270
``augmentation``             ``resnet44-{none,crop,flip,      diagonal shifts 1..16
                             cutmix,randaugment}`` (fig. 9)
``capacity``                 ``resnet44-w{1,2,4,8}`` (SPEC's  diagonal shifts 1..16
                             network for fig. 10)
``capacity-wrn40``           ``wrn40-w{1,2,4,8}`` (fig. 10,    diagonal shifts 1..16
                             the thesis' network)
============================ ================================ =========================

The capacity studies measure the shifts of the augmentation study (4.2.3 names none).
Each run lives in ``out/<setting>/seed<k>/`` (see :mod:`equifast.training.trainer`).
:func:`measure_study` measures every finished run with :func:`equifast.measure` on the first
``measure_images`` (2000) test images of its data set (the thesis' "2000 images from the
validation set": runs train on the whole training split, so the test split is the held-out one) and returns one row per (setting,
seed, part, family); :func:`summarize` joins accuracy and part scores over seeds (mean and
std); :func:`plot_study` draws channel and layer scores per part, one line per setting. The
studies of translations also keep each part's scores at each shift (thesis figure 8), summarised
and drawn by the same two functions.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from equifast._checks import check_integer, checked_seed
from equifast._io import (FolderLock, check_own_folder, commit_staged, finish_commit, stage_folder,
                          writable_folder, write_csv_atomic, write_text_atomic)
from equifast.report import over_runs

from .recipes import get_recipe

__all__ = ["Study", "STUDIES", "get_study", "run_study", "measure_study", "summarize",
           "plot_study", "PART_ORDER"]

PART_ORDER = ("early", "middle", "late", "pool", "final")
_OVERWRITE = "overwrite.json"  # see _OverwritePlan
_LOCK = ".equifast-study.lock"  # held in a study folder while the study runs (_claim_folder)
_SHIFT_FILES = ("shift_runs.csv", "shift_summary.csv", "shifts.png")  # of a study of translations
_TABLES = ("runs.csv", "summary.csv", "figure.png") + _SHIFT_FILES  # what a measure writes


@dataclass(frozen=True)
class Study:
    """One study: its settings, seeds and the transforms it measures with.

    Attributes:
        name: study name.
        settings: ``(label, recipe name)`` pairs, one line each in the figure.
        transforms: transform spec for :func:`equifast.parse_transforms`.
        seeds: default seeds: 3, as the thesis repeats the objective and augmentation
            settings (4.2.1, 4.2.2); for the capacity study it says nothing, the same 3 are used.
        title: figure title.
    """

    name: str
    settings: Tuple[Tuple[str, str], ...]
    transforms: str
    seeds: Tuple[int, ...] = (0, 1, 2)
    title: str = ""

    def make_transforms(self) -> List:
        """The transforms as :mod:`equifast.transforms` objects."""
        from equifast.transforms import parse_transforms
        return parse_transforms(self.transforms)

    def runs(self, seeds: Optional[Sequence[int]] = None) -> List[Tuple[str, str, int]]:
        """``(label, recipe name, seed)`` of every run."""
        return [(label, recipe, s) for label, recipe in self.settings
                for s in (self.seeds if seeds is None else seeds)]


STUDIES: Dict[str, Study] = {
    "objective": Study(
        "objective", (("MNIST6", "cnn7-mnist6"), ("MNIST6-Rot-Inv", "cnn7-mnist6-rot-inv"),
                      ("MNIST6-Rot-Eq", "cnn7-mnist6-rot-eq")),
        "rotation", title="Rotation equivariance per objective (7-layer CNN)"),
    "objective-fashion": Study(
        "objective-fashion",
        (("FMNIST6", "cnn7-fmnist6"), ("FMNIST6-Rot-Inv", "cnn7-fmnist6-rot-inv"),
         ("FMNIST6-Rot-Eq", "cnn7-fmnist6-rot-eq")),
        "rotation", title="Rotation equivariance per objective (7-layer CNN, Fashion-MNIST)"),
    "augmentation": Study(
        "augmentation", tuple((aug, f"resnet44-{aug}")
                              for aug in ("none", "crop", "flip", "cutmix", "randaugment")),
        "translation:1-16", title="Translation equivariance per augmentation (ResNet-44)"),
    "capacity": Study(
        "capacity", tuple((f"width {w}", f"resnet44-w{w}") for w in (1, 2, 4, 8)),
        "translation:1-16", title="Translation equivariance per width (ResNet-44)"),
    "capacity-wrn40": Study(
        "capacity-wrn40", tuple((f"width {w}", f"wrn40-w{w}") for w in (1, 2, 4, 8)),
        "translation:1-16", title="Translation equivariance per width (WideResNet-40)"),
}


def get_study(name: str) -> Study:
    """The study ``name`` (see :data:`STUDIES`)."""
    if name not in STUDIES:
        raise ValueError(f"Expected a study name in {list(STUDIES)}, but got {name!r}.")
    return STUDIES[name]


def _read_json(path: Path, expected: str, advice: str, pick):
    """``pick`` of the JSON in ``path``, or a ``ValueError`` saying what it should ``expected``
    and the ``advice``, for a file edited by hand or cut short."""
    text = path.read_text()
    try:
        return pick(json.loads(text))
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise ValueError(f"Expected {str(path)!r} to {expected}, but it holds {text[:80]!r}. "
                         f"{advice}") from err


def _overwrite_plan_fields(plan):
    """``plan`` unless it lacks overwrite.json's ``runs`` list and ``done`` dict (TypeError)."""
    if not (isinstance(plan["runs"], list) and isinstance(plan["done"], dict)):
        raise TypeError("runs or done")
    return plan


def _claim_folder(out: str, name: str) -> FolderLock:
    """Take the study lock of ``out`` and mark it as study ``name``'s (``study.json``); use the
    lock returned in ``with``, which releases it. Another study's folder is refused, so that its
    runs.csv, summary.csv and figure.png are never replaced, and so is a folder a study is
    writing to."""
    marker = Path(out, "study.json")
    check_own_folder(out, [marker.name], "a study folder", "`out` (--out)", lock=_LOCK)  # runs.csv, ...
    # a path under a file (or a read-only folder) said only "[Errno 20] Not a directory: ..."
    writable_folder(out, "`out` (--out)")
    lock = FolderLock(out, _LOCK, "study")
    lock.acquire()  # before study.json is read: of two studies starting at once, one is refused
    try:
        if marker.is_file():
            other = _read_json(marker, f"name the study of `out` ({json.dumps({'study': name})})",
                               "Restore it, or use another --out.", lambda d: d["study"])
            if other != name:
                raise FileExistsError(f"Expected `out` {out!r} to be a folder of study {name!r}, "
                                      f"but it holds study {other!r}. Use another --out.")
        else:
            write_text_atomic(marker, json.dumps({"study": name}))
    except BaseException:
        lock.release()
        raise
    return lock


def _check_seeds_and_images(seeds: Optional[Sequence[int]], n_images) -> Tuple[Optional[List[int]],
                                                                              Optional[int]]:
    """``seeds`` as a list of ints (or ``None``: the study's) and ``n_images`` as an int (or
    ``None``), checked before anything trains or a folder is claimed: a bad value must not
    surface after hours of training, or as pandas' "No objects to concatenate"."""
    n_images = check_integer("`n_images` (--n-images)", n_images, 1, allow_none=True,
                             none_means="each recipe's measure_images")
    if seeds is None:
        return None, n_images
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"Expected `seeds` (--seeds) to be a list of integers, but got {seeds!r}.")
    seeds = [checked_seed(s, "`seeds`") for s in seeds]  # np.arange's too
    if not seeds:
        raise ValueError("Expected at least one seed (--seeds), but got none.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Expected distinct seeds (--seeds), but got {seeds}: a repeated "
                         "seed would count as another run in the mean and standard deviation.")
    return seeds, n_images


def _setting_fields(study: Study) -> List[str]:
    """The recipe fields, other than the name, whose values tell the settings of ``study``
    apart: ``dataset`` (objective), ``augment`` (augmentation), ``width`` (capacity)."""
    recipes = [get_recipe(recipe).to_dict() for _, recipe in study.settings]
    return [f for f in recipes[0] if f != "name" and any(r[f] != recipes[0][f] for r in recipes)]


def _check_overrides(study: Study, overrides: Dict) -> None:
    """Raise ``ValueError`` where ``overrides`` set a field that tells the study's settings
    apart: every setting trained (or was expected) alike under its own label, a study of
    identical runs drawn as different ones (``augment="crop"``: five crop runs, one labelled
    ``none``)."""
    fixed = [f for f in _setting_fields(study) if f in overrides]
    if fixed:
        values = {label: {f: getattr(get_recipe(recipe), f) for f in fixed}
                  for label, recipe in study.settings}
        raise ValueError(f"Expected `overrides` not to set {', '.join(map(repr, fixed))}, which "
                         f"tells the settings of study {study.name!r} apart ({values}), but got "
                         f"{ {f: overrides[f] for f in fixed} }; train a recipe with other values "
                         "by itself (equifast.training.train(get_recipe(name, ...), out)).")


def _run_dir(out: str, label: str, seed: int) -> str:
    safe = label.replace(" ", "-").replace("/", "-")
    return os.path.join(out, safe, f"seed{seed}")


# The recipe fields `equifast study` has flags for: the same for every run of a study, and
# any value (data_root, download, device and measure_images never make another run).
_STUDY_WIDE = ("epochs", "milestones", "batch_size", "lr", "train_subset", "test_subset")


def _check_finished(study: Study, run: str) -> None:
    """Raise ``FileNotFoundError`` unless the run folder ``run`` of ``study`` is finished."""
    from .trainer import RESULT
    if not os.path.isfile(os.path.join(run, RESULT)):
        raise FileNotFoundError(f"Expected a finished run in {run!r}, but it has no "
                                f"{RESULT}. Train it with `equifast study {study.name}`.")


def _check_run_recipes(study: Study, out: str, runs: Sequence[Tuple[str, str, int]],
                       overrides: Optional[Dict] = None) -> List:
    """The stored recipes of ``runs`` (``(label, recipe name, seed)``), each checked to be
    finished and to be the recipe :func:`run_study` trains for it: ``get_recipe(recipe name,
    **overrides, seed=seed)``, compared as a resumed run is (:meth:`Recipe.differences`).
    Without ``overrides``, a field of :data:`_STUDY_WIDE` is overridden with the value the runs
    share, unless every run has its own recipe's (recipes of other defaults in one study). A run
    an interrupted ``overwrite`` has yet to retrain (:class:`_OverwritePlan`) is refused."""
    from .trainer import RECIPE, read_run_recipe
    stored = []
    for label, _, seed in runs:
        run = _run_dir(out, label, seed)
        _check_finished(study, run)
        stored.append(read_run_recipe(Path(run, RECIPE)))
    plan = _overwrite_plan(out, [], overwrite=False)
    for (label, _, seed), recipe in zip(runs, stored):
        run = _run_dir(out, label, seed)
        if plan is not None and plan.retrains(run, recipe):  # an old model beside new ones
            raise ValueError(f"Expected the runs of {out!r} to be trained, but an interrupted "
                             f"--overwrite has yet to retrain {run!r} ({_OVERWRITE}): finish it "
                             f"with `equifast study {study.name}` first.")
    if overrides is None:
        overrides = {}
        defaults = [get_recipe(recipe_name, seed=seed) for _, recipe_name, seed in runs]
        for field in _STUDY_WIDE:
            if all(getattr(r, field) == getattr(d, field) for r, d in zip(stored, defaults)):
                continue  # not overridden: each its own recipe's (cnn7's lr beside resnet44's)
            found: Dict = {}
            for (label, _, seed), recipe in zip(runs, stored):
                value = getattr(recipe, field)
                found.setdefault(value, []).append(_run_dir(out, label, seed))
            if len(found) > 1:  # a study trains every run alike: these were trained apart
                raise ValueError(
                    f"Expected the runs of study {study.name!r} in {out!r} to share `{field}` "
                    f"(a study overrides it for every run) or each to keep its recipe's own, "
                    f"but they differ: {found}. Train the runs again "
                    f"alike (`equifast study {study.name} --overwrite`) or measure them apart.")
            overrides[field] = next(iter(found))
    for (label, recipe_name, seed), recipe in zip(runs, stored):
        expected = get_recipe(recipe_name, **{**overrides, "seed": seed})
        diff = recipe.differences(expected)
        if diff:
            run = _run_dir(out, label, seed)
            raise ValueError(
                f"Expected the run {run!r} to be the run of {label} (recipe {recipe_name!r}, "
                f"seed {seed}) of study {study.name!r}, but its {RECIPE} differs (the run's, "
                f"the study's): {diff}. A run of another study or setting, or edited by hand: "
                f"move it away and train it again with `equifast study {study.name}`.")
    return stored


def measure_study(study: Study | str, out: str, seeds: Optional[Sequence[int]] = None,
                  n_images: Optional[int] = None, batch_size: int = 64, device=None,
                  metric: str = "correlation", data_root: Optional[str] = None,
                  download: bool = False, return_shifts: bool = False,
                  overrides: Optional[Dict] = None):
    """Measure every trained run of a study with :func:`equifast.measure`.

    Every run's ``recipe.json`` must be the recipe the study trains for it (its setting's
    recipe, its seed, ``overrides``): a run folder copied from another study or setting, or
    edited by hand, is refused before anything is measured (see :func:`_check_run_recipes`).

    Args:
        study: a :class:`Study` or its name.
        out: the study folder given to :func:`run_study`.
        seeds: seeds to measure (default: the study's).
        n_images: validation images (default: each recipe's ``measure_images``, 2000).
        batch_size, device, metric: passed to :func:`equifast.measure`.
        data_root, download: where the test images are (default: each run's recipe's
            ``data_root``, which may have moved since it trained).
        return_shifts: also return each part's scores at each shift
            (:func:`equifast.report.shift_table`, thesis figure 8).
        overrides: the recipe fields :func:`run_study` changed for every run (default: the
            values of ``epochs, milestones, batch_size, lr, train_subset, test_subset`` that
            the runs share, the fields ``equifast study`` has flags for; a field on which every
            run has its own recipe's value is not overridden). Not the field that tells the
            settings apart (``dataset``, ``augment``, ``width``).

    Raises:
        FileNotFoundError: a run is not finished.
        ValueError: a run's recipe is not the study's for it, or the runs neither share the
            value of a field above nor each have their own recipe's, or ``overrides`` set the
            field that tells the settings apart.

    Returns:
        One row per (setting, seed, part, family): ``setting, recipe, seed, part, family,
        channel, layer, test_acc`` (+ ``test_rot_acc``). With ``return_shifts``, a pair: that
        table and one with a row per (setting, seed, part, family, shift): ``setting, recipe,
        seed, part, family, transform, dy, dx, channel, layer, ...`` (no rows for a study
        of rotations).
    """
    import equifast  # lazy: the measuring side of the library
    from equifast.data import check_batch_size
    from equifast.devices import resolve_device
    from equifast.measurement import metric_list
    from equifast.transforms import Translation

    from .data import measure_images
    from .trainer import load_model, prepare_out_dir, run_lock
    study = get_study(study) if isinstance(study, str) else study
    seeds, n_images = _check_seeds_and_images(seeds, n_images)
    # measure's own arguments, before any run: their error read as the first run's ("Could not
    # measure the run ...", the wrapping meant for a diverged model)
    metric_list(metric)
    check_batch_size(batch_size)
    resolve_device(device)
    transforms = study.make_transforms()
    shifted = return_shifts and any(isinstance(t, Translation) for t in transforms)
    rows, shift_rows, cache = [], [], {}
    runs = study.runs(seeds)
    if overrides:
        _check_overrides(study, overrides)
    # every run checked before any is measured (minutes each)
    recipes = _check_run_recipes(study, out, runs, overrides)
    for (label, recipe_name, seed), recipe in zip(runs, recipes):
        run = _run_dir(out, label, seed)
        # read under the run's lock: a run that another process began to (re)train since it
        # was checked above had no result.json, so prepare_out_dir wrote this study's
        # recipe.json over the one it trains with and returned None, and its half-trained
        # checkpoint was measured ("'NoneType' object has no attribute 'test_acc'"); now it is
        # refused, naming the process. A run this process cannot write to (a read-only copy)
        # takes no lock file, and is read as before.
        with run_lock(run) if os.access(run, os.W_OK) else contextlib.nullcontext():
            _check_finished(study, run)  # a retraining killed since
            result = prepare_out_dir(recipe, run)  # reads the finished result, trains nothing
            model = load_model(run, class_logits_only=True)  # a Rot-Eq model's final: its classes
        n = recipe.measure_images if n_images is None else n_images
        root = data_root or recipe.data_root
        key = (recipe.dataset, root, recipe.data_seed, n)
        if key not in cache:
            cache[key] = measure_images(recipe.dataset, root, n, recipe.data_seed,
                                        download=download)
        try:
            report = equifast.measure(model, cache[key], transforms=transforms,
                                      metric=metric, batch_size=batch_size, n_images=n,
                                      device=device, seed=0)
        except ValueError as err:  # a NaN model of a diverged run: which of the study's runs
            raise ValueError(f"Could not measure the run {run!r} ({label}, seed {seed}): "
                             f"{err}") from err
        parts = report.parts.copy()
        parts["test_acc"] = result.test_acc
        if result.test_rot_acc is not None:
            parts["test_rot_acc"] = result.test_rot_acc
        for table, into in ((parts, rows), (report.shifts if shifted else None, shift_rows)):
            if table is not None:
                into.append(table.assign(setting=label, recipe=recipe_name, seed=seed)[
                    ["setting", "recipe", "seed"] + list(table.columns)])
    runs = pd.concat(rows, ignore_index=True)
    if not return_shifts:
        return runs
    return runs, (pd.concat(shift_rows, ignore_index=True) if shift_rows else pd.DataFrame())


def _check_columns(table, name: str, columns: Sequence[str], what: str) -> None:
    """Raise ValueError unless ``table`` is a DataFrame with ``columns`` (``what`` it should be)."""
    missing = ([c for c in columns if c not in table] if isinstance(table, pd.DataFrame)
               else list(columns))
    if missing:
        got = (f"columns {list(table.columns)}" if isinstance(table, pd.DataFrame)
               else type(table).__name__)
        raise ValueError(f"Expected `{name}` to be {what}, with columns {list(columns)}, but it "
                         f"lacks {missing} ({got}).")


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of accuracy and part scores, or of the scores at each shift.

    Args:
        runs: the output of :func:`measure_study`: either of its tables.

    Returns:
        One row per (setting, part, family), or per (setting, part, family, shift) for the
        table of shifts, each metric apart (a ``metric`` column when the runs have one),
        with ``<x>_mean`` and ``<x>_std`` for ``x`` in ``channel, layer,
        undefined_fraction, test_acc`` (+ ``test_rot_acc``) and ``n_seeds``; settings keep their study order,
        parts the order early, middle, late, pool, final, and shifts the order measured.
    """
    # another table (summary.csv read back, a report's parts) failed in pandas with a bare
    # KeyError 'Column not found: seed'
    _check_columns(runs, "runs", ("setting", "seed", "part", "family", "channel", "layer"),
                   "one of measure_study's tables (runs.csv, shift_runs.csv)")
    # equifast.measure may give categorical columns: compare and group them as strings
    runs = runs.astype({c: str for c in ("setting", "part", "family") if c in runs})
    # each metric apart (measure_study's metric may be both): not more seeds of one score
    keys = (["setting", "part", "family"] + (["metric"] if "metric" in runs else [])
            + (["transform", "dy", "dx"] if "dy" in runs else []))
    # undefined_fraction: the share of entries the scores leave out, never hidden (SPEC 1)
    values = [c for c in ("channel", "layer", "undefined_fraction", "test_acc", "test_rot_acc")
              if c in runs]
    out = over_runs(runs, keys, values, run="seed", count="n_seeds", one_row_per_run=True)
    out = out.rename(columns={v: f"{v}_mean" for v in values})
    out = out[keys + [f"{v}_{s}" for v in values for s in ("mean", "std")] + ["n_seeds"]]
    order = {p: i for i, p in enumerate(PART_ORDER)}
    settings = {s: i for i, s in enumerate(dict.fromkeys(runs["setting"]))}
    key = (out["setting"].map(settings).astype(int) * 100
           + out["part"].map(lambda p: order.get(p, 99)).astype(int))
    return out.iloc[key.argsort(kind="stable")].reset_index(drop=True)


def plot_study(summary: pd.DataFrame, path: Optional[str] = None, title: str = ""):
    """Draw channel (left) and layer (right) scores per part, one line per setting; or, for a
    summary of shifts, each part's scores against the shift, one row of panels per setting.

    Error bars are the std over seeds (thesis figures 7, 9, 10; figure 8 for the shifts); drawn
    by :func:`equifast.figures.plot_parts` or :func:`equifast.figures.plot_shifts`, like every
    figure of equifast.

    Args:
        summary: the output of :func:`summarize`.
        path: where to save the figure (PNG, PDF, ...), or ``None``.
        title: figure title.

    Returns:
        The matplotlib figure.
    """
    from equifast.figures import plot_parts, plot_shifts

    # a per-seed table (runs.csv) was drawn without a word: each part's seeds joined by one line
    _check_columns(summary, "summary", ("setting", "part", "family", "channel_mean", "layer_mean"),
                   "one of summarize's tables (summary.csv, shift_summary.csv; summarize(runs) "
                   "of runs.csv)")
    frames = {str(setting): df.rename(columns={"channel_mean": "channel", "layer_mean": "layer"})
              for setting, df in summary.groupby("setting", sort=False)}
    plot = plot_shifts if "dy" in summary else plot_parts
    return plot(frames, path=path, title=title or None)


class _OverwritePlan:
    """What a study's ``overwrite`` has yet to retrain, kept in ``out/overwrite.json`` until it
    is done: ``{"runs": [run folders, relative to out], "done": {run folder: recipe}}``.

    An interrupted ``--overwrite`` is carried on by the next :func:`run_study`, with the flag or
    without: without it, the runs not yet retrained were reused (the old models measured beside
    the new ones); with it, those already retrained were trained again."""

    def __init__(self, out: str, plan: Dict, overwrite: bool):
        self.path, self.plan, self.overwrite = Path(out, _OVERWRITE), plan, overwrite

    def _key(self, run: str) -> str:
        return Path(os.path.relpath(run, self.path.parent)).as_posix()

    def retrains(self, run: str, recipe) -> bool:
        """Whether ``run`` is to be trained anew (deleting the run there) for ``recipe``: one
        the plan has yet to retrain; one it retrained already only with ``overwrite`` given
        again and another recipe (without it, a finished run of other options was deleted and
        trained again, where a study of other options is refused)."""
        from .recipes import Recipe
        key = self._key(run)
        if key not in self.plan["runs"]:
            return False
        done = self.plan["done"].get(key)
        return done is None or (self.overwrite and not Recipe.from_dict(done).same_run(recipe))

    def done(self, run: str, recipe) -> None:
        """Record ``run`` retrained with ``recipe``; the plan is deleted once all are."""
        self.plan["done"][self._key(run)] = recipe.to_dict()
        self.save()

    def save(self) -> None:
        """Write the plan, or delete it when every run is done."""
        if all(r in self.plan["done"] for r in self.plan["runs"]):
            self.path.unlink(missing_ok=True)
        else:
            write_text_atomic(self.path, json.dumps(self.plan, indent=1))


def _overwrite_plan(out: str, run_dirs: Sequence[str], overwrite: bool) -> Optional[_OverwritePlan]:
    """The study's :class:`_OverwritePlan`: an interrupted one's, with ``run_dirs`` added when
    ``overwrite``; ``None`` when there is nothing to retrain."""
    path = Path(out, _OVERWRITE)
    plan = None
    if path.is_file():
        plan = _read_json(path, "hold the runs an interrupted --overwrite has yet to retrain "
                          '({"runs": [...], "done": {...}})', "Delete it and run the study with "
                          "--overwrite again.", _overwrite_plan_fields)
    if not overwrite:
        return None if plan is None else _OverwritePlan(out, plan, overwrite)
    kept = _OverwritePlan(out, plan or {"runs": [], "done": {}}, overwrite)
    kept.plan["runs"] = list(dict.fromkeys(kept.plan["runs"] + [kept._key(r) for r in run_dirs]))
    kept.save()
    return kept


def run_study(name: str, out: str, seeds: Optional[Sequence[int]] = None,
              overrides: Optional[Dict] = None, workers: int = 1, use_gpu: bool = False,
              measure: bool = True,
              n_images: Optional[int] = None, device=None, overwrite: bool = False,
              echo: Optional[Callable[[str], None]] = None) -> Optional[pd.DataFrame]:
    """Train every setting and seed of a study, then measure, tabulate and draw it.

    Finished runs are reused (nothing is retrained), so an interrupted study continues
    where it stopped. Writes ``out/runs.csv`` (per seed), ``out/summary.csv`` (mean/std
    over seeds) and ``out/figure.png``; for a study of translations also their scores at each
    shift: ``out/shift_runs.csv``, ``out/shift_summary.csv`` and ``out/shifts.png`` (thesis
    figure 8), as one set: interrupted while they are written, the earlier set is kept whole.
    ``out/study.json`` names the study, and a folder of another study is refused. The tables
    cover ``seeds``; the runs of other seeds in ``out`` are kept, and ``echo`` names them.

    Args:
        name: a name of :data:`STUDIES`.
        out: study folder.
        seeds: seeds (default: the study's three).
        overrides: recipe fields to change for every run (``epochs``, ``data_root``, ...; not
            ``seed``: ``seeds`` gives the runs theirs; nor the field that tells the settings
            apart, ``dataset``, ``augment`` or ``width``: every setting would train alike).
        workers: Ray Train workers per run (1: in this process, unless ``use_gpu``).
        use_gpu: one GPU per Ray Train worker (as ``equifast train --gpu``).
        measure: measure and draw after training.
        n_images, device: passed to :func:`measure_study` (``n_images`` defaults to
            ``overrides["measure_images"]``, then to each run's own).
        overwrite: retrain runs that are already finished (the tables and figures of their
            earlier measure are deleted as the first one is). Interrupted, the runs it has yet
            to retrain are kept in ``out/overwrite.json``: the next call retrains them (and
            not those done), with ``overwrite`` or without.
        echo: where progress lines go (a line per run and, in this process, per epoch),
            e.g. ``print``.

    Returns:
        The summary table, or ``None`` when ``measure=False``.

    Example:
        >>> run_study("objective-fashion", "runs/objective-fashion",
        ...           overrides={"epochs": 2, "train_subset": 2000})  # doctest: +SKIP
    """
    from .trainer import epoch_line, started_recipe, train
    study = get_study(name)
    seeds, n_images = _check_seeds_and_images(seeds, n_images)
    if not measure and n_images is not None:  # it was ignored without a word: nothing measured
        raise ValueError(f"Expected no `n_images` (--n-images) with measure=False (--no-measure), "
                         f"which measures nothing, but got {n_images}: leave one of them out.")
    # 0 or -1 trained in this process without a word, as 1 does; "2" failed on a comparison
    workers = check_integer("`workers` (--workers)", workers, 1)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "seed" in overrides:  # each run's seed replaced it: every run trained on its own seed
        raise ValueError(f"Expected the seeds of a study in `seeds` (--seeds), but got "
                         f"overrides={{'seed': {overrides['seed']!r}}}; pass seeds=[...] instead.")
    _check_overrides(study, overrides)
    runs = study.runs(seeds)
    # every run's recipe and the devices, before the folder is claimed or anything trains
    recipes = [get_recipe(recipe_name, **{**overrides, "seed": seed}) for _, recipe_name, seed in runs]
    from equifast.devices import resolve_device
    if not (workers > 1 or use_gpu):  # Ray workers take --gpu, not a device
        resolve_device(overrides.get("device"))
    else:
        from .ray_train import check_cluster, check_workers
        for recipe in recipes:
            check_workers(recipe, workers, use_gpu)
        check_cluster(workers, use_gpu)  # else found by the first run, study.json written
    if measure:
        resolve_device(device)
    # held until the tables are in: two studies in one folder at once trained its runs twice
    # over and each committed its own tables over the other's
    with _claim_folder(out, study.name):
        # the tables a killed study had committed but not all moved in (runs.csv new, summary.csv
        # old): moved in whole first, also where this call measures nothing (--no-measure)
        finish_commit(out)
        plan = _overwrite_plan(out, [_run_dir(out, label, seed) for label, _, seed in runs], overwrite)
        for (label, _, seed), recipe in zip(runs, recipes):
            run = _run_dir(out, label, seed)
            if plan is None or not plan.retrains(run, recipe):
                # as train refuses it, but before any run trains: the study's fourth run, trained
                # with other options, was refused after the first three had trained for hours
                started_recipe(recipe, run)
        say = echo or (lambda _line: None)
        for i, ((label, recipe_name, seed), recipe) in enumerate(zip(runs, recipes), 1):
            run = _run_dir(out, label, seed)
            say(f"[{study.name} {i}/{len(runs)}] {label}, seed {seed} -> {run}")
            again = plan is not None and plan.retrains(run, recipe)

            def drop_tables():
                # they measured the models retrained now: kept, they read as this study's results
                # while (interrupted, or --no-measure) the runs are others. Called by train just
                # before it deletes the run: a missing data set (a typo in --data-root) stops the
                # run first, and the tables of the models left as they were are kept
                if any(Path(out, name).exists() for name in _TABLES):
                    commit_staged(stage_folder(out), out, [], remove=_TABLES)
            if workers > 1 or use_gpu:
                from .ray_train import train_ray
                result = train_ray(recipe, run, num_workers=workers, use_gpu=use_gpu,
                                   overwrite=again, say=lambda line: say("  " + line),
                                   on_overwrite=drop_tables)
            else:
                result = train(recipe, run, overwrite=again, say=lambda line: say("  " + line),
                               callback=lambda e, row: say("  " + epoch_line(e, recipe.epochs, row)),
                               on_overwrite=drop_tables)
            if again:
                plan.done(run, recipe)
            say(f"  test acc {result.test_acc:.4f} ({result.epochs} epochs)")
        if plan is not None:
            plan.save()  # done, when its runs were all retrained before (an --overwrite repeated)
        if not measure:
            return None
        say(f"[{study.name}] measuring {len(runs)} runs")
        # the value asked for now: a finished run reused keeps the recipe.json it trained with,
        # whose measure_images does not count as another run (Recipe.differences)
        if n_images is None:
            n_images = overrides.get("measure_images")
        runs, shifts = measure_study(study, out, seeds, n_images=n_images, device=device,
                                     data_root=overrides.get("data_root"),
                                     download=bool(overrides.get("download", False)),
                                     return_shifts=True, overrides=overrides)
        import matplotlib.pyplot as plt
        tables = [("runs.csv", "summary.csv", "figure.png", runs, study.title)]
        if len(shifts):
            tables.append((*_SHIFT_FILES, shifts,
                           f"{study.title}: each shift"))
        # one set, staged then committed: an interruption (Ctrl-C while a figure is drawn) or a full
        # disk left this measure's runs.csv and summary.csv beside the earlier figure and shift tables
        summaries, stage = [], stage_folder(out)
        try:
            for per_seed, over_seeds, figure, table, title in tables:
                write_csv_atomic(stage / per_seed, table)
                summaries.append(summarize(table))
                write_csv_atomic(stage / over_seeds, summaries[-1])
                plt.close(plot_study(summaries[-1], str(stage / figure), title))
            names = [name for t in tables for name in t[:3]]
            commit_staged(stage, out, names, remove=_TABLES)
        finally:
            shutil.rmtree(stage, ignore_errors=True)  # gone once committed
        seeds = sorted({seed for _, _, seed in study.runs(seeds)})
        left_out, other = _seeds_left_out(study, out, seeds, overrides)
        if left_out:  # a rerun with fewer --seeds: the tables cover those asked for, not the rest
            said = []
            same = [s for s in left_out if s not in other]
            if same:
                every = " ".join(map(str, sorted({*seeds, *same})))
                said.append(f"the runs of seeds {same} in {out!r} are kept but left out "
                            f"(--seeds {every} takes them in)")
            if other:  # --seeds with them would be refused at their runs: not "takes them in"
                run, diff = other[min(other)]
                said.append(f"the runs of seeds {sorted(other)} in {out!r} are kept but left out: "
                            f"they were trained with other options (the run's, these: {run!r} "
                            f"{diff}), so --seeds takes them in only with theirs")
            say(f"[{study.name}] the tables cover seeds {seeds}; " + "; ".join(said))
        return summaries[0]


def _seeds_left_out(study: Study, out: str, seeds: Sequence[int],
                    overrides: Optional[Dict] = None) -> Tuple[List[int], Dict]:
    """Seeds other than ``seeds`` that a setting of ``study`` in ``out`` has a run folder of,
    and ``{seed: (run, differences)}`` of those with a trained run (an epoch or more) that is
    not the run the study trains now with ``overrides`` (another --epochs, ...)."""
    from .trainer import RECIPE, trained_recipe
    found, other = set(), {}
    for label, recipe_name in study.settings:
        for run in sorted(Path(_run_dir(out, label, 0)).parent.glob("seed*")):
            seed = run.name[len("seed"):]
            if not ((run / RECIPE).is_file() and seed.lstrip("-").isdigit()):
                continue
            seed = int(seed)
            found.add(seed)
            if seed in seeds or seed in other:
                continue
            try:
                stored = trained_recipe(run)
                if stored is None:
                    continue
                diff = stored.differences(get_recipe(recipe_name, **{**(overrides or {}), "seed": seed}))
            except ValueError as err:  # a recipe.json this version cannot read, a bad seed
                diff = str(err)
            if diff:
                other[seed] = (str(run), diff)
    return sorted(found - set(seeds)), other

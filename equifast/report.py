"""Reports: the per-point and per-part tables of a measurement, saved and drawn.

``report.points`` has one row per (point, transform, metric) with the columns of SPEC
section 4 (``point, part, transform, family, channel, layer, undefined_fraction, n_images``)
and more (``metric``, ``offdiagonal_fraction``, ``mean_activation``, ``shape``, ...).
``report.parts`` follows the aggregation order of SPEC section 1: per point, the plain mean
over the transforms of a family; per part, the plain mean over its points. ``report.shifts``
keeps each translation apart: per part and shift, the plain mean over the part's points (the
thesis' figure 8).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ._io import (atomic_write, commit_staged, json_safe, make_parent, stage_folder,
                  write_text_atomic)
from .transforms import shift_family

# pandas 2's default CSV parser can be an ulp off the float64 that was written; pandas 3 reads
# it exactly by default (and deprecates the argument).
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}

__all__ = ["Report", "PARTS", "part_table", "shift_table", "over_runs", "combine_runs",
           "metric_bias", "rows_of_metric"]

PARTS = ("early", "middle", "late", "pool", "final")
SCORES = ["channel", "layer", "undefined_fraction"]
# the columns that name a row: text, never missing (a CSV reads "NA", "None" or "" as missing)
_NAMES = ["point", "part", "transform", "family", "metric", "shape"]
_REQUIRED = ["point", "part", "transform", "family"] + SCORES
_NUMBERS = ["n_images", "order", "mean_activation", "mean_magnitude", "layer_undefined_fraction",
            "offdiagonal_fraction"]


def _numbers(df: pd.DataFrame, column: str) -> np.ndarray:
    """``df[column]`` as floats (missing: NaN); a value that is no number is named with its
    column (numpy's "could not convert string to float: 'x'" named neither). A blank text cell
    is missing, as the empty cell of a CSV reads (it was refused, told to be left empty)."""
    values = df[column]
    if not pd.api.types.is_numeric_dtype(values):  # object, or pandas' str
        values = values.map(lambda v: np.nan if isinstance(v, str) and not v.strip() else v)
    try:
        return values.to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError):
        bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        raise ValueError(f"Expected the column {column!r} to hold numbers, but it holds "
                         f"{bad.iloc[0]!r} (row {bad.index[0]!r}); write it as a number, or "
                         "leave it empty where undefined.") from None


def _with_numbers(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``table`` with ``columns`` as floats where a hand-made table holds them as text
    (pandas' mean of them failed with "agg function failed [how->mean,dtype->object]")."""
    text = [c for c in columns if not pd.api.types.is_numeric_dtype(table[c])]
    return table.assign(**{c: _numbers(table, c) for c in text}) if text else table


def _over_points(rows: pd.DataFrame, keys: List[str]) -> pd.DataFrame:
    """The plain means of the scores over the points of each group of ``keys``."""
    return (rows.groupby(keys, sort=False, observed=True, dropna=False)
            .agg(channel=("channel", "mean"), layer=("layer", "mean"),
                 undefined_fraction=("undefined_fraction", "mean"), n_points=("point", "nunique"))
            .reset_index())


def part_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per (part, family[, metric]) scores from a points table (SPEC aggregation order).

    A (point, transform) with no defined entry at all has no score (NaN): the family and part
    means skip it, as they skip undefined entries, and ``undefined_fraction`` (its mean, with
    that point's 1.0 in it) shows it."""
    keys = ["metric"] if "metric" in points.columns else []
    points = _with_numbers(points, SCORES)
    # observed: pandas 2 grouped categorical columns (a points table read from Parquet) by every
    # category, as a row of NaN for each point in every part: a part with no points, every part
    # counting every point
    per_point = (points.groupby(["point", "part", "family"] + keys, sort=False, observed=True)[SCORES]
                 .mean().reset_index())
    parts = _over_points(per_point, ["part", "family"] + keys)
    parts["part"] = pd.Categorical(parts["part"], categories=PARTS, ordered=True)
    return parts.sort_values(keys + ["family", "part"]).reset_index(drop=True)


_SHIFT = re.compile(r"^translation\((-?\d+),(-?\d+)")  # Translation.name: translation(dy,dx[,...])


def _names(by) -> List[str]:
    """``by`` (``None``, one column name or several) as a list: "seed" is one column, not four
    letters (a ``KeyError: 's'``)."""
    return [] if by is None else [by] if isinstance(by, str) else list(by)


def shift_table(points: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per (part, translation[, metric]) scores from a points table: at each shift, the plain
    mean over the part's points (thesis figure 8, where maps smaller than the input lose their
    equivariance at shifts their scale cannot follow).

    One row per part, translation family and shift, with the shift's ``dy`` and ``dx``, in the
    order the shifts were measured; other transforms are left out. Averaged over a family's
    shifts (where every point is defined at every shift) these are the family's scores in
    :func:`part_table`, whose order of means (points first) SPEC section 1 fixes. ``by``: more
    columns whose values are kept apart (the models and seeds of a sweep's points), first; one
    name or a list."""
    by = _names(by)
    missing = [c for c in by if c not in points.columns]
    if missing:  # a bare KeyError from pandas otherwise
        raise ValueError(f"Expected each name in `by` to be a column of the points table, but "
                         f"{', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not (its columns: "
                         f"{', '.join(map(str, points.columns))}).")
    columns = by + ["part", "family", "transform", "dy", "dx"]
    keys = ["metric"] if "metric" in points.columns else []
    shift = points["transform"].astype(str).str.extract(_SHIFT) if len(points) else None
    if shift is None or shift[0].isna().all():
        empty = pd.DataFrame(columns=columns + keys + SCORES + ["n_points"])
        return empty.astype({"dy": int, "dx": int, "part": pd.CategoricalDtype(PARTS, ordered=True),
                             **dict.fromkeys(SCORES, float), "n_points": int})
    rows = _with_numbers(points.assign(dy=shift[0], dx=shift[1])[shift[0].notna()], SCORES)
    rows = rows.astype({"dy": int, "dx": int, "part": str, "family": str, "transform": str})
    table = _over_points(rows, columns + keys)
    table["part"] = pd.Categorical(table["part"], categories=PARTS, ordered=True)
    return table.sort_values(by + keys + ["family", "part"], kind="stable").reset_index(drop=True)


def _saved_as(path: Path) -> str:
    """What to give :meth:`Report.load` instead of ``path``, where it can tell (for an error)."""
    stem = path.name[:-len(path.suffix)] if path.suffix else path.name
    for table in (".points", ".parts", ".meta"):
        if stem.endswith(table) and len(stem) > len(table):  # one of the set save wrote
            base = stem[:-len(table)]
            given = (f"'{base}.parquet' or '{base}.csv'" if table == ".meta"
                     else repr(base + path.suffix))
            return (f"; {path.name!r} is one of the files Report.save writes: give the path "
                    f"it was given ({given})")
    return ""


def _saved_beside(path: Path) -> str:
    """``"; did you mean ..."`` for a report saved at ``path`` with a suffix (``runs/r18`` for
    ``runs/r18.parquet``), ``""`` for none."""
    from ._hints import did_you_mean

    saved = [str(path.with_name(path.name + suffix)) for suffix, table in (
        (".json", ""), (".parquet", ".points"), (".csv", ".points"))
        if path.with_name(f"{path.name}{table}{suffix}").is_file()]
    return did_you_mean(path, saved)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Expected a report saved by Report.save in {str(path)!r}, but it is "
                         f"not valid JSON ({err}).") from None


def _read_table(path: Path) -> pd.DataFrame:
    """A points table as :meth:`Report.save` wrote it (CSV or Parquet), read back exactly."""
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        with open(path, "rb") as fh:  # to_csv ends every row with a line break
            fh.seek(0, 2)
            if fh.tell() and (fh.seek(-1, 2), fh.read(1))[1] != b"\n":
                raise ValueError("its last row does not end with a line break: a truncated file?")
        names = [c for c in _NAMES if c in pd.read_csv(path, nrows=0).columns]
        table = pd.read_csv(path, dtype=dict.fromkeys(names, str), **_EXACT_FLOATS)
        # names as written: a point named "NA", "None" or "" is no missing value
        if names:
            table[names] = pd.read_csv(path, usecols=names, dtype=str, keep_default_na=False)
        return table
    except (ValueError, OSError) as err:  # pandas' and pyarrow's parse errors are ValueErrors
        raise ValueError(f"Expected a points table saved by Report.save in {str(path)!r}, but it "
                         f"cannot be read ({type(err).__name__}: {err}).") from err


def _written_by(meta: dict) -> str:
    """Which equifast wrote a report, where another than this one did (for an error)."""
    from . import __version__

    versions = meta.get("versions") if isinstance(meta, dict) else None
    theirs = versions.get("equifast") if isinstance(versions, dict) else None
    if theirs is None or theirs == __version__:
        return ""
    return f"; it was written by equifast {theirs}, this is {__version__}"


def _checked_meta(meta, path: Path) -> dict:
    """A report's meta as read from ``path``: a dict (none is an empty one)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f"Expected a report saved by Report.save in {str(path)!r}, but its meta "
                         f"is a {type(meta).__name__}, not a dict ({{key: value}}).")
    return meta


def _points_problem(points: pd.DataFrame) -> Optional[str]:
    """What keeps ``points`` from being a points table :class:`Report` can use (``None``:
    nothing): a missing column (a ``KeyError`` in the part table), a score that is no number,
    or a part of another name (silently left out of the parts, as a part NaN)."""
    missing = [c for c in _REQUIRED if c not in points.columns]
    if missing:
        return f"its points table lacks the column(s) {', '.join(map(repr, missing))}"
    # the other numbers measure writes too: "six" images, or true read as a score of 1.0
    numbers = SCORES + [c for c in _NUMBERS if c in points.columns]
    for col in numbers:
        values = points[col]
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if values.dtype == object or values.dtype == bool:
            bad = bad | values.map(lambda v: isinstance(v, (bool, np.bool_)))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            return f"its column {col!r} holds {points[col].iloc[i]!r} (row {i}), not a number"
    unknown = sorted(set(points["part"].astype(str)) - set(PARTS))
    if unknown:
        return f"it names part(s) {', '.join(map(repr, unknown))}; the parts are {', '.join(PARTS)}"
    # a point is in one part, a transform of one family: one renamed in some of its rows only
    # was averaged into two parts (families), a share of it in each, without a word
    for name, group, groups in (("point", "part", "parts"), ("transform", "family", "families")):
        both = points.groupby(points[name].astype(str), sort=False)[group].nunique()
        if both.gt(1).any():
            which = both.index[both.gt(1).to_numpy()][0]
            them = list(dict.fromkeys(points.loc[points[name].astype(str) == which, group]))
            return (f"its {name} {which!r} is in the {groups} {', '.join(map(repr, them))} in "
                    f"different rows (renamed in some rows only?)")
    repeated = points.duplicated(_row_keys(points)).to_numpy()
    if repeated.any():  # counted twice in every mean over it
        i = int(np.flatnonzero(repeated)[0])
        return (f"its row {i} repeats point {points['point'].iloc[i]!r} under "
                f"{_pair(points.iloc[i])} (tables joined or edited by hand?)")
    return None


def _lasting(meta: dict) -> dict:
    """``meta`` without what changes from one run of a measurement to the next (its timings)."""
    return {k: v for k, v in meta.items() if k not in ("seconds", "images_per_second")}


def _row_keys(points: pd.DataFrame) -> List[str]:
    """The columns that name one row of a points table."""
    return ["point", "transform"] + (["metric"] if "metric" in points.columns else [])


def _pair(row: pd.Series) -> str:
    """A row's transform (and metric), as an error names them."""
    return repr(row["transform"]) + (f" ({row['metric']})" if "metric" in row.index else "")


def _grid_problem(points: pd.DataFrame) -> Optional[str]:
    """What a saved points table lacks of the grid ``measure`` writes (every point under every
    transform and metric), ``None`` for nothing: a file cut at a line break, or rows deleted by
    hand, left a point out of its family's mean without a word."""
    keys = _row_keys(points)
    names = points["point"].astype(str)
    every = list(dict.fromkeys(names))
    for _, rows in points.groupby(keys[1:], sort=False, observed=True):  # as part_table
        have = set(rows["point"].astype(str))
        if len(have) < len(every):
            lacking = [p for p in every if p not in have]
            return (f"point(s) {', '.join(map(repr, lacking[:3]))}{' ...' if len(lacking) > 3 else ''} "
                    f"have no row under {_pair(rows.iloc[0])}, "
                    f"which the other points have")
    return None


def _checked_points(points: pd.DataFrame, meta: dict, path: Path) -> pd.DataFrame:
    """``points`` as read from ``path``, checked to be a points table :class:`Report` can use:
    a hand-edited, truncated or foreign file is an error naming what is wrong."""
    where = f"Expected a report saved by Report.save in {str(path)!r}, but"
    if not len(points):
        if meta.get("transforms"):  # measure writes a row per point and transform
            raise ValueError(f"{where} its points table has no rows while its meta names the "
                             f"transforms measured (a file cut after its header?){_written_by(meta)}.")
        return points
    problem = _points_problem(points)
    if problem:
        raise ValueError(f"{where} {problem}{_written_by(meta)}.")
    for col in SCORES:
        points[col] = pd.to_numeric(points[col]).astype(float)
    problem = _incomplete(points)
    if problem:
        raise ValueError(f"{where} {problem} (a truncated or hand-edited file?){_written_by(meta)}.")
    problem = _unnamed_in_meta(points, meta) or _images_unlike_meta(points, meta)
    if problem:
        raise ValueError(f"{where} {problem}: are the points and the meta of two reports mixed (a "
                         f"points file copied from another run)? Keep the files of one report "
                         f"together.")
    return points


def _unnamed_in_meta(points: pd.DataFrame, meta: dict) -> Optional[str]:
    """The transforms or metrics of ``points`` that ``meta`` (``measure``'s ``transforms`` and
    ``metrics``) does not name, ``None`` for none: another run's points beside this meta would
    load as its model, images and accuracy. Fewer than it names are kept points (one metric's
    rows of a report, saved apart)."""
    for column, key in (("transform", "transforms"), ("metric", "metrics")):
        named = meta.get(key)
        if column not in points.columns or not isinstance(named, list):
            continue
        extra = [n for n in dict.fromkeys(points[column].astype(str)) if n not in set(map(str, named))]
        if extra:
            return (f"its points hold {key} {extra[:3]}{' ...' if len(extra) > 3 else ''} that its "
                    f"meta does not name (it names {named[:3]}{' ...' if len(named) > 3 else ''})")
    return None


def _images_unlike_meta(points: pd.DataFrame, meta: dict) -> Optional[str]:
    """Where ``meta`` (``measure``'s ``n_images``) counts other images than the rows of
    ``points`` (every row of a measurement counts all of them), what differs; ``None`` for
    nothing. Another run's points of the transforms the meta names, beside it, loaded as its
    model and accuracy."""
    named = meta.get("n_images")
    if "n_images" not in points.columns or not isinstance(named, (int, float)) or isinstance(named, bool):
        return None
    counts = pd.to_numeric(points["n_images"])
    if counts.eq(named).all():
        return None
    other = sorted(set(counts[counts.ne(named)].tolist()))
    return (f"its points were measured on {', '.join(map(str, other[:3]))} images, where its "
            f"meta says {named} (n_images)")


def _incomplete(points: pd.DataFrame) -> Optional[str]:
    """What a points table lacks of what ``measure`` writes (``None``: nothing): a value every
    row has, or a row the grid of points, transforms and metrics has (see :func:`_grid_problem`);
    what a file cut short would lack."""
    # the undefined fraction too: NaN only for no entries at all
    for col in [c for c in _NAMES + ["undefined_fraction", "n_images"]
                if c in points.columns and c != "shape"]:
        gone = points[col].isna().to_numpy()
        if col in ("transform", "family", "metric"):  # a name, never empty ("" can be a point)
            gone = gone | (points[col].astype(str) == "").to_numpy()
        if gone.any():
            return f"row {int(np.flatnonzero(gone)[0])} has no {col!r}"
    return _grid_problem(points)


def _shift_families(points: pd.DataFrame) -> pd.DataFrame:
    """Points saved before zero-filled and nearest-rounded shifts had families of their own
    (``translation-zero``, ...) labelled them ``translation``: relabelled from their transform
    names (``translation(1,1,zero)``), so that old and new reports agree."""
    if not {"family", "transform"} <= set(points.columns):
        return points
    old = points["family"].astype(str) == "translation"
    names = points.loc[old, "transform"].astype(str)
    if not names.str.contains(",zero|,nearest").any():
        return points
    points = points.copy()
    if isinstance(points["family"].dtype, pd.CategoricalDtype):
        points["family"] = points["family"].astype(str)
    points.loc[old, "family"] = names.map(lambda n: shift_family(
        "zero" if ",zero" in n else "circular", "nearest" if ",nearest" in n else "down"))
    return points


def rows_of_metric(table: pd.DataFrame, metric: Optional[str] = None) -> pd.DataFrame:
    """The rows of ``table`` (a points or parts table) of one metric: ``metric``, else
    correlation when several were measured. A metric that was not measured is an error (its
    table or figure would be empty)."""
    if "metric" not in table.columns:
        return table
    measured = list(dict.fromkeys(table["metric"]))
    if metric is None:
        metric = "correlation" if len(measured) > 1 else None
    elif metric not in measured:
        raise ValueError(f"Expected `metric` to be one of those the report measured "
                         f"({', '.join(measured)}), but got {metric!r}.")
    return table if metric is None else table[table["metric"] == metric]


def metric_bias(points: pd.DataFrame,
                parts: Optional[Sequence[str]] = ("early", "middle", "late")) -> Dict[str, object]:
    """The metric-bias analysis of thesis section 4.1.1 (Fig. 5b).

    Needs a points table measured with both metrics. Returns ``{"table": per point and
    family: mean activation and mean magnitude, cosine and correlation channel scores;
    "correlation": Pearson correlation, across the points of ``parts``, of the mean activation
    and of the mean magnitude (the thesis' "magnitude of the activations"; the two are equal
    after a ReLU; NaN for a report saved before the magnitude was kept) with each metric's
    score}``. The correlation is across the maps before global pooling, the points of the
    early, middle and late parts: ``pool`` and ``final`` (invariance scores near 1, logits with
    any mean) are in the table but not in the correlation unless ``parts=None`` (all points).
    A correlation is NaN with fewer than three defined points, or where the scores or the
    statistic vary by no more than ``TOLERANCE`` of their size (scores all 1 under the identity).
    Those parts hold a ResNet's stem too, where the thesis correlates "after each residual
    block" (21 points of ResNet-44, not 22): for its set, leave the stem's rows out,
    ``metric_bias(points[points.point != "stem"])``.
    """
    if not {"cosine", "correlation"} <= set(points.get("metric", pd.Series(dtype=str)).unique()):
        raise ValueError("Expected a report measured with metric=['correlation', 'cosine'] "
                         "(CLI: --metric correlation,cosine), but it lacks one of them.")
    if parts is not None:  # "early" was read letter by letter; an unknown part: NaN, silently
        parts = [parts] if isinstance(parts, str) else list(parts)
        unknown = [p for p in parts if p not in PARTS]
        if not parts or unknown:
            raise ValueError(f"Expected `parts` to be some of {', '.join(PARTS)} (or None: all "
                             f"points), but got {parts!r}.")
    if "mean_activation" not in points or "order" not in points:  # pandas' KeyError 'order'
        raise ValueError("Expected a points table with the activations' statistics "
                         "(mean_activation) and the points' order, as equifast.measure writes, "
                         f"but it has no {'mean_activation' if 'mean_activation' not in points else 'order'}.")
    # a point whose scores are all undefined keeps its row (NaN) beside its activations
    table = (points.groupby(["order", "point", "part", "family", "metric"], sort=False,
                            observed=True)["channel"].mean().unstack("metric").reset_index())
    stats = ["mean_activation", "mean_magnitude"]
    points = points if "mean_magnitude" in points else points.assign(mean_magnitude=float("nan"))
    for i, c in enumerate(stats):
        table.insert(4 + i, c, table["point"].map(points.groupby("point", sort=False, observed=True)[c].first()))
    table = table.sort_values(["family", "order"]).drop(columns="order").reset_index(drop=True)
    table.columns.name = None
    rows = []
    for fam, g in table.groupby("family", sort=False, observed=True):  # as part_table
        if parts is not None:
            g = g[g["part"].astype(str).isin(list(parts))]
        for m in ("cosine", "correlation"):
            row = {"family": fam, "metric": m}
            for c in stats:
                ok = g[[m, c]].dropna()
                row[f"correlation_with_{c}"] = (_pearson(ok[m], ok[c])
                                                if len(ok) > 2 else float("nan"))
            rows.append(row)
    return {"table": table, "correlation": pd.DataFrame(rows)}


def _pearson(a: pd.Series, b: pd.Series) -> float:
    """Pearson correlation of two columns under the one rule of the scores
    (:func:`equifast.reference.similarity_matrix`, ``TOLERANCE``): NaN where either column
    varies by no more than ``TOLERANCE`` of its size. Scores that are all 1 up to float32
    rounding (``--transforms identity``, a perfectly equivariant model) have nothing to
    correlate; ``np.corrcoef`` correlated their rounding noise (0.70 for ResNet-18's)."""
    import torch

    from .reference import similarity_matrix

    rows = [torch.tensor(col.to_numpy(dtype=float), dtype=torch.float64)[None] for col in (a, b)]
    return float(similarity_matrix(*rows, metric="correlation")[0, 0])


def check_one_row_per_run(df: pd.DataFrame, keys: Sequence[str], run: str = "run") -> None:
    """Raise ``ValueError`` where rows of ``df`` repeat their ``keys`` and ``run`` (a table
    joined twice, or without the column that tells its rows apart): each would count as a run
    of its own, or as another point of one run."""
    keys = list(keys)
    repeated = df.duplicated(keys + [run], keep=False).to_numpy()
    if repeated.any():
        # as Python values: a seed np.int64(0) otherwise
        row = df.iloc[[int(np.flatnonzero(repeated)[0])]][keys + [run]].to_dict("records")[0]
        which = ", ".join(f"{k} {v!r}" for k, v in row.items())
        raise ValueError(f"Expected one row per {run} of each {', '.join(keys)}, but "
                         f"{int(repeated.sum())} rows repeat theirs (the first: {which}): "
                         f"a table joined twice, or one lacking the column that tells its "
                         f"rows apart?")


def over_runs(df: pd.DataFrame, keys: Sequence[str], values: Sequence[str], run: str = "run",
              count: str = "runs", one_row_per_run: bool = False) -> pd.DataFrame:
    """SPEC aggregation step 4: mean and standard deviation over repeated runs (seeds).

    One row per ``keys`` (in order of appearance) with ``<v>`` (mean) and ``<v>_std`` (the
    sample standard deviation, ddof 1: NaN for one run) for each of ``values``, and ``count``:
    the number of distinct ``run`` values. A value undefined (NaN) in one run is undefined in
    the mean and std: a mean over fewer runs would read as one over all of them. Studies,
    sweeps and :func:`combine_runs` all aggregate seeds here.
    The mean and std do not depend on the order of the rows (runs given in another order,
    records read in another order): each group's values are taken in sorted order, so they
    are the same to the last bit: those of ``np.mean`` / ``np.std(ddof=1)`` of the sorted values.
    ``one_row_per_run``: raise ``ValueError`` where a group has several rows of one run (a table
    joined twice, or without the column that tells them apart): each would count in the mean
    and std as a run of its own, while ``count`` says one.
    """
    keys = list(keys)
    if one_row_per_run:
        check_one_row_per_run(df, keys, run)
    g = df.groupby(keys, sort=False, observed=True, dropna=False)
    group = g.ngroup().to_numpy()  # numbered in order of appearance (sort=False)
    firsts = np.unique(group, return_index=True)[1]
    out = df[keys].iloc[firsts].reset_index(drop=True)
    sizes = np.bincount(group, minlength=len(firsts))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    for v in values:
        x = _numbers(df, v)
        x = x[np.lexsort((x, group))]  # each group's rows together, its values sorted, NaN last
        mean, std = np.full(len(sizes), np.nan), np.full(len(sizes), np.nan)
        # a matrix of the groups of each size: numpy reduces each row as it would the values
        # alone (a Python call per group took minutes over a large sweep's shift tables)
        for n in np.unique(sizes):
            ids = np.flatnonzero(sizes == n)
            block = x[starts[ids, None] + np.arange(n)]
            mean[ids] = block.mean(axis=1)
            if n > 1:
                with np.errstate(invalid="ignore"):  # infinite values: NaN, as pandas gives
                    std[ids] = block.std(axis=1, ddof=1)
        out[v], out[f"{v}_std"] = mean, std
    out[count] = g[run].nunique().to_numpy()
    return out


def combine_runs(reports: Sequence["Report"], by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and standard deviation over runs (seeds) of each part's scores.

    Every run of a group is taken (:func:`over_runs`): a part undefined in one run, or missing
    from it (none of its points), is undefined over the runs.

    Raises ``ValueError`` when runs of one group measured other transforms (a family's mean
    over other transforms is another number, not another seed) or other points: points of its
    own, lacking some of the others' (another model's), the same points on maps of other
    sizes (images of another size: its shifts are scaled otherwise), or with another
    ``vector_mode`` or ``eps`` in their meta (other scores of the same points).

    Args:
        reports: reports of repeated runs; ``report.meta`` keys named in ``by`` (e.g. the
            setting of a study; one name or a list) group them.
    """
    # "seed" is one key, not four letters; None no key ("'NoneType' object is not iterable")
    by = _names(by)
    # one report failed as "'Report' object is not iterable"; a dict's runs were its labels
    if isinstance(reports, (Report, Mapping)):
        raise TypeError(f"Expected `reports` to be a list of Reports (one per run), but got a "
                        f"{type(reports).__name__}; pass "
                        f"{'[report]' if isinstance(reports, Report) else 'list(reports.values())'}.")
    reports = list(reports)
    if not reports:  # pandas' "No objects to concatenate"
        raise ValueError("Expected at least one report to combine, but got none.")
    for i, r in enumerate(reports):
        if not isinstance(r, Report):
            raise TypeError(f"Expected `reports` to be equifast Reports (what measure returns, or "
                            f"Report.load reads), but run {i} is a {type(r).__name__}.")
    for k in by:
        if all(k not in r.meta for r in reports):  # a typo grouped every run as one setting
            keys = sorted(set().union(*(r.meta for r in reports)))
            raise ValueError(f"Expected each name in `by` to be a key of the reports' meta, but "
                             f"{k!r} is in none of them (their keys: {', '.join(keys)}).")
    frames, measured, point_sets, size_sets, measured_settings = [], {}, {}, {}, {}
    for i, r in enumerate(reports):
        # a family's mean over other transforms is another number: not a seed of the same run
        group = tuple(r.meta.get(k) for k in by)
        try:
            hash(group)
        except TypeError:
            raise ValueError(f"Expected meta values that group runs (numbers, strings) for `by`, "
                             f"but run {i}'s {[k for k, v in zip(by, group) if v.__hash__ is None]} "
                             f"{'is' if len(by) == 1 else 'are'} a list or dict.") from None
        names = set(r.points["transform"]) if len(r.points) else set()
        metrics = set(r.points["metric"]) if len(r.points) and "metric" in r.points else None
        first, first_names, first_metrics = measured.setdefault(group, (i, names, metrics))
        if names != first_names:
            differ = [f"{what} {sorted(them)}" for what, them in
                      (("lacks", first_names - names), ("has", names - first_names)) if them]
            raise ValueError(f"Expected the runs combined{' per ' + ', '.join(by) if by else ''} "
                             f"to have measured the same transforms, but run {i} "
                             f"{' and '.join(differ)} beside run {first}.")
        if None not in (metrics, first_metrics) and metrics != first_metrics:
            # each run's scores of a metric the other lacks were all NaN, over "2 runs"
            raise ValueError(f"Expected the runs combined{' per ' + ', '.join(by) if by else ''} "
                             f"to have measured the same metrics, but run {i} measured "
                             f"{sorted(metrics)} and run {first} {sorted(first_metrics)}; keep the "
                             f"metric they share (Report(r.points[r.points.metric == m], r.meta)) "
                             f"or measure every run with the same metrics.")
        # the same scores of another measure: a vector's invariance per image and its
        # correlation across images, or entries left undefined by another eps, were averaged as
        # two seeds of one run (where both metas say: reports of Report.from_rows may not)
        settings = {k: r.meta[k] for k in ("vector_mode", "eps") if k in r.meta}
        first_settings = measured_settings.setdefault(group, (i, settings))[1]
        other = [f"{k} {settings[k]!r} where run {measured_settings[group][0]}'s is "
                 f"{first_settings[k]!r}" for k in settings
                 if k in first_settings and settings[k] != first_settings[k]]
        if other:
            raise ValueError(f"Expected the runs combined{' per ' + ', '.join(by) if by else ''} "
                             f"to have measured with the same settings, but run {i} has "
                             f"{' and '.join(other)}; group the runs by it (by=[...]), or combine "
                             f"each alone.")
        shapes = (dict(zip(r.points["point"].astype(str), r.points["shape"].astype(str)))
                  if "shape" in r.points else dict.fromkeys(r.points["point"].astype(str)))
        points = set(shapes)
        first_points = point_sets.setdefault(group, points)
        # each point's map shape and the run that first recorded one: a table without shapes
        # (SPEC's columns; an older report's) tells no size
        sizes = size_sets.setdefault(group, {})
        resized = [(p, shape, *sizes[p]) for p, shape in shapes.items()
                   if shape is not None and p in sizes and sizes[p][0] != shape]
        if resized:  # the same points on maps of other sizes: shifts scaled otherwise, no seed
            p, shape, was, run = resized[0]
            raise ValueError(f"Expected the runs combined{' per ' + ', '.join(by) if by else ''} "
                             f"to have measured maps of one size, but run {i}'s point {p!r} is "
                             f"{shape} where run {run}'s is {was} (images of another size, or "
                             f"another width); group the runs by a meta key that tells them "
                             f"apart (by=[...]), or combine each size alone.")
        for p, shape in shapes.items():
            if shape is not None:
                sizes.setdefault(p, (shape, i))
        # points of its own and lacking some: another model's (a run without a part's points is
        # one whose part is undefined, as documented)
        if names and points - first_points and first_points - points:
            raise ValueError(f"Expected the runs combined{' per ' + ', '.join(by) if by else ''} "
                             f"to be of one model (the same points), but run {i} has "
                             f"{sorted(points - first_points)[:3]} and lacks "
                             f"{sorted(first_points - points)[:3]} beside run {first}; group the "
                             f"runs by their model (by=[..., 'model']), or combine each model's "
                             f"alone.")
        df = r.parts.copy()
        df["run"] = i
        for k in by:
            df[k] = r.meta.get(k)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    keys = list(by) + ["part", "family"] + (["metric"] if "metric" in df else [])
    # a part one run of its group lacks (no point of it) is undefined in that run (NaN), as one
    # whose points are all undefined: a mean over the other runs would read as one over all
    runs = df[list(by) + ["run"]].drop_duplicates()
    rows = df[keys].drop_duplicates()
    every = runs.merge(rows, on=list(by)) if by else runs.merge(rows, how="cross")
    if len(every) > len(df):
        df = every.merge(df, on=keys + ["run"], how="left")
    return over_runs(df, keys, ["channel", "layer", "undefined_fraction"])


def _check_points_frame(points) -> None:
    """Raise unless ``points`` is a points table a :class:`Report` can be made of."""
    if not isinstance(points, pd.DataFrame):
        raise TypeError(f"Expected `points` to be a pandas DataFrame (as report.points), but got "
                        f"a {type(points).__name__}; make a report of rows (dicts) with "
                        "Report.from_rows(rows).")
    problem = _points_problem(points) if len(points) else None
    if problem:
        raise ValueError(f"Expected `points` to be a table as report.points is, but "
                         f"{problem}.")


class Report:
    """What :func:`equifast.measure` returns: ``points`` and ``parts`` tables and ``meta``."""

    def __init__(self, points: pd.DataFrame, meta: Optional[dict] = None):
        _check_points_frame(points)
        self.points = points
        try:
            self.meta = dict(meta or {})
        except (TypeError, ValueError):  # dict("resnet18"): "dictionary update sequence element #0 ..."
            raise TypeError(f"Expected `meta` to be a dict (as report.meta), but got a "
                            f"{type(meta).__name__}; e.g. {{'model': 'resnet18'}}.") from None
        self.parts = part_table(points) if len(points) else pd.DataFrame(
            columns=["part", "family", "channel", "layer", "undefined_fraction", "n_points"])

    @classmethod
    def from_rows(cls, rows: List[dict], meta: Optional[dict] = None) -> "Report":
        """A report from points rows (dicts with the columns of ``points``)."""
        return cls(pd.DataFrame(rows), meta)

    @property
    def accuracy(self) -> Optional[float]:
        """Top-1 accuracy on the measured images, when labels were given."""
        return self.meta.get("accuracy")

    @property
    def shifts(self) -> pd.DataFrame:
        """Each part's scores at each shift of the translations measured (:func:`shift_table`)."""
        return shift_table(self.points)

    def metric_bias(self, parts: Optional[Sequence[str]] = ("early", "middle", "late")) -> Dict[str, object]:
        """See :func:`metric_bias`."""
        return metric_bias(self.points, parts)

    def summary(self, metric: Optional[str] = None) -> pd.DataFrame:
        """The per-part table as the CLI prints it: parts as rows, (family, score) columns with
        each family's ``undefined`` fraction beside its scores; ``metric`` picks one when several
        were measured (default: correlation, as the plots)."""
        parts = rows_of_metric(self.parts, metric).rename(columns={"undefined_fraction": "undefined"})
        # every part, an undefined one too (NaN), and the undefined fraction beside the scores
        wide = parts.pivot_table(index="part", columns="family",
                                 values=["channel", "layer", "undefined"], observed=True,
                                 sort=False, dropna=False)
        return wide.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0, sort_remaining=False)

    # ---- files ---------------------------------------------------------------------------
    def save(self, path) -> List[Path]:
        """Save to ``.json`` (one file), ``.csv`` or ``.parquet`` (``<stem>.points``/
        ``<stem>.parts`` plus ``<stem>.meta.json``). Returns the files written. The meta is
        written as plain JSON: NaN and infinities in it come back from :meth:`load` as ``None``.
        ``.csv`` and ``.parquet`` of one stem share the meta file: where the other format holds
        a report of other meta, saving is a ``FileExistsError``."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".csv", ".parquet"):  # before its folder is made
            raise ValueError(f"Expected a .json, .csv or .parquet path, but got {str(path)!r}.")
        problem = _incomplete(self.points) if len(self.points) else None
        if problem:  # else saved, and refused by load as a truncated file
            raise ValueError(f"Expected every point under every transform and metric, each row "
                             f"whole, as Report.load needs to tell a whole file from a truncated "
                             f"one, but {problem}; keep the rows and their names, counts and "
                             f"undefined fractions (an undefined score is NaN), or save the table "
                             f"itself with pandas.")
        problem = _unnamed_in_meta(self.points, self.meta) if len(self.points) else None
        if problem:  # else saved, and refused by load as points beside another report's meta
            raise ValueError(f"Expected the meta to name every transform and metric of the points, "
                             f"as Report.load needs to tell them from another report's, but "
                             f"{problem}; add them to meta['transforms'] and meta['metrics'].")
        problem = _images_unlike_meta(self.points, self.meta) if len(self.points) else None
        if problem:  # else saved, and refused by load as points beside another report's meta
            raise ValueError(f"Expected the meta to count the images of the points, as Report.load "
                             f"needs to tell them from another report's, but {problem}; set "
                             f"meta['n_images'] to the points' count.")
        stem = path.with_suffix("")
        targets = ([path] if suffix == ".json" else
                   [stem.with_name(f"{stem.name}.{n}") for n in (f"points{suffix}", f"parts{suffix}",
                                                                 "meta.json")])
        for target in targets:  # else the rename of its temporary file failed, naming that
            if target.is_dir():
                raise IsADirectoryError(f"Expected to write the report to {str(target)!r}, but "
                                        f"that is a folder; give another path (e.g. "
                                        f"{str(target / 'report.json')!r}).")
        if suffix == ".json":
            # records through json.dumps, which writes floats exactly (to_json keeps 10 digits)
            records = self.points.astype(object).where(self.points.notna(), None).to_dict("records")
            doc = {"meta": self.meta, "points": records}
            write_text_atomic(path, json.dumps(json_safe(doc), indent=1, allow_nan=False))
            return [path]
        meta = stem.with_name(f"{stem.name}.meta.json")
        self._check_shared_meta(meta, stem, suffix)
        # a table of no columns is a blank line in a CSV, which no reader takes back
        points = self.points if len(self.points.columns) else pd.DataFrame(columns=_REQUIRED)
        # the three files as one set: an interruption or a full disk between them left this
        # report's points beside the earlier one's parts and meta, the earlier report lost
        make_parent(meta)
        stage = stage_folder(meta.parent)
        try:
            for name, df in (("points", points), ("parts", self.parts)):
                atomic_write(stage / f"{stem.name}.{name}{suffix}",
                             lambda tmp, df=df: (df.to_csv(tmp, index=False) if suffix == ".csv"
                                                 else df.to_parquet(tmp, index=False)))
            write_text_atomic(stage / meta.name, json.dumps(json_safe(self.meta), indent=1, allow_nan=False))
            # checked again as the set is committed: a save of another report in the other
            # format at the same time passed the check above too, and the report committed
            # first then loaded with the meta of the one committed last
            commit_staged(stage, meta.parent, [t.name for t in targets],  # the meta last
                          check=lambda: self._check_shared_meta(meta, stem, suffix))
        except OSError as err:  # named the hidden stage's file, not the one asked for
            if err.filename is None or Path(err.filename).parent != stage or err.errno is None:
                raise
            raise OSError(err.errno, err.strerror, str(meta.parent / Path(err.filename).name)) from err
        finally:  # gone once committed
            shutil.rmtree(stage, ignore_errors=True)
        return targets  # .csv and .parquet share the meta file

    def _check_shared_meta(self, meta: Path, stem: Path, suffix: str) -> None:
        """Raise unless the meta file that ``.csv`` and ``.parquet`` share is free or this
        report's (up to its timings: a rerun of one measurement saved in both formats): another
        report's, saved in the other format, would load with this meta."""
        other = ".parquet" if suffix == ".csv" else ".csv"
        points = stem.with_name(f"{stem.name}.points{other}")
        if not (meta.is_file() and points.is_file()):
            return
        try:
            theirs = json.loads(meta.read_text())
        except (OSError, ValueError):
            theirs = None
        mine = json.loads(json.dumps(json_safe(self.meta), allow_nan=False))
        if not (isinstance(theirs, dict) and _lasting(theirs) == _lasting(mine)):
            raise FileExistsError(
                f"Expected {str(meta)!r}, which {stem.name}{suffix} and {stem.name}{other} share, to "
                f"be free or this report's, but it holds the meta of another report saved as "
                f"{str(points)!r}: saved here, that report would load with this one's meta. Give "
                f"another path, or delete {points.name} first.")

    @classmethod
    def load(cls, path) -> "Report":
        """Load what :meth:`save` wrote (give the same path), or the report of an ``equifast
        measure --out`` folder. An output set of ``equifast measure`` that a killed run had
        committed but not all moved in is completed first. The parts are computed again from
        the points, as :func:`equifast.measure` computes them (the ``.parts`` files are written
        for other tools, and not read). A points file that is no such report (truncated,
        foreign, or edited so that a column, a name, a score that is a number or a known part is
        missing, or a point lacks a row the others have, or a row is repeated, or a point is in
        two parts or a transform of two families, or the meta does not name its transforms or
        metrics or counts other images: the points of another run) is a
        ``ValueError`` saying what is wrong; scores edited to other numbers are read as they
        are."""
        from ._io import finish_commit

        path = Path(path)
        # completed first, a first set too (a folder without its report.json yet)
        finish_commit(path if path.is_dir() else path.parent)
        if path.is_dir():
            if not (path / "report.json").is_file():
                raise FileNotFoundError(
                    f"Expected a saved report at {str(path)!r}, but it is a folder without "
                    "report.json; give the path Report.save was given, or the --out folder of "
                    "equifast measure.")
            path = path / "report.json"  # `equifast measure --out DIR`
        suffix = path.suffix.lower()
        if suffix == ".json":
            if not path.is_file():
                raise FileNotFoundError(f"Expected a saved report at {str(path)!r}, but there is "
                                        f"none{_saved_as(path)}.")
            doc = _read_json(path)
            if not isinstance(doc, dict) or "points" not in doc:
                raise ValueError(f"Expected a report saved by Report.save in {str(path)!r}, but "
                                 f"it has no 'points'{_saved_as(path)}.")
            meta, records = _checked_meta(doc.get("meta"), path), doc["points"]
            if not (isinstance(records, list) and all(isinstance(r, dict) for r in records)):
                raise ValueError(f"Expected a report saved by Report.save in {str(path)!r}, but "
                                 f"its 'points' are not a list of rows ({{column: value}})"
                                 f"{_written_by(meta)}.")
            points = pd.DataFrame(records)
            for col in points.columns:  # a column of NaN only was written as nulls
                if points[col].isna().all() and col not in _NAMES:
                    points[col] = points[col].astype(float)
            return cls(_shift_families(_checked_points(points, meta, path)), meta)
        if suffix not in (".csv", ".parquet"):
            # it asked for 'figure.points.png', or 'runs/r18.points' for a folder not there
            exists = path.exists()
            raise (ValueError if exists else FileNotFoundError)(
                f"Expected a report: the .json, .csv or .parquet path Report.save was given, or "
                f"the --out folder of equifast measure, but {str(path)!r} "
                f"{'is none of them' if exists else 'does not exist'}"
                + (_saved_beside(path) or "."))
        stem = path.with_suffix("")
        points = stem.with_name(f"{stem.name}.points{suffix}")
        if not points.is_file():
            raise FileNotFoundError(f"Expected {str(points)!r} (saved by Report.save), but it is "
                                    f"missing{_saved_as(path)}.")
        meta_path = stem.with_name(f"{stem.name}.meta.json")
        meta = _checked_meta(_read_json(meta_path), meta_path) if meta_path.is_file() else {}
        df = _checked_points(_read_table(points), meta, points)
        return cls(_shift_families(df), meta)

    def plot(self, path=None, label: Optional[str] = None, others: Optional[Dict[str, "Report"]] = None,
             metric: Optional[str] = None):
        """The thesis' figure: channel (left) and layer (right) score per part, one row per
        transform family, one line per report (this one, labelled ``label``, and ``others``).
        Saves to ``path`` when given; returns the matplotlib figure."""
        from .figures import plot_parts

        mine = label or str(self.meta.get("model", "model"))
        frames = {mine: self.parts}
        # a list of reports failed on `.items()`, a part table on `.parts`: named here instead
        if others is not None and not isinstance(others, Mapping):
            raise TypeError(f"Expected `others` to be a dict of label -> Report, but got a "
                            f"{type(others).__name__}; e.g. others={{'resnet50': report}}.")
        for name, rep in (others or {}).items():
            if not isinstance(rep, Report):
                raise TypeError(f"Expected `others` to map labels to Reports, but {name!r} is a "
                                f"{type(rep).__name__}; draw part tables with "
                                f"equifast.figures.plot_parts({{label: table}}).")
            if name == mine:  # this report's line was replaced by the other's
                raise ValueError(f"Expected `others` to be labelled apart from this report "
                                 f"({mine!r}), but one of them is labelled {name!r} too; pass "
                                 f"label= or give it another name.")
            frames[name] = rep.parts
        return plot_parts(frames, path=path, metric=metric)

    def plot_shifts(self, path=None, label: Optional[str] = None, metric: Optional[str] = None):
        """Thesis figure 8: channel (left) and layer (right) score of each part against the size
        of the shift, one row per translation family. Saves to ``path`` when given; returns the
        matplotlib figure."""
        from .figures import plot_shifts

        return plot_shifts({label or str(self.meta.get("model", "model")): self.shifts},
                           path=path, metric=metric)

    def __repr__(self) -> str:
        return f"Report(model={self.meta.get('model')!r}, points={len(self.points)} rows, parts={len(self.parts)} rows)"


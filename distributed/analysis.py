"""Analysis of a sweep: part scores per model, and their rank correlation with accuracy.

Thesis section 4.3: figures 11 and 12 show each model's channel and layer equivariance per
part (early, middle, late, pool, final) for translations and rotations; section 4.3.3 and
figure 13 give, per part and transform family, Spearman's rank correlation between the
part's score and the models' top-1 accuracy. Each model's parts at each shift are drawn as
the thesis' figure 8 draws them for ResNet-44.

    >>> from equifast.distributed import analysis
    >>> scores = analysis.part_scores("runs/sweep")                 # doctest: +SKIP
    >>> analysis.accuracy_correlation(scores)                       # doctest: +SKIP
    >>> analysis.sweep_figures("runs/sweep", "runs/sweep/figures")  # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import pandas as pd

from equifast._io import SYSTEM_FILES, lies_in, write_csv_atomic
from equifast.report import check_one_row_per_run, over_runs, shift_table
from equifast.warning import EquifastWarning, warn

from .store import ResultStore

__all__ = ["part_scores", "shift_scores", "accuracy_correlation", "final_correlation",
           "sweep_figures", "ACCURACY_CHOICES"]

PARTS = ("early", "middle", "late", "pool", "final")
#: Which accuracy a correlation uses: measured on the labels when the data had them, else the
#: model's known accuracy ("auto"); or only one of the two.
ACCURACY_CHOICES = ("auto", "known", "measured")

_KEYS = ["dataset", "metric", "transforms", "family", "model"]
_PART_SCORES = _KEYS + ["part", "channel", "channel_std", "layer", "layer_std", "seeds", "accuracy"]
#: Why every accuracy is NaN, per ``accuracy`` choice, and what to use instead.
_NO_ACCURACY = {
    "measured": "no job has a measured accuracy (the data had no labels, or `labels: false`)",
    "known": "no model has a known accuracy (`accuracy:` in the spec's model entries)",
    "auto": "no job has a measured or known accuracy (no labels in the data, no `accuracy:` "
            "in the spec's model entries)",
}
_INSTEAD = {"measured": "use --accuracy known or auto (accuracy='known' or 'auto' in Python)",
            "known": "set them in the spec, or use --accuracy measured with labelled data",
            "auto": "add `accuracy:` to the spec's model entries, or sweep labelled data"}
_FAMILY_ORDER = {"translation": 0, "rotation": 1}  # as in the thesis' figures


def _store_tables(source) -> Dict[str, pd.DataFrame]:
    """The combined tables (``points``, ``parts``, ``jobs``) of a results folder or store."""
    store = source if isinstance(source, ResultStore) else ResultStore(source)
    if not store.root.is_dir():
        if store.root.exists():  # (it said "does not exist" of a file)
            raise NotADirectoryError(f"Expected a sweep results folder, but {str(store.root)!r} is "
                                     "a file; pass the sweep's --out.")
        raise FileNotFoundError(f"Expected a sweep results folder, but {str(store.root)!r} does not exist; "
                                "run `equifast sweep run SPEC --out DIR` first.")
    return store.tables()


def _store_table(source, name: str) -> pd.DataFrame:
    """The combined ``name`` table (``parts``, ``points``) of a sweep, or ``source`` itself."""
    return source.copy() if isinstance(source, pd.DataFrame) else _store_tables(source)[name]


def _check_columns(df: pd.DataFrame, columns: List[str], what: str) -> None:
    """Raise ValueError where a hand-made table lacks one of ``columns`` (a bare ``KeyError``
    from pandas otherwise); ``what``: the table it should be."""
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"Expected {what} with the columns {', '.join(columns)}, but it lacks "
                         f"{', '.join(map(repr, missing))} (its columns: "
                         f"{', '.join(map(str, df.columns))}).")


def _with_job_columns(df: pd.DataFrame, metric: Optional[str]) -> pd.DataFrame:
    """``df`` with the job columns a hand-made table may lack, and only ``metric``'s rows."""
    unknown = sorted(set(df["part"].astype(str)) - set(PARTS))
    if unknown:  # NaN in the parts' Categorical: one part of them all, each model in it twice
        raise ValueError(f"Expected the table's parts to be some of {', '.join(PARTS)}, but it "
                         f"names {', '.join(map(repr, unknown[:5]))}; rename them to the part "
                         "each measures.")
    for col, default in (("metric", "correlation"), ("dataset", "data"), ("seed", 0)):
        if col not in df:
            df[col] = default
    if "transforms" not in df:
        df["transforms"] = df["family"]
    if metric == "auto":  # a sweep of cosine only has no correlation to default to
        measured = sorted(set(df["metric"]))
        metric = measured[0] if len(measured) == 1 else "correlation"
    if metric is not None:
        if metric not in set(df["metric"]):
            raise ValueError(f"Expected `metric` to be one of {sorted(set(df['metric']))}, but got {metric!r}.")
        df = df[df["metric"] == metric]
    return df.assign(part=df["part"].astype(str))


def _accuracy_column(df: pd.DataFrame, accuracy: str) -> pd.Series:
    if accuracy not in ACCURACY_CHOICES:
        raise ValueError(f"Expected `accuracy` to be one of {ACCURACY_CHOICES}, but got {accuracy!r}.")
    col = {"auto": "accuracy", "known": "accuracy_known", "measured": "accuracy_measured"}[accuracy]
    if col not in df:
        col = "accuracy"
    if col not in df:
        return pd.Series(np.nan, index=df.index)
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() & df[col].notna()
    if bad.any():  # NaN: the model was left out of every correlation without a word
        raise ValueError(f"Expected the column {col!r} to hold top-1 accuracies (numbers, or empty "
                         f"where unknown), but it holds {df.loc[bad, col].iloc[0]!r} (model "
                         f"{df.loc[bad, 'model'].iloc[0]!r}); write it as a number (0.712).")
    return values


def part_scores(source: Union[str, os.PathLike, ResultStore, pd.DataFrame],
                metric: Optional[str] = "auto", accuracy: str = "auto") -> pd.DataFrame:
    """Each model's channel and layer score per part, averaged over seeds.

    Args:
        source: a results folder, a :class:`ResultStore`, or a combined ``parts`` table
            (columns ``model, dataset, transforms, family, part, channel, layer, accuracy``,
            ``metric`` and ``seed`` optional).
        metric: keep this metric's rows (``"auto"``: correlation, or the one metric the sweep
            measured; ``None``: keep all).
        accuracy: ``"auto"``, ``"known"`` or ``"measured"`` (see :data:`ACCURACY_CHOICES`).

    Returns:
        One row per ``(dataset, metric, transforms, family, model, part)`` with ``channel``,
        ``layer``, their standard deviations over seeds (``channel_std``, ``layer_std``),
        ``seeds`` and ``accuracy`` (the mean over seeds). A ``UserWarning`` says so when no
        row has an accuracy of the chosen kind.
    """
    df = _store_table(source, "parts")
    if df.empty:
        raise ValueError("Expected finished jobs in the sweep, but there are none; run the sweep "
                         "(`equifast sweep run SPEC`) or check `equifast sweep status`.")
    _check_columns(df, ["model", "family", "part", "channel", "layer"], "a parts table")
    df = df.assign(accuracy=_accuracy_column(df, accuracy))
    if df["accuracy"].isna().all():  # else a silent all-NaN correlation and no figure 13
        warn(f"{_NO_ACCURACY[accuracy]}: the accuracies are NaN and no Spearman "
             f"correlation (figure 13) is computed; {_INSTEAD[accuracy]}.")
    df = _with_job_columns(df, metric)
    if accuracy == "auto":  # after the columns a hand-made table may lack (its dataset)
        _warn_mixed_accuracies(df)
    out = over_runs(df, _KEYS + ["part"], ["channel", "layer", "accuracy"], run="seed", count="seeds",
                    one_row_per_run=True)
    out = out.drop(columns="accuracy_std")[_PART_SCORES]
    out["part"] = pd.Categorical(out["part"], categories=PARTS, ordered=True)
    return out.sort_values(_KEYS + ["part"], kind="stable").reset_index(drop=True)


def _warn_mixed_accuracies(df: pd.DataFrame) -> None:
    """Warn where one dataset's models correlate with accuracies of both kinds (``auto``):
    top-1 measured on the sweep's images for some, the known (published) one for others (a
    model whose classes are not the data's), two scales a rank correlation silently mixes."""
    if "accuracy_source" not in df:
        return
    src = df[["dataset", "model", "accuracy_source"]].dropna().drop_duplicates()
    for ds, g in src.groupby("dataset", sort=False):
        kinds = g.groupby("accuracy_source")["model"].unique()
        if {"measured", "known"} <= set(kinds.index):
            known = sorted(map(str, kinds["known"]))
            warn(f"dataset {ds!r}: the accuracies mix top-1 measured on the sweep's images "
                 f"({len(kinds['measured'])} models) with known accuracies ({len(known)}: "
                 f"{', '.join(known[:5])}{' ...' if len(known) > 5 else ''}), whose data have no "
                 "labels of their classes; use --accuracy known (accuracy='known') to correlate "
                 "with one kind.")


def shift_scores(source: Union[str, os.PathLike, ResultStore, pd.DataFrame],
                 metric: Optional[str] = "auto") -> pd.DataFrame:
    """Each model's channel and layer score per part at each shift, averaged over seeds
    (thesis figure 8, per model).

    Args:
        source: a results folder, a :class:`ResultStore`, or a combined ``points`` table
            (columns ``model, dataset, transforms, point, part, transform, family, channel,
            layer, undefined_fraction``, ``metric`` and ``seed`` optional).
        metric: keep this metric's rows (``"auto"``: correlation, or the one metric the sweep
            measured; ``None``: keep all).

    Returns:
        One row per ``(dataset, metric, transforms, family, model, part, shift)`` with the
        shift's ``transform, dy, dx``, ``channel``, ``layer``, their standard deviations over
        seeds (``channel_std``, ``layer_std``) and ``seeds``; no rows for a sweep without
        translations. Sorted as :func:`part_scores`' rows, the shifts in the order measured.
    """
    df = _store_table(source, "points")
    if df.empty:
        raise ValueError("Expected finished jobs in the sweep, but there are none; run the sweep "
                         "(`equifast sweep run SPEC`) or check `equifast sweep status`.")
    _check_columns(df, ["model", "point", "part", "transform", "family", "channel", "layer",
                        "undefined_fraction"], "a points table")
    df = _with_job_columns(df, metric)
    # runs not told apart (no seed column) were averaged as more points of one run
    check_one_row_per_run(df, _KEYS + ["point", "transform"], run="seed")
    table = shift_table(df, by=["dataset", "transforms", "model", "seed"]).astype({"part": str})
    keys = _KEYS + ["part", "transform", "dy", "dx"]
    columns = keys + ["channel", "channel_std", "layer", "layer_std", "seeds"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    out = over_runs(table, keys, ["channel", "layer"], run="seed", count="seeds")
    out["part"] = pd.Categorical(out["part"], categories=PARTS, ordered=True)
    out = out[columns]
    return out.sort_values(_KEYS + ["part"], kind="stable").reset_index(drop=True)


def accuracy_correlation(scores: Union[pd.DataFrame, str, os.PathLike, ResultStore],
                         metric: Optional[str] = "auto", accuracy: str = "auto",
                         min_models: int = 3) -> pd.DataFrame:
    """Spearman's rank correlation of each part's score with top-1 accuracy (thesis Fig. 13).

    For every ``(dataset, metric, transforms, family, part)`` and score (``channel`` and
    ``layer``), ``scipy.stats.spearmanr`` across the models that have an accuracy.

    Args:
        scores: :func:`part_scores`' table, or anything it takes.
        metric, accuracy: as :func:`part_scores` (used when ``scores`` is not its table).
        min_models: fewer models with an accuracy give NaN.

    Returns:
        Columns ``dataset, metric, transforms, family, part, score, spearman, p_value,
        n_models`` (``part, family, score, spearman`` are what
        :func:`equifast.figures.plot_accuracy_correlation` draws).

    Example:
        >>> t = pd.DataFrame({"model": list("abcd"), "part": "final", "family": "rotation",
        ...                   "channel": [.1, .4, .3, .9], "layer": [.1, .4, .3, .9],
        ...                   "accuracy": [.5, .6, .7, .8]})
        >>> round(float(accuracy_correlation(t).spearman.iloc[0]), 12)    # 1 - 6 * 2 / (4 * 15)
        0.8
    """
    if not (isinstance(scores, pd.DataFrame) and {"channel_std", "seeds"} <= set(scores.columns)):
        scores = part_scores(scores, metric=metric, accuracy=accuracy)
    return _rank_correlation(scores, {"channel": "accuracy", "layer": "accuracy"}, min_models)


def final_correlation(scores: Union[pd.DataFrame, str, os.PathLike, ResultStore],
                      metric: Optional[str] = "auto", min_models: int = 3) -> pd.DataFrame:
    """Spearman's rank correlation, across models, of each part's score with the invariance of
    the final part (thesis section 4.3: do models more equivariant before pooling end more
    invariant? Yes for translations, not for rotations).

    Args:
        scores: :func:`part_scores`' table, or anything it takes.
        metric: as :func:`part_scores` (used when ``scores`` is not its table).
        min_models: fewer models with both scores give NaN.

    Returns:
        The columns of :func:`accuracy_correlation`: per part before the final one,
        ``spearman`` of its channel (layer) score with the final part's channel (layer) score.
    """
    if not (isinstance(scores, pd.DataFrame) and {"channel_std", "seeds"} <= set(scores.columns)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EquifastWarning)  # no accuracy is needed here
            scores = part_scores(scores, metric=metric)
    final = (scores[scores["part"].astype(str) == "final"].set_index(_KEYS)[["channel", "layer"]]
             .add_prefix("final_"))
    scores = scores[scores["part"].astype(str) != "final"].join(final, on=_KEYS)
    return _rank_correlation(scores, {"channel": "final_channel", "layer": "final_layer"},
                             min_models)


def _rank_correlation(scores: pd.DataFrame, targets: Dict[str, str], min_models: int) -> pd.DataFrame:
    """Spearman across models, per (dataset, metric, transforms, family, part) and score, of
    the score with its column in ``targets`` (e.g. ``{"channel": "accuracy", ...}``)."""
    from scipy.stats import spearmanr

    if not isinstance(min_models, int) or min_models < 2:
        raise ValueError(f"Expected `min_models` to be an integer >= 2, but got {min_models!r}.")
    repeated = scores.duplicated(_KEYS + ["part"]).to_numpy()
    if repeated.any():  # one model's rows were ranked as several models
        row = scores.iloc[[int(repeated.argmax())]][_KEYS + ["part"]].astype(str).to_dict("records")[0]
        raise ValueError(f"Expected one row per model of each dataset, metric, transforms, family "
                         f"and part, but model {row['model']!r} has several of part {row['part']!r} "
                         f"({row['dataset']}, {row['metric']}, {row['transforms']}, {row['family']}): "
                         "part_scores of sweeps joined, each with that model? Keep one of its rows.")
    rows = []
    keys = [k for k in _KEYS if k != "model"] + ["part"]
    for key, g in scores.groupby(keys, sort=False, observed=True, dropna=False):
        for score, target in targets.items():
            ok = g[[score, target]].astype(float).dropna()
            rho = p = float("nan")
            if len(ok) >= min_models:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # constant input: NaN, as documented
                    res = spearmanr(ok[score], ok[target])
                rho, p = float(res.statistic), float(res.pvalue)
            rows.append({**dict(zip(keys, key)), "score": score, "spearman": rho, "p_value": p,
                         "n_models": len(ok)})
    out = pd.DataFrame(rows, columns=keys + ["score", "spearman", "p_value", "n_models"])
    out["part"] = pd.Categorical(out["part"].astype(str), categories=PARTS, ordered=True)
    rank = out["family"].map(lambda f: (_FAMILY_ORDER.get(f, len(_FAMILY_ORDER)), str(f)))
    out = out.assign(_family=rank)
    return (out.sort_values(["dataset", "metric", "_family", "transforms", "score", "part"], kind="stable")
            .drop(columns="_family").reset_index(drop=True))


_TABLES = ("part_scores.csv", "shift_scores.csv", "accuracy_correlation.csv", "final_correlation.csv")


def _families() -> List[str]:
    """Every transform family a sweep can measure (a spec's transforms are parsed into these)."""
    from equifast.transforms import shift_family

    shifts = [shift_family(m, r) for m in ("circular", "zero") for r in ("down", "nearest")]
    return ["identity", "rotation", "flip", "transform"] + shifts


#: Models drawn in one figure of parts (fig11/fig12: a line each, told apart by matplotlib's 10
#: colours) or of shifts (fig8: a row of panels each); a sweep of more models gets more pages.
MODELS_PER_FIGURE = 10


def _figure_name(kind: str, family: Optional[str] = None, dataset: Optional[str] = None,
                 page: int = 1) -> str:
    """The file name of a figure :func:`sweep_figures` writes: ``kind`` ``"parts"`` (a
    family's parts per model: fig11_translation, fig12_rotation, else parts_<family>),
    ``"shifts"`` (fig8_<family>) or ``"accuracy"`` (fig13_accuracy_correlation), with
    ``dataset``'s name added (a report of several datasets; ``None``: none) and ``.<page>``
    from the second page of models on (``fig11_translation.2.png``; a slug has no dot)."""
    if kind == "parts":
        base = {"translation": "fig11_translation", "rotation": "fig12_rotation"}.get(
            family, f"parts_{_slug(family)}")
    elif kind == "shifts":
        base = f"fig8_{_slug(family)}"
    else:
        base = "fig13_accuracy_correlation"
    return f"{base}{'' if dataset is None else '_' + _slug(dataset)}{'' if page == 1 else f'.{page}'}.png"


def _is_own(name: str, own: set) -> bool:
    """Whether ``name`` is one of the figures ``own`` names, or a later page of one."""
    page = re.fullmatch(r"(.+)\.[1-9][0-9]*\.png", name)
    return name in own or (page is not None and f"{page.group(1)}.png" in own)


def _draw_pages(plot, frames: Dict[str, pd.DataFrame], out: Path, kind: str, family: str,
                dataset: Optional[str], title: str) -> List[Path]:
    """Draw ``frames`` (a model's each) with ``plot`` (:func:`~equifast.figures.plot_parts` or
    :func:`~equifast.figures.plot_shifts`) in pages of :data:`MODELS_PER_FIGURE` models,
    each titled with the models it holds; returns the files written."""
    import matplotlib.pyplot as plt

    items = list(frames.items())
    pages = [dict(items[i:i + MODELS_PER_FIGURE]) for i in range(0, len(items), MODELS_PER_FIGURE)]
    paths = []
    for page, models in enumerate(pages, 1):
        first = (page - 1) * MODELS_PER_FIGURE + 1
        path = out / _figure_name(kind, family, dataset, page)
        plt.close(plot(models, path=path, title=title if len(pages) == 1 else (
            f"{title}\nmodels {first}-{first + len(models) - 1} of {len(items)} "
            f"(page {page} of {len(pages)})")))
        paths.append(path)
    return paths


def _own_figures(datasets, families) -> set:
    """The names of every figure :func:`sweep_figures` writes for these datasets and families,
    with or without a dataset's name (an earlier report's may have had other datasets)."""
    out = set()
    for ds in [None, *datasets]:
        out.add(_figure_name("accuracy", dataset=ds))
        out.update(_figure_name(kind, f, ds) for f in families for kind in ("parts", "shifts"))
    return out


def _check_figures_folder(path: os.PathLike, own: Optional[set] = None) -> Path:
    """``path``, unless it is a file or holds files other than the report's tables and the
    figures named ``own`` or their later pages (``FileExistsError``; ``None``: only whether it
    is a file): a user's files are never replaced or removed, even one named like a figure
    (fig8_thesis.png)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"Expected --figures {str(path)!r} to be a folder, but it is a file.")
    names = [p.name for p in path.iterdir() if p.name not in SYSTEM_FILES] \
        if path.is_dir() and own is not None else []
    # the report's names are its own beside its part_scores.csv only (the first file it
    # writes): a user's fig11_translation.png or part_scores.csv alone was replaced
    ours = _report_table(path / _TABLES[0])
    others = sorted(n for n in names if not ours or (n not in _TABLES and not _is_own(n, own)))
    if others:
        raise FileExistsError(f"Expected --figures {str(path)!r} to be empty or hold only the "
                              f"report's tables and figures, but it holds other files: "
                              f"{others[:5]}. Use another --figures.")
    return path


def _check_outside_data(store: ResultStore, out_dir: os.PathLike) -> None:
    """Raise ValueError where ``out_dir`` lies in the folder of a folder dataset of the sweep's
    jobs (as their records resolved it): the next run read the figures there as that dataset's
    images, a class folder of them, and measured its jobs again on them (as an --out there,
    which :meth:`~.spec.SweepSpec.check_out` refuses). Only the records' heads are read."""
    saved = store.read_spec()
    ids = saved["jobs"] if saved else sorted(store.states())
    folders: Dict[str, str] = {}
    for jid in ids:
        data = ((store.head_of(jid) or {}).get("job") or {}).get("dataset") or {}
        if data.get("kind") == "folder" and data.get("resolved_path"):
            folders.setdefault(data["resolved_path"], data.get("label"))
    for path, label in folders.items():
        if lies_in(out_dir, path):
            raise ValueError(f"Expected --figures outside the images of dataset {label!r}, but "
                             f"{str(out_dir)!r} lies in its folder {path!r}: the next run would "
                             "measure the report's figures as that dataset's images; use another "
                             "--figures.")


def _report_table(path: Path) -> bool:
    """Whether ``path`` is a ``part_scores.csv`` a sweep report wrote: its header is
    :func:`part_scores`' columns."""
    try:
        with open(path, newline="") as f:
            header = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return header == ",".join(_PART_SCORES)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text)).strip("_") or "x"


def _check_distinct_slugs(datasets: List[str]) -> None:
    """Raise ValueError where two datasets' names make one figure file name (``img net`` and
    ``img_net``: the second's figures replaced the first's); one dataset's files take no name."""
    by_slug: Dict[str, List[str]] = {}
    for ds in datasets:
        by_slug.setdefault(_slug(ds), []).append(ds)
    same = [names for names in by_slug.values() if len(names) > 1] if len(datasets) > 1 else []
    if same:
        raise ValueError(
            f"Expected datasets whose names make distinct figure file names, but "
            f"{' and '.join(map(repr, same[0]))} both make "
            f"{_figure_name('parts', 'translation', same[0][0])!r}; rename one in the spec "
            "(`name:`) and run it again: a rename measures nothing again.")


def _legend(model: str, transforms: str, several: bool, short: Optional[str]) -> str:
    """A model's name in a figure's legend, with its transform set where a figure draws several,
    and how many of the spec's seeds it holds where that is not all (``short``)."""
    notes = [n for n in (transforms if several else None, short) if n]
    return f"{model} ({', '.join(notes)})" if notes else model


def _incomplete(saved: Optional[dict], jobs: pd.DataFrame, scores: pd.DataFrame) -> Dict[tuple, str]:
    """``{(dataset, transforms, model): "k of n seeds"}`` of the saved spec's combinations that
    the report averages over fewer seeds than the spec has (``"no seed"``: none finished), and
    a warning of how many of the sweep's jobs it holds, when that is not all of them: a failed
    or unfinished job's model was drawn as if its mean were over every seed."""
    if not saved:
        return {}
    spec = saved.get("spec") or {}
    status = jobs["status"] if "status" in jobs else pd.Series(dtype=object)
    total, ok, failed = len(saved.get("jobs") or []), int((status == "ok").sum()), int((status == "failed").sum())
    seeds = spec.get("seeds")
    n_seeds = len(seeds) if seeds else int(scores["seeds"].max())
    have = scores.groupby(["dataset", "transforms", "model"], sort=False)["seeds"].min().to_dict()
    expected = [(d.get("label"), t, m.get("label")) for m in spec.get("models", [])
                for d in spec.get("datasets", []) for t in spec.get("transforms", {})]
    out = {key: f"{k} of {n_seeds} seeds" for key, k in have.items() if k < n_seeds}
    out.update({key: "no seed" for key in expected if None not in key and key not in have})
    if ok < total:
        listed = [f"{m} / {d} / {t}: {what}" for (d, t, m), what in out.items()]
        more = f"; and {len(listed) - 10} more" if len(listed) > 10 else ""
        warn(f"The report holds {ok} of the sweep's {total} jobs ({failed} failed, "
             f"{total - ok - failed} not run; `equifast sweep status` lists them, and "
             f"`equifast sweep run` runs them again): "
             + ("; ".join(listed[:10]) + more if listed else "every combination has a seed")
             + ". Their means are over the seeds that finished (the `seeds` column; the "
             "figures' legends say it).")
    return out


def sweep_figures(source: Union[str, os.PathLike, ResultStore, pd.DataFrame], out_dir: os.PathLike,
                  metric: str = "auto", accuracy: str = "auto",
                  min_models: int = 3) -> Dict[str, List[Path]]:
    """Draw the thesis' figures 11-13 of a sweep (and 8, per model) and write their tables.

    Files in ``out_dir``: ``part_scores.csv``, ``accuracy_correlation.csv``,
    ``fig11_translation.png`` and ``fig12_rotation.png`` (parts per model, via
    :func:`equifast.figures.plot_parts`; other families as ``parts_<family>.png``),
    ``fig13_accuracy_correlation.png`` (via :func:`equifast.figures.plot_accuracy_correlation`;
    drawn when at least ``min_models`` models have an accuracy), ``final_correlation.csv``
    (:func:`final_correlation`), and from a results folder ``shift_scores.csv`` and
    ``fig8_<family>.png`` (each model's parts at each shift of a translation family, a row of
    panels per model, via :func:`equifast.figures.plot_shifts`). With several datasets, each
    figure is drawn per dataset, its name added to the file name (``fig11_translation_<dataset>.png``);
    several transform sets of one family share its figure, their names added to the legend
    (``resnet18 (rot90)``). Figures 8, 11 and 12 draw at most
    :data:`MODELS_PER_FIGURE` models each: more models go on further pages,
    ``fig11_translation.2.png`` and on (one figure of hundreds of models was a legend over its
    panels, or a PNG tens of thousands of pixels tall). A sweep with failed or unrun jobs gets
    a warning of how many of its jobs the report holds and whose means are over fewer seeds
    than the spec's, and those models' legend entries say so (``resnet50 (1 of 2 seeds)``).
    An earlier report's figures (the
    names a report writes for any family and the sweep's datasets, and their pages) are
    removed first, so that none is left beside tables it does not match. ``out_dir`` must be
    missing, empty or hold
    only such files: a user's other files there, even ones named like a figure
    (``fig8_thesis.png``), are refused, never replaced or removed.

    Returns:
        ``{"tables": [...], "figures": [...]}`` paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from equifast.figures import plot_accuracy_correlation, plot_parts, plot_shifts

    _check_figures_folder(out_dir)  # a file: said before the tables are read
    stored = None if isinstance(source, pd.DataFrame) else _store_tables(source)
    store = None if stored is None else (
        source if isinstance(source, ResultStore) else ResultStore(source))
    if store is not None:
        _check_outside_data(store, out_dir)
    scores = part_scores(source if stored is None else stored["parts"], metric=metric,
                         accuracy=accuracy)
    _check_distinct_slugs(list(dict.fromkeys(scores["dataset"])))
    # the titles name the metric drawn, not "auto"
    drawn = ", ".join(sorted(set(scores["metric"]))) if "metric" in scores and len(scores) else metric
    corr = accuracy_correlation(scores, min_models=min_models)
    to_final = final_correlation(scores, min_models=min_models)
    points = None if stored is None else stored["points"]
    shifts = shift_scores(points, metric=metric) if points is not None and len(points) else None
    # what this report, or an earlier one of the same sweep, writes: its figures are replaced
    saved = None if store is None else store.read_spec()
    datasets = set(scores["dataset"]) | {d.get("label") for d in ((saved or {}).get("spec") or {})
                                         .get("datasets", []) if d.get("label")}
    own = _own_figures(datasets, set(_families()) | set(scores["family"]))
    short = {} if stored is None else _incomplete(saved, stored["jobs"], scores)
    out = _check_figures_folder(out_dir, own)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # an earlier report's figures would disagree with the tables
        if _is_own(old.name, own):
            old.unlink()
    tables = [out / "part_scores.csv", out / "accuracy_correlation.csv", out / "final_correlation.csv"]
    for path, table in zip(tables, (scores, corr, to_final)):
        write_csv_atomic(path, table)
    (out / "shift_scores.csv").unlink(missing_ok=True)
    if shifts is not None and len(shifts):
        tables.append(out / "shift_scores.csv")
        write_csv_atomic(tables[-1], shifts)
    figures: List[Path] = []
    datasets = list(dict.fromkeys(scores["dataset"]))
    for ds in datasets:
        d = scores[scores["dataset"] == ds]
        named = ds if len(datasets) > 1 else None
        for fam in dict.fromkeys(d["family"]):
            f = d[d["family"] == fam]
            keys = list(dict.fromkeys(f["transforms"]))
            frames = {}
            for (model, key), g in f.groupby(["model", "transforms"], sort=False):
                label = _legend(model, key, len(keys) > 1, short.get((ds, key, model)))
                frames[label] = g[["part", "family", "channel", "layer"]
                                  + (["channel_std", "layer_std"] if (g["seeds"] > 1).any() else [])]
            figures += _draw_pages(plot_parts, frames, out, "parts", fam, named,
                                   f"{fam} equivariance per part ({ds}, {drawn})")
        d = shifts[shifts["dataset"] == ds] if shifts is not None else pd.DataFrame(columns=_KEYS)
        for fam in dict.fromkeys(d["family"]):
            f = d[d["family"] == fam]
            if f.groupby(["model", "transforms"])["transform"].nunique().max() < 2:
                continue  # one shift: figure 11 holds it
            keys = list(dict.fromkeys(f["transforms"]))
            frames = {}
            for (model, key), g in f.groupby(["model", "transforms"], sort=False):
                frames[_legend(model, key, len(keys) > 1, short.get((ds, key, model)))] = g.drop(
                    columns=[] if (g["seeds"] > 1).any() else ["channel_std", "layer_std"])
            figures += _draw_pages(plot_shifts, frames, out, "shifts", fam, named,
                                   f"{fam} equivariance per part at each shift ({ds}, {drawn})")
        c = corr[corr["dataset"] == ds]  # undefined parts (NaN) are marked, not bridged
        if not c["spearman"].notna().any():
            most = int(corr.loc[corr["dataset"] == ds, "n_models"].max())
            why = (f"the scores or the accuracies of its {most} models are all equal"
                   if most >= min_models else
                   f"Spearman's correlation needs at least {min_models} models with a score and "
                   f"an accuracy (min_models, --min-models), and {most} have them")
            warn(f"No figure 13 for {ds}: {why}.")
        else:
            path = out / _figure_name("accuracy", dataset=named)
            n = int(c.loc[c["spearman"].notna(), "n_models"].max())
            fig = plot_accuracy_correlation(c[["part", "family", "transforms", "score", "spearman"]], path=path,
                                            title=f"Spearman of part scores with top-1 accuracy "
                                                  f"({ds}, {n} models)")
            plt.close(fig)
            figures.append(path)
    return {"tables": tables, "figures": figures}

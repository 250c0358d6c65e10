"""The thesis' figures, drawn with matplotlib from part tables and correlation tables."""
from __future__ import annotations

import textwrap
from typing import Dict, Mapping, Optional

import numpy as np
import pandas as pd

from ._io import save_figure_atomic

__all__ = ["plot_parts", "plot_shifts", "plot_accuracy_correlation"]

PARTS = ("early", "middle", "late", "pool", "final")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _checked_frames(frames, what: str) -> Dict[str, pd.DataFrame]:
    """``frames`` checked to be a mapping of label -> DataFrame: one table given alone failed
    deep inside (an AttributeError on ``.items()`` or of a Series)."""
    if not isinstance(frames, Mapping) or not all(isinstance(df, pd.DataFrame)
                                                  for df in frames.values()):
        got = (f"a {type(frames).__name__}" if not isinstance(frames, Mapping) else
               ", ".join(f"{label!r}: a {type(df).__name__}" for label, df in frames.items()
                         if not isinstance(df, pd.DataFrame)))
        raise TypeError(f"Expected `frames` to be a dict of label -> {what}, but got {got}; "
                        "e.g. {'resnet18': table}.")
    return dict(frames)


def _check_table(df: pd.DataFrame, name: str, columns, what: str, keys=()) -> None:
    """``ValueError`` naming ``name`` unless ``df`` has ``columns`` (a missing one failed deep
    inside in a bare KeyError), its parts are among :data:`PARTS` and it has one row per
    ``keys`` (what one line draws at one place)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"Expected {name} to be {what}, with columns {list(columns)}, but it lacks "
                         f"{missing} (columns {list(df.columns)}).")
    # another part was drawn at x = -1, outside the panel, or (shifts) left out: silently gone
    unknown = sorted(set(df["part"].astype(str)) - set(PARTS))
    if unknown:
        raise ValueError(f"Expected the parts of {name} to be among {', '.join(PARTS)}, but it has "
                         f"{', '.join(map(repr, unknown))}; the figures draw these parts only.")
    # rows of several models, seeds, datasets or points at one place were joined by one line
    # running back and forth between them, read as one setting's scores
    named = df[list(keys)].astype(str)
    repeated = named.duplicated(keep=False)
    if repeated.any():
        first = named[repeated].iloc[0]
        same = df[repeated & (named == first).all(axis=1)]
        apart = [c for c in same.select_dtypes(exclude="floating").columns
                 if c not in keys and same[c].astype(str).nunique() > 1]
        raise ValueError(
            f"Expected one row per ({', '.join(keys)}) in {name}, but it has {len(same)} of "
            f"{', '.join(f'{k}={first[k]}' for k in keys)}"
            f"{f' (told apart by {apart})' if apart else ''}; one line would run through them "
            f"all: draw one table per line (filter the others out).")


def _of_one_metric(frames: Mapping[str, pd.DataFrame], metric: Optional[str]) -> Dict[str, pd.DataFrame]:
    """Each table's rows of ``metric`` (see :func:`~equifast.report.rows_of_metric`), refused
    where the lines would be of different metrics: a cosine line beside a correlation one read
    as comparable scores."""
    from .report import rows_of_metric

    kept, of = {}, {}
    for label, df in frames.items():
        try:
            kept[label] = rows_of_metric(df, metric)
        except ValueError as err:
            raise ValueError(f"{str(err).rstrip('.')} (in {label!r}).") from None
        if "metric" in kept[label] and len(kept[label]):
            of[label] = str(kept[label]["metric"].iloc[0])
    if len(set(of.values())) > 1:
        said = ", ".join(f"{label!r} {m}" for label, m in of.items())
        raise ValueError(f"Expected the lines to share one metric, but they measured {said}; pass "
                         "metric= one they all measured, or draw reports of one metric together.")
    return kept


def plot_parts(frames: Mapping[str, pd.DataFrame], path=None, metric: Optional[str] = None,
               title: Optional[str] = None):
    """Channel (left) and layer (right) equivariance per part, one line per setting or model.

    Args:
        frames: label -> part table (columns ``part, family, channel, layer``; optional
            ``channel_std``/``layer_std`` draw error bars, as over seeds).
        path: where to save the PNG/PDF (optional).
        metric: keep only rows of this metric when the tables hold several.

    One row of panels per transform family (translation, rotation, ...), like figures 7, 9,
    10, 11 and 12 of the thesis. An undefined score (NaN), and a part a line has no row of
    between two it has, is marked with an ``x`` at the bottom of the panel, not bridged.
    """
    plt = _pyplot()
    frames = _of_one_metric(_checked_frames(frames, "part table"), metric)
    for label, df in frames.items():
        _check_table(df, f"the table of {label!r}", ("part", "family", "channel", "layer"),
                     "a part table (Report.parts)", keys=("family", "part"))
    metrics = list(dict.fromkeys(m for df in frames.values() if "metric" in df for m in df["metric"]))
    families = []
    for df in frames.values():
        families += [f for f in df["family"].unique() if f not in families]
    if not families:
        raise ValueError("Expected part scores to draw (tables from Report.parts), but the tables "
                         "hold none: the report measured no point.")
    fig, axes = plt.subplots(len(families), 2, figsize=(10, 3.4 * len(families)), squeeze=False)
    for row, fam in enumerate(families):
        for col, score in enumerate(("channel", "layer")):
            ax = axes[row][col]
            for i, (label, df) in enumerate(frames.items()):
                d = _at_parts(df[df["family"] == fam])
                if d.empty:
                    continue
                err = d[f"{score}_std"].to_numpy(float) if f"{score}_std" in d else None
                # at the parts' positions: as strings, a part missing from the first line would
                # be put after the others
                _draw(ax, d["part"].cat.codes.to_numpy(), d[score].to_numpy(float), err,
                      label, _style(i), capsize=3)
            ax.set_xticks(range(len(PARTS)), PARTS)
            ax.set_xlim(-0.2, len(PARTS) - 0.8)  # as matplotlib pads them, even with no score
            ax.set_title(f"{score} equivariance: {fam}")
            ax.grid(alpha=0.3)
            if row == len(families) - 1:
                ax.set_xlabel("part")
            if col == 0:
                ax.set_ylabel(_ylabel(metrics[0] if len(metrics) == 1 else None,
                                      any(f"{s}_std" in df for df in frames.values() for s in
                                          ("channel", "layer"))))
    _score_limits(fig.axes)
    return _finish(fig, list(frames), path, title, ncol=4)


def plot_shifts(frames: Mapping[str, pd.DataFrame], path=None, metric: Optional[str] = None,
                title: Optional[str] = None):
    """Channel (left) and layer (right) equivariance of each part against the size of the
    shift (thesis Fig. 8), one line per part, one row of panels per setting and translation
    family.

    Args:
        frames: label -> shift table (:func:`equifast.report.shift_table`: columns ``part,
            family, dy, dx, channel, layer``; optional ``channel_std``/``layer_std`` draw error
            bars, as over seeds).
        path: where to save the PNG/PDF (optional).
        metric: keep only rows of this metric when the tables hold several.

    Diagonal shifts (``dy == dx``) are drawn at ``dy``, joined in order of size; other shifts
    in the order measured, labelled ``(dy,dx)``.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    frames = {label: df for label, df in _checked_frames(frames, "shift table").items()
              if not df.empty}
    if not frames:
        raise ValueError("Expected translations to draw (a table from shift_table), but the "
                         "tables hold none; measure with shifts, e.g. ef.diagonal_shifts(1, 16).")
    rows = []
    for label, df in _of_one_metric(frames, metric).items():
        _check_table(df, f"the table of {label!r}", ("part", "family", "dy", "dx", "channel", "layer"),
                     "a shift table (Report.shifts, equifast.report.shift_table)",
                     keys=("family", "part", "dy", "dx"))
        rows += [(label, fam, df[df["family"] == fam]) for fam in dict.fromkeys(df["family"])]
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.4 * len(rows)), squeeze=False)
    for row, (label, fam, d) in enumerate(rows):
        shifts = list(dict.fromkeys(zip(d["dy"], d["dx"])))
        diagonal = all(dy == dx for dy, dx in shifts)
        where = {s: (s[0] if diagonal else i) for i, s in enumerate(shifts)}
        for col, score in enumerate(("channel", "layer")):
            ax = axes[row][col]
            for part in PARTS:
                g = d[d["part"].astype(str) == part]
                if g.empty:
                    continue
                if diagonal:  # a line through the shifts in size order, not as measured (16, 1, 2)
                    g = g.sort_values("dy", kind="stable")
                x = [where[s] for s in zip(g["dy"], g["dx"])]
                err = g[f"{score}_std"].to_numpy(float) if f"{score}_std" in g else None
                _draw(ax, np.asarray(x), g[score].to_numpy(float), err, part,
                      _style(PARTS.index(part)), ms=3, capsize=2)
            if diagonal:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            else:
                ax.set_xticks(range(len(shifts)), [f"({dy},{dx})" for dy, dx in shifts],
                              rotation=45)
            measured = set(d["metric"]) if "metric" in d else set()
            # wrapped to the panel: a long model name ran into the next panel's title
            ax.set_title(textwrap.fill(f"{score}: {label}, {fam}" + (
                f", {min(measured)}" if len(measured) == 1 else ""), 60), fontsize="medium")
            ax.grid(alpha=0.3)
            ax.set_xlabel("diagonal shift (pixels)" if diagonal else "shift (dy,dx), pixels")
            if col == 0:
                ax.set_ylabel(_ylabel(None, "channel_std" in d or "layer_std" in d))
    _score_limits(fig.axes)
    return _finish(fig, PARTS, path, title, ncol=len(PARTS))


def _at_parts(d: pd.DataFrame) -> pd.DataFrame:
    """``d`` (one row per part, as :func:`_check_table` makes sure) in the order of
    :data:`PARTS`, with a row of NaN for each part it lacks between two it has: a part without
    points between two with them (late of a model of two points before pooling, the pool
    SqueezeNet has not) has no score, marked undefined, where the line ran across it from the
    parts beside it."""
    d = d.assign(part=pd.Categorical(d["part"].astype(str), PARTS, ordered=True)).sort_values("part")
    if d.empty:
        return d
    codes = d["part"].cat.codes
    span = pd.CategoricalIndex(PARTS[codes.min():codes.max() + 1], PARTS, ordered=True, name="part")
    return d.set_index("part").reindex(span).reset_index()


def _ylabel(metric: Optional[str], bars: bool) -> str:
    """The score axis' label: the metric when one, and what the error bars are when drawn
    (every ``*_std`` column equifast makes is over seeds)."""
    label = f"score ({metric})" if metric else "score"
    return label + ("\nmean ± std over seeds" if bars else "")


UNDEFINED = "undefined"
_MARKERS = "os^Dv"
_LINES = ("-", "--", ":", "-.")


def _style(i: int) -> dict:
    """The i-th line's colour, marker and line style: a line keeps its style in every panel,
    whichever lines a panel lacks. Matplotlib's 10 colours, then the same colours with another
    marker and dashes (the 11th line is not drawn like the first)."""
    return {"color": f"C{i % 10}", "marker": _MARKERS[i // 10 % len(_MARKERS)],
            "linestyle": _LINES[i // 10 % len(_LINES)]}


def _draw(ax, x, y, err, label, style, **kwargs):
    """One line of scores at ``x`` (error bars ``err`` when given). An undefined score (NaN)
    is not a silent gap: an ``x`` in the line's colour at the bottom of the panel marks it,
    named in the legend by :func:`_finish`."""
    ax.errorbar(x, y, yerr=err, label=label, **style, **kwargs)
    _mark_undefined(ax, x, y, style["color"])


_MARK_ROW = 0.035  # the height, in panel fractions, between the marks of two lines


def _mark_undefined(ax, x, y, colour):
    """An ``x`` at the bottom of the panel, whatever its range, at each NaN of ``y``; each
    line's marks a row above the previous line's, so that lines undefined at one ``x`` (parts
    of a shift) are all seen, not the last one drawn over the others."""
    undefined = np.isnan(y)
    if undefined.any():
        row = sum(line.get_gid() == UNDEFINED for line in ax.get_lines())
        ax.plot(x[undefined], np.full(undefined.sum(), 0.03 + _MARK_ROW * row), ls="none", marker="x",
                color=colour, transform=ax.get_xaxis_transform(), gid=UNDEFINED,
                label="_undefined")


def _score_limits(axes):
    """Scores are in [-1, 1] (correlation, cosine): every panel shows [0, 1], or each [-1, 1]
    when a score or an error bar drawn in any of them goes below 0, never cutting a value off
    and keeping the panels comparable."""
    ys = [np.zeros(1)]
    for ax in axes:
        # a NaN error bar (one seed's std) is an empty segment
        ys += [np.asarray(seg, float).reshape(-1, 2)[:, 1] for c in ax.collections
               for seg in c.get_segments()]
        ys += [np.asarray(line.get_ydata(), float) for line in ax.get_lines()
               if line.get_gid() != UNDEFINED]
    ys = np.concatenate(ys)
    for ax in axes:
        ax.set_ylim(-1.05 if ys[np.isfinite(ys)].min() < 0 else 0, 1.05)


def _finish(fig, order, path, title, ncol):
    """One legend below the panels for the lines of all of them (in ``order``), the title
    above, the layout, and the figure saved to ``path`` when given."""
    # as matplotlib labels the lines: a setting keyed by a number (a width, 0.5) had no entry
    order = [str(label) for label in order]
    found, wanted = {}, set(order)
    for ax in fig.axes:
        # the lines by their labels: get_legend_handles_labels leaves out a label that starts
        # with "_" (a model "_base"), whose line was drawn without a name
        for handle in [*ax.containers, *ax.get_lines()]:
            if handle.get_label() in wanted:
                found.setdefault(handle.get_label(), handle)
    undefined = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == UNDEFINED]
    if undefined:  # one entry for the marks of every line's undefined scores
        from matplotlib.lines import Line2D
        found[UNDEFINED] = Line2D([], [], ls="none", marker="x", color="grey")
        order = [*order, UNDEFINED]
    labels = [label for label in order if label in found]
    width, height = fig.get_size_inches()
    if labels:  # as many columns as the longest label leaves room for (about 0.08 in a letter)
        ncol = max(1, min(ncol, int(width / (0.08 * max(map(len, labels)) + 0.8))))
        fig.legend([found[label] for label in labels], labels, loc="lower center",
                   ncol=min(len(labels), ncol), frameon=False)
    if title:
        fig.suptitle(title)
    # the legend below (0.25 in a row of it) keeps its size in inches, whatever the panels;
    # tight_layout leaves the title its room itself
    below = 0.1 + 0.25 * -(-len(labels) // ncol) if labels else 0
    fig.tight_layout(rect=(0, below / height, 1, 1))
    if path is not None:
        save_figure_atomic(fig, path)
    return fig


def plot_accuracy_correlation(table: pd.DataFrame, path=None, title: Optional[str] = None):
    """Spearman correlation of each part's score with accuracy (thesis Fig. 13).

    Args:
        table: columns ``part, family, score`` ("channel"/"layer"), ``spearman``; with a
            ``transforms`` column holding several transform sets of a family, one line each.
            An undefined correlation (NaN: too few models, or equal scores), and a part a line
            has no row of between two it has, is marked, not bridged by the line.
        path: where to save the PNG/PDF (optional).
    """
    plt = _pyplot()
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"Expected `table` to be a DataFrame of correlations, but got a "
                        f"{type(table).__name__}.")
    _check_table(table, "`table`", ("part", "family", "score", "spearman"),
                 "a table of correlations (distributed.analysis.accuracy_correlation)",
                 keys=("family", "score") + ("transforms",) * ("transforms" in table) + ("part",))
    families = list(table["family"].unique())
    if not families:  # matplotlib's "Number of columns must be a positive integer, not 0"
        raise ValueError("Expected correlations to draw (a table of part, family, score and "
                         "spearman), but the table has no rows.")
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 3.4), squeeze=False)
    order = []  # a line's style is the same in every panel
    for col, (ax, fam) in enumerate(zip(axes[0], families)):
        d = table[table["family"] == fam]
        sets = "transforms" in d and d["transforms"].nunique() > 1
        for key, g in d.groupby(["score", "transforms"] if sets else ["score"], sort=False):
            g = _at_parts(g)
            label = f"{key[0]} ({key[1]})" if sets else key[0]
            order += [label] if label not in order else []
            x, y = g["part"].cat.codes.to_numpy(), g["spearman"].to_numpy(float)
            style = _style(order.index(label))
            ax.plot(x, y, label=label, **style)
            _mark_undefined(ax, x, y, style["color"])
        ax.set_xticks(range(len(PARTS)), PARTS)
        ax.set_xlim(-0.2, len(PARTS) - 0.8)
        ax.set_title(f"{fam}: Spearman with top-1 accuracy")
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
        ax.set_xlabel("part")
        if col == 0:
            ax.set_ylabel("Spearman's ρ")
    return _finish(fig, order, path, title, ncol=4)

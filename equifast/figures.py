"""The thesis' figures, drawn with matplotlib from part tables and correlation tables."""
from __future__ import annotations

from typing import Mapping, Optional

import pandas as pd

from ._io import save_figure_atomic

__all__ = ["plot_parts", "plot_shifts", "plot_accuracy_correlation"]

PARTS = ("early", "middle", "late", "pool", "final")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_parts(frames: Mapping[str, pd.DataFrame], path=None, metric: Optional[str] = None,
               title: Optional[str] = None):
    """Channel (left) and layer (right) equivariance per part, one line per setting or model.

    Args:
        frames: label -> part table (columns ``part, family, channel, layer``; optional
            ``channel_std``/``layer_std`` draw error bars, as over seeds).
        path: where to save the PNG/PDF (optional).
        metric: keep only rows of this metric when the tables hold several.

    One row of panels per transform family (translation, rotation, ...), like figures 7, 9,
    10, 11 and 12 of the thesis.
    """
    from .report import rows_of_metric

    plt = _pyplot()
    frames = {label: rows_of_metric(df, metric) for label, df in frames.items()}
    families = []
    for df in frames.values():
        families += [f for f in df["family"].unique() if f not in families]
    fig, axes = plt.subplots(len(families), 2, figsize=(10, 3.4 * len(families)), squeeze=False)
    for row, fam in enumerate(families):
        for col, score in enumerate(("channel", "layer")):
            ax = axes[row][col]
            for i, (label, df) in enumerate(frames.items()):
                d = df[df["family"] == fam]
                d = d.assign(part=pd.Categorical(d["part"].astype(str), PARTS, ordered=True)).sort_values("part")
                if d.empty:
                    continue
                err = d[f"{score}_std"] if f"{score}_std" in d else None
                # at the parts' positions: as strings, a part missing from the first line would
                # be put after the others
                ax.errorbar(d["part"].cat.codes, d[score], yerr=err, marker="o", capsize=3,
                            label=label, color=_colour(i))
            ax.set_xticks(range(len(PARTS)), PARTS)
            ax.set_title(f"{score} equivariance: {fam}")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            if row == len(families) - 1:
                ax.set_xlabel("part")
            if col == 0:
                ax.set_ylabel("score")
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

    Diagonal shifts (``dy == dx``) are drawn at ``dy``; other shifts in the order measured,
    labelled ``(dy,dx)``.
    """
    from matplotlib.ticker import MaxNLocator

    from .report import rows_of_metric

    plt = _pyplot()
    frames = {label: df for label, df in frames.items() if not df.empty}
    if not frames:
        raise ValueError("Expected translations to draw (a table from shift_table), but the "
                         "tables hold none; measure with shifts, e.g. ef.diagonal_shifts(1, 16).")
    rows = []
    for label, df in frames.items():
        df = rows_of_metric(df, metric)
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
                x = [where[s] for s in zip(g["dy"], g["dx"])]
                err = g[f"{score}_std"].to_numpy(float) if f"{score}_std" in g else None
                ax.errorbar(x, g[score].to_numpy(float), yerr=err, marker="o", ms=3, capsize=2,
                            label=part, color=_colour(PARTS.index(part)))
            if diagonal:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            else:
                ax.set_xticks(range(len(shifts)), [f"({dy},{dx})" for dy, dx in shifts],
                              rotation=45)
            measured = set(d["metric"]) if "metric" in d else set()
            ax.set_title(f"{score}: {label}, {fam}" + (f", {min(measured)}" if len(measured) == 1
                                                       else ""), fontsize="medium")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            ax.set_xlabel("diagonal shift (pixels)" if diagonal else "shift (dy,dx), pixels")
            if col == 0:
                ax.set_ylabel("score")
    return _finish(fig, PARTS, path, title, ncol=len(PARTS))


def _colour(i: int) -> str:
    """The i-th colour of matplotlib's cycle: a line keeps its colour in every panel, whichever
    lines a panel lacks."""
    return f"C{i % 10}"


def _finish(fig, order, path, title, ncol):
    """One legend below the panels for the lines of all of them (in ``order``), the title
    above, the layout, and the figure saved to ``path`` when given."""
    found = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    labels = [label for label in order if label in found]
    width, height = fig.get_size_inches()
    if labels:  # as many columns as the longest label leaves room for (about 0.08 in a letter)
        ncol = max(1, min(ncol, int(width / (0.08 * max(map(len, labels)) + 0.8))))
        fig.legend([found[label] for label in labels], labels, loc="lower center",
                   ncol=min(len(labels), ncol), frameon=False)
    if title:
        fig.suptitle(title)
    # the legend below (0.25 in a row of it) and the title above keep their size in inches,
    # whatever the panels
    below = 0.1 + 0.25 * -(-len(labels) // ncol) if labels else 0
    fig.tight_layout(rect=(0, below / height, 1, 1 - 0.3 / height if title else 1))
    if path is not None:
        save_figure_atomic(fig, path)
    return fig


def plot_accuracy_correlation(table: pd.DataFrame, path=None, title: Optional[str] = None):
    """Spearman correlation of each part's score with accuracy (thesis Fig. 13).

    Args:
        table: columns ``part, family, score`` ("channel"/"layer"), ``spearman``; with a
            ``transforms`` column holding several transform sets of a family, one line each.
    """
    plt = _pyplot()
    families = list(table["family"].unique())
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 3.4), squeeze=False)
    for ax, fam in zip(axes[0], families):
        d = table[table["family"] == fam]
        sets = "transforms" in d and d["transforms"].nunique() > 1
        for key, g in d.groupby(["score", "transforms"] if sets else ["score"], sort=False):
            g = g.assign(part=pd.Categorical(g["part"].astype(str), PARTS, ordered=True)).sort_values("part")
            label = f"{key[0]} ({key[1]})" if sets else key[0]
            ax.plot(g["part"].cat.codes, g["spearman"], marker="o", label=label)
        ax.set_xticks(range(len(PARTS)), PARTS)
        ax.set_title(f"{fam}: Spearman with top-1 accuracy")
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        save_figure_atomic(fig, path)
    return fig

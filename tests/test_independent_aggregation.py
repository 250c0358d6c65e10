"""An independent oracle for equifast's aggregation over shifts and runs, and for the numbers
its figures draw, written from SPEC.md (section 1, "Aggregation") and the README ("What it
measures") only.

From a report's per-point rows (``report.points``, which test_independent_measure checks
against its own NumPy oracle) everything here is recomputed in plain Python (``math.fsum``
means, float64): the per-shift part scores behind ``shifts.png`` (thesis figure 8), the part
scores, their mean and sample std (ddof 1) over runs, grouped by meta keys, and what
``figure.png`` / ``shifts.png`` / a study's figure draw. Nothing of equifast's report,
aggregate or figures code is used to compute an expected value.

The rules, as the contract states them:
- a translation's name ``translation(dy,dx[,zero][,nearest])`` gives its shift and its
  family (``translation``, ``translation-zero``, ``translation-nearest``,
  ``translation-zero-nearest``);
- per part and shift: the plain mean over the part's points, an undefined (NaN) point skipped;
  ``undefined_fraction`` the mean over all the part's points (an all-undefined point's 1.0 in);
- per part and family: per point the mean over the family's transforms, then the mean over
  the part's points, undefined values skipped at both steps;
- over runs: mean and std (ddof 1) over every run; a part undefined in one run is undefined.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import equifast as ef
from equifast.report import Report, combine_runs

PARTS = ("early", "middle", "late", "pool", "final")
SCORES = ("channel", "layer", "undefined_fraction")
NAN = float("nan")
ATOL = 1e-12  # float64 means of a few values, summed in another order


# --------------------------------------------------------------------------------------
# The oracle.
# --------------------------------------------------------------------------------------

def shift_of(name: str):
    """``(dy, dx, family)`` of a translation's name, or None for any other transform."""
    if not (name.startswith("translation(") and name.endswith(")")):
        return None
    args = name[len("translation("):-1].split(",")
    opts = set(args[2:])
    assert opts <= {"zero", "nearest"}, name
    family = "translation" + ("-zero" if "zero" in opts else "") + ("-nearest" if "nearest" in opts else "")
    return int(args[0]), int(args[1]), family


def mean_defined(values):
    """The mean of the values that are not NaN (NaN if none)."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    return math.fsum(vals) / len(vals) if vals else NAN


def rows_of(points: pd.DataFrame):
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in points.to_dict("records")]


def oracle_shifts(points: pd.DataFrame) -> dict:
    """{(metric, family, part, transform): {dy, dx, channel, layer, undefined_fraction, n_points}}."""
    groups = {}
    for r in rows_of(points):
        s = shift_of(str(r["transform"]))
        if s is None:
            continue
        key = (r["metric"], s[2], str(r["part"]), str(r["transform"]))
        groups.setdefault(key, []).append(r)
    out = {}
    for key, rows in groups.items():
        dy, dx, _ = shift_of(key[3])
        out[key] = {"dy": dy, "dx": dx, "n_points": len({r["point"] for r in rows}),
                    **{s: mean_defined(r[s] for r in rows) for s in SCORES}}
    return out


def oracle_parts(points: pd.DataFrame) -> dict:
    """{(metric, family, part): {channel, layer, undefined_fraction, n_points}}."""
    per_point = {}
    for r in rows_of(points):
        key = (r["metric"], str(r["family"]), str(r["part"]), r["point"])
        per_point.setdefault(key, []).append(r)
    parts = {}
    for (metric, fam, part, point), rows in per_point.items():   # step 2: family mean per point
        means = {s: mean_defined(r[s] for r in rows) for s in SCORES}
        parts.setdefault((metric, fam, part), []).append(means)
    return {key: {"n_points": len(ps), **{s: mean_defined(p[s] for p in ps) for s in SCORES}}
            for key, ps in parts.items()}                        # step 3: mean over points


def over_seeds(values):
    """Mean and sample std (ddof 1) over every run: NaN if any run is NaN."""
    n = len(values)
    if any(math.isnan(v) for v in values):
        return NAN, NAN
    m = math.fsum(values) / n
    return m, (math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else NAN)


def oracle_combine(runs, by=(), table=oracle_parts) -> dict:
    """runs: [(points, meta)] -> {(*by values, metric, family, part[, transform]):
    {<s>, <s>_std, runs}}; a key missing from one run of its group counts as undefined there."""
    groups = {}
    for points, meta in runs:
        groups.setdefault(tuple(meta.get(k) for k in by), []).append(table(points))
    out = {}
    for g, tables in groups.items():
        for key in dict.fromkeys(k for t in tables for k in t):
            row = {"runs": len(tables)}
            for s in SCORES:
                vals = [t[key][s] if key in t else NAN for t in tables]
                row[s], row[f"{s}_std"] = over_seeds(vals)
            out[g + key] = row
    return out


def same(a, b, atol=ATOL) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol


def diff(a, b) -> float:
    a, b = float(a), float(b)
    return 0.0 if math.isnan(a) or math.isnan(b) else abs(a - b)


def check_table(table: pd.DataFrame, mine: dict, keys, values) -> float:
    """Every row of ``table`` (keyed by the columns ``keys``) against ``mine``, and every key of
    ``mine`` in ``table``; returns the largest difference."""
    got = {}
    for r in rows_of(table):
        key = tuple(str(r[k]) if k in ("part", "family", "transform") else r[k] for k in keys)
        assert key not in got, ("duplicate row", key)
        got[key] = r
    assert set(got) == set(mine), (sorted(set(got) ^ set(mine), key=str)[:5])
    worst = 0.0
    for key, want in mine.items():
        for v in values:
            assert same(got[key][v], want[v]), (key, v, got[key][v], want[v])
            worst = max(worst, diff(got[key][v], want[v]))
    return worst


# --------------------------------------------------------------------------------------
# Runs: resnet18 with random weights at four seeds, 3 images of 64 px (maps of 16, 16, 8, 4
# and 2), four shift families (diagonal and not), a rotation; two metrics.
# --------------------------------------------------------------------------------------

TRANSFORMS = (ef.diagonal_shifts(1, 3) + [ef.Translation(2, -3)]
              + ef.diagonal_shifts(1, 2, mode="zero") + ef.diagonal_shifts(2, 3, rounding="nearest")
              + [ef.Translation(2, 2, mode="zero", rounding="nearest"), ef.Rotation(1)])


@pytest.fixture(scope="module")
def runs():
    torchvision = pytest.importorskip("torchvision")
    images = (ef.data.embedded_photos(3, 64, seed=1) - 0.45) / 0.25
    reports = []
    for seed in range(4):
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(num_classes=10).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reports.append(ef.measure(model, images, transforms=TRANSFORMS, device="cpu",
                                      batch_size=16, metric=["correlation", "cosine"]))
    return reports


def undefine(points, point=None, part=None, transform=None, family=None, metric=None,
             scores=("channel", "layer")):
    """Points with the chosen rows' scores made undefined (as equifast reports them)."""
    p = points.copy()
    sel = np.ones(len(p), bool)
    for col, val in (("point", point), ("part", part), ("transform", transform),
                     ("family", family), ("metric", metric)):
        if val is not None:
            sel &= (p[col].astype(str) == val).to_numpy()
    assert sel.any()
    for s in scores:
        p.loc[sel, s] = NAN
    if "channel" in scores:
        p.loc[sel, "undefined_fraction"] = 1.0
    return p


def edited(report) -> Report:
    """A copy with undefined scores in chosen places."""
    p = report.points
    p = undefine(p, point="layer1.0", transform="translation(2,2)")       # one point at one shift
    p = undefine(p, part="middle", transform="translation(1,1,zero)")     # a whole part at a shift
    p = undefine(p, point="layer3.1", family="translation-nearest", metric="correlation")  # a point, whole family
    p = undefine(p, point="layer4.0", transform="translation(3,3,nearest)", scores=("layer",))
    p = undefine(p, point="pool", family="rotation", metric="correlation")  # a part, whole family
    p = undefine(p, point="final", transform="translation(2,-3)", metric="cosine")
    return Report(p, dict(report.meta))


SHIFT_KEYS = ["metric", "family", "part", "transform"]
PART_KEYS = ["metric", "family", "part"]


# --------------------------------------------------------------------------------------
# 1. Report.shifts (thesis figure 8) and Report.parts.
# --------------------------------------------------------------------------------------

def test_shifts_and_parts_of_real_runs_agree_with_the_oracle(runs):
    worst = 0.0
    for rep in runs + [edited(runs[1])]:
        P = rep.points
        # the family column the report gives each translation is the one its name says
        for r in rows_of(P):
            s = shift_of(r["transform"])
            if s is not None:
                assert r["family"] == s[2], r["transform"]
        mine = oracle_shifts(P)
        assert {k[1] for k in mine} == {"translation", "translation-zero", "translation-nearest",
                                        "translation-zero-nearest"}
        worst = max(worst, check_table(rep.shifts, mine, SHIFT_KEYS,
                                       ["dy", "dx", "n_points", *SCORES]))
        worst = max(worst, check_table(rep.parts, oracle_parts(P), PART_KEYS, ["n_points", *SCORES]))
        # each part's shifts in the order measured; parts early..final
        order = [t.name for t in TRANSFORMS]
        for (metric, fam), g in rep.shifts.groupby(["metric", "family"], sort=False):
            for part, h in g.groupby(g["part"].astype(str), sort=False):
                names = list(h["transform"])
                assert names == sorted(names, key=order.index), (metric, fam, part)
            assert list(dict.fromkeys(g["part"].astype(str))) == list(PARTS)
    assert worst < 1e-15


def test_undefined_points_and_entries_are_skipped_at_each_shift(runs):
    rep = edited(runs[1])
    S = rep.shifts.assign(part=rep.shifts["part"].astype(str)).set_index(SHIFT_KEYS)
    P = runs[1].points
    pts = P[(P.metric == "correlation") & (P["transform"] == "translation(2,2)") & (P.part == "early")]
    others = pts[pts.point != "layer1.0"]
    row = S.loc[("correlation", "translation", "early", "translation(2,2)")]
    assert row.n_points == 3   # the undefined point is one of the part's, its score left out
    assert math.isclose(row.channel, math.fsum(others.channel) / 2, rel_tol=0, abs_tol=ATOL)
    assert math.isclose(row.layer, math.fsum(others.layer) / 2, rel_tol=0, abs_tol=ATOL)
    assert math.isclose(row.undefined_fraction,
                        (1.0 + math.fsum(others.undefined_fraction)) / 3, rel_tol=0, abs_tol=ATOL)
    # a part with no defined point at a shift has no score there, and a fraction of 1
    for metric in ("correlation", "cosine"):
        row = S.loc[(metric, "translation-zero", "middle", "translation(1,1,zero)")]
        assert math.isnan(row.channel) and math.isnan(row.layer) and row.undefined_fraction == 1.0
    # a layer score undefined alone: the channel score keeps all three points
    nearest = P[(P.metric == "correlation") & (P["transform"] == "translation(3,3,nearest)") & (P.part == "late")]
    row = S.loc[("correlation", "translation-nearest", "late", "translation(3,3,nearest)")]
    kept = nearest[~nearest.point.isin(["layer3.1"])]
    assert math.isclose(row.channel, math.fsum(kept.channel) / 2, rel_tol=0, abs_tol=ATOL)
    assert math.isclose(row.layer, float(kept[kept.point == "layer4.1"].layer.iloc[0]),
                        rel_tol=0, abs_tol=ATOL)


# --------------------------------------------------------------------------------------
# 2. Over runs: combine_runs, in memory and read back from disk; the studies' summarize.
# --------------------------------------------------------------------------------------

COMBINED = ["channel", "channel_std", "layer", "layer_std", "undefined_fraction",
            "undefined_fraction_std", "runs"]


def test_combine_runs_is_the_mean_and_sample_std_over_every_run(runs):
    reports = [runs[0], edited(runs[1]), runs[2], runs[3]]
    mine = oracle_combine([(r.points, r.meta) for r in reports])
    worst = check_table(combine_runs(reports), mine, PART_KEYS, COMBINED)
    assert worst < 1e-15
    # the undefined part of one run is undefined over the runs; a part undefined in the
    # edited run at some shifts only is not (the family mean skips them in that run)
    assert math.isnan(mine[("correlation", "rotation", "pool")]["channel"])
    assert not math.isnan(mine[("correlation", "translation-zero", "middle")]["channel"])
    assert mine[("correlation", "rotation", "pool")]["undefined_fraction"] == pytest.approx(
        (0 + 1 + 0 + 0) / 4)
    # the std is the sample one (ddof 1), not the population one
    one = mine[("cosine", "translation", "early")]
    vals = [oracle_parts(r.points)[("cosine", "translation", "early")]["channel"] for r in reports]
    assert one["channel_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
    assert one["channel_std"] != pytest.approx(np.std(vals, ddof=0), rel=1e-6)


def test_combine_runs_groups_by_meta_keys(runs):
    reports = [Report(r.points, {**r.meta, "setting": s, "width": w})
               for r, s, w in zip([runs[0], edited(runs[1]), runs[2], runs[3]],
                                  ["a", "a", "b", "b"], [1, 2, 1, 1])]
    for by in (["setting"], ["setting", "width"], ["width"]):
        mine = oracle_combine([(r.points, r.meta) for r in reports], by=by)
        worst = check_table(combine_runs(reports, by=by), mine, by + PART_KEYS, COMBINED)
        assert worst < 1e-15
    one = combine_runs(reports, by=["setting", "width"])
    assert set(one["runs"]) == {1, 2} and one[one.runs == 1]["channel_std"].isna().all()


@pytest.mark.parametrize("mixed", [(".json", ".csv", ".parquet")])
def test_runs_read_back_from_disk_combine_as_in_memory(runs, tmp_path, mixed):
    reports = [Report(r.points, {**r.meta, "setting": s})
               for r, s in zip([runs[0], edited(runs[1]), runs[2], runs[3]], ["a", "a", "a", "b"])]
    loaded = []
    for i, (r, suffix) in enumerate(zip(reports, mixed)):
        r.save(tmp_path / f"run{i}{suffix}")
        loaded.append(Report.load(tmp_path / f"run{i}{suffix}"))
    for back, r in zip(loaded, reports):
        # the per-shift and per-part tables of a report read back are the oracle's of its points
        check_table(back.shifts, oracle_shifts(r.points), SHIFT_KEYS, ["dy", "dx", *SCORES])
        check_table(back.parts, oracle_parts(r.points), PART_KEYS, list(SCORES))
    combo = loaded + [reports[3]]  # three read back, one in memory
    for by in ([], ["setting"]):
        mine = oracle_combine([(r.points, r.meta) for r in reports], by=by)
        table = combine_runs(combo, by=by)
        assert check_table(table, mine, by + PART_KEYS, COMBINED) < 1e-15
        # to the last bit what the same runs give in memory
        pd.testing.assert_frame_equal(
            table.astype({"part": str}), combine_runs(reports, by=by).astype({"part": str}),
            check_exact=True, check_dtype=False)


def test_a_part_missing_from_one_run_is_not_averaged_over_the_others(runs):
    """README: over seeds the mean and std take every run; a part undefined in one run is
    undefined in them. A run without the part at all (no point of it) is such a run."""
    P = runs[2].points
    short = Report(P[P.part != "late"].copy(), dict(runs[2].meta))
    reports = [runs[0], runs[1], short]
    mine = oracle_combine([(r.points, r.meta) for r in reports])
    table = combine_runs(reports)
    late = table[table.part.astype(str) == "late"]
    assert len(late) == 10 and late["channel"].isna().all() and late["layer"].isna().all()
    assert (late["runs"] == 3).all() and late["undefined_fraction"].isna().all()
    assert check_table(table, mine, PART_KEYS, COMBINED) < 1e-15
    # the same within groups of a meta key, one of them of runs without it (None)
    reports.append(Report(runs[3].points, {**runs[3].meta, "setting": "x"}))
    mine = oracle_combine([(r.points, r.meta) for r in reports], by=["setting"])
    assert check_table(combine_runs(reports, by=["setting"]), mine, ["setting"] + PART_KEYS,
                       COMBINED) < 1e-15
    assert math.isnan(mine[(None, "correlation", "translation", "late")]["channel"])
    assert not math.isnan(mine[("x", "correlation", "translation", "late")]["channel"])


def study_tables(runs, shifts=False, metrics=("correlation",)):
    """What training.studies.measure_study returns for these reports as two settings x seeds,
    (the parts, with each seed's accuracy, or the shifts), built as it builds them."""
    rows = []
    for i, rep in enumerate([runs[0], edited(runs[1]), runs[2], runs[3]]):
        setting, seed = ("a", "b")[i // 2], i % 2
        table = rep.shifts if shifts else rep.parts.assign(test_acc=0.1 + 0.01 * i)
        table = table[table.metric.isin(metrics)]
        rows.append(table.assign(setting=setting, recipe=f"r-{setting}", seed=seed)[
            ["setting", "recipe", "seed"] + list(table.columns)])
    return pd.concat(rows, ignore_index=True)


def oracle_summary(runs, shifts, metrics=("correlation",)):
    reps = [runs[0], edited(runs[1]), runs[2], runs[3]]
    table = oracle_shifts if shifts else oracle_parts
    keep = lambda t: {k: v for k, v in t.items() if k[0] in metrics}
    mine = oracle_combine([(r.points, {"setting": ("a", "b")[i // 2]}) for i, r in enumerate(reps)],
                          by=["setting"], table=lambda p: keep(table(p)))
    if not shifts:
        for (setting, *_), row in mine.items():
            accs = [0.1 + 0.01 * i for i in range(4) if ("a", "b")[i // 2] == setting]
            row["test_acc"], row["test_acc_std"] = over_seeds(accs)
    return mine


def test_study_summary_agrees_with_the_oracle(runs):
    from equifast.training.studies import summarize

    for shifts in (False, True):
        summary = summarize(study_tables(runs, shifts))
        mine = oracle_summary(runs, shifts)
        s = summary.rename(columns={"channel_mean": "channel", "layer_mean": "layer",
                                    "undefined_fraction_mean": "undefined_fraction",
                                    "test_acc_mean": "test_acc", "n_seeds": "runs"})
        s = s.assign(metric="correlation")
        keys = ["setting", "metric", "family", "part"] + (["transform"] if shifts else [])
        # the study's summary dropped undefined_fraction: scores over the entries left, unsaid
        values = COMBINED + ([] if shifts else ["test_acc", "test_acc_std"])
        assert check_table(s, mine, keys, values) < 1e-15
        assert list(dict.fromkeys(summary.setting)) == ["a", "b"]


def test_study_summary_keeps_metrics_apart(runs):
    """measure_study passes ``metric`` to equifast.measure, which takes both metrics at once:
    their rows are not two more seeds of one score."""
    from equifast.training.studies import summarize

    for shifts in (False, True):
        metrics = ("correlation", "cosine")
        summary = summarize(study_tables(runs, shifts, metrics))
        mine = oracle_summary(runs, shifts, metrics)
        s = summary.rename(columns={"channel_mean": "channel", "layer_mean": "layer",
                                    "n_seeds": "runs"})
        keys = ["setting", "metric", "family", "part"] + (["transform"] if shifts else [])
        assert check_table(s, mine, keys, ["channel", "channel_std", "layer", "layer_std", "runs"]) < 1e-15


# --------------------------------------------------------------------------------------
# 3. The figures draw the tables' numbers.
# --------------------------------------------------------------------------------------

def lines_of(ax):
    """{label: (x, y, err or None)} of the errorbar lines of a panel, and {colour: x} of its
    undefined marks."""
    out = {}
    for c in ax.containers:
        line = c.lines[0]
        err = None
        if c.has_yerr:
            segs = [np.asarray(s, float) for s in c.lines[2][0].get_segments()]
            # a NaN mean or std draws an empty segment
            err = {float(s[0, 0]): (float(s[0, 1]), float(s[1, 1])) for s in segs if s.size}
        out[c.get_label()] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float),
                              err, line.get_color())
    marks = {}
    for line in ax.get_lines():
        if line.get_gid() == "undefined":
            heights = np.asarray(line.get_ydata())  # a row of its own for each line's marks
            assert np.all(heights == heights[0]) and heights[0] >= 0.03
            assert line.get_transform() == ax.get_xaxis_transform()  # at the panel's bottom
            marks.setdefault(line.get_color(), []).extend(np.asarray(line.get_xdata(), float))
    return out, marks


def check_line(drawn, marks, xs, ys, stds=None):
    """A drawn line is (xs, ys); each NaN of ys has an undefined mark at its x in the line's
    colour; error bars (when ``stds``) go from y - std to y + std."""
    x, y, err, colour = drawn
    assert list(x) == list(xs)
    assert all(same(a, b) for a, b in zip(y, ys)), (list(y), list(ys))
    assert len(y) == len(ys)
    undefined = [xx for xx, yy in zip(xs, ys) if math.isnan(yy)]
    assert sorted(marks.get(colour, [])) == sorted(undefined)
    if stds is not None:
        want = {xx: (yy - s, yy + s) for xx, yy, s in zip(xs, ys, stds)
                if not (math.isnan(yy) or math.isnan(s))}
        got = {k: v for k, v in (err or {}).items() if not any(map(math.isnan, v))}
        assert set(got) == set(want)
        for k in want:
            assert same(got[k][0], want[k][0]) and same(got[k][1], want[k][1]), (k, got[k], want[k])


def test_parts_figure_draws_the_oracles_part_scores(runs, tmp_path):
    rep = edited(runs[1])
    mine = oracle_parts(rep.points)
    fig = rep.plot(tmp_path / "figure.png", label="m")  # correlation: the default of two metrics
    fams = sorted({k[1] for k in mine})
    titles = {ax.get_title(): ax for ax in fig.axes}
    n = 0
    for fam in fams:
        for score in ("channel", "layer"):
            drawn, marks = lines_of(titles[f"{score} equivariance: {fam}"])
            ys = [mine[("correlation", fam, p)][score] for p in PARTS]
            check_line(drawn["m"], marks, range(5), ys)
            n += sum(map(math.isnan, ys))
    assert n == 2  # pool's rotation scores: an undefined mark each, at x = 3
    assert marks_at(titles["channel equivariance: rotation"]) == [3.0]


def marks_at(ax):
    return sorted(x for xs in lines_of(ax)[1].values() for x in xs)


def test_shift_figure_draws_the_oracles_shift_scores(runs, tmp_path):
    rep = edited(runs[1])
    mine = oracle_shifts(rep.points)
    order = [t.name for t in TRANSFORMS]
    for metric in ("correlation", "cosine"):
        fig = rep.plot_shifts(tmp_path / f"shifts-{metric}.png", label="m", metric=metric)
        fams = sorted({k[1] for k in mine})
        assert len(fig.axes) == 2 * len(fams)
        n = 0
        for row, fam in enumerate(fams):
            names = sorted({k[3] for k in mine if k[1] == fam}, key=order.index)
            shifts = [shift_of(t)[:2] for t in names]
            diagonal = all(dy == dx for dy, dx in shifts)
            xs = [dy for dy, _ in shifts] if diagonal else list(range(len(shifts)))
            for col, score in enumerate(("channel", "layer")):
                ax = fig.axes[2 * row + col]
                assert ax.get_title().startswith(f"{score}: m, {fam}, {metric}")
                drawn, marks = lines_of(ax)
                assert list(drawn) == list(PARTS)
                for part in PARTS:
                    ys = [mine[(metric, fam, part, t)][score] for t in names]
                    check_line(drawn[part], {drawn[part][3]: marks.get(drawn[part][3], [])}, xs, ys)
                    n += sum(map(math.isnan, ys))
                if not diagonal:
                    assert [t.get_text() for t in ax.get_xticklabels()] == [f"({a},{b})" for a, b in shifts]
        # channel and layer of middle at translation(1,1,zero) (both metrics), and of final
        # at translation(2,-3) in cosine only
        assert n == (2 if metric == "correlation" else 4), (metric, n)


def test_combined_runs_and_study_figures_draw_means_and_stds(runs):
    from equifast.figures import plot_parts
    from equifast.training.studies import plot_study, summarize

    reports = [runs[0], edited(runs[1]), runs[2], runs[3]]
    mine = oracle_combine([(r.points, r.meta) for r in reports])
    fig = plot_parts({"seeds": combine_runs(reports)}, metric="cosine")
    titles = {ax.get_title(): ax for ax in fig.axes}
    for fam in sorted({k[1] for k in mine}):
        for score in ("channel", "layer"):
            drawn, marks = lines_of(titles[f"{score} equivariance: {fam}"])
            rows = [mine[("cosine", fam, p)] for p in PARTS]
            check_line(drawn["seeds"], marks, range(5), [r[score] for r in rows],
                       [r[f"{score}_std"] for r in rows])
    # a study's figures: parts (one line per setting) and shifts (one row per setting and family)
    summary = summarize(study_tables(runs))
    mine = oracle_summary(runs, False)
    fig = plot_study(summary, title="t")
    titles = {ax.get_title(): ax for ax in fig.axes}
    for fam in sorted({k[2] for k in mine}):
        for score in ("channel", "layer"):
            drawn, marks = lines_of(titles[f"{score} equivariance: {fam}"])
            for setting in ("a", "b"):
                rows = [mine[(setting, "correlation", fam, p)] for p in PARTS]
                check_line(drawn[setting], {drawn[setting][3]: marks.get(drawn[setting][3], [])},
                           range(5), [r[score] for r in rows], [r[f"{score}_std"] for r in rows])
    undefined = titles["channel equivariance: rotation"]
    assert marks_at(undefined) == [3.0]  # setting a's pool: undefined in one of its seeds
    summary = summarize(study_tables(runs, shifts=True))
    mine = oracle_summary(runs, True)
    fig = plot_study(summary)
    order = [t.name for t in TRANSFORMS]
    for ax in fig.axes:
        score, rest = ax.get_title().replace("\n", " ").split(": ", 1)
        setting, fam = rest.split(", ")[:2]
        names = sorted({k[4] for k in mine if k[0] == setting and k[2] == fam}, key=order.index)
        shifts = [shift_of(t)[:2] for t in names]
        xs = [dy for dy, _ in shifts] if all(a == b for a, b in shifts) else list(range(len(names)))
        drawn, marks = lines_of(ax)
        for part in PARTS:
            rows = [mine[(setting, "correlation", fam, part, t)] for t in names]
            check_line(drawn[part], {drawn[part][3]: marks.get(drawn[part][3], [])}, xs,
                       [r[score] for r in rows], [r[f"{score}_std"] for r in rows])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")

"""Reports: SPEC columns, aggregation order, files, figures, metric bias, seeds."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from equifast.report import Report, combine_runs


def _rows():
    rows = []
    # early: p0, p1; middle: p2; pool; final. Two translation transforms, one rotation.
    for order, (point, part) in enumerate([("p0", "early"), ("p1", "early"), ("p2", "middle"),
                                           ("pool", "pool"), ("final", "final")]):
        for t, fam, base in (("translation(1,1)", "translation", 0.9), ("translation(2,2)", "translation", 0.7),
                             ("rotation(90)", "rotation", 0.3)):
            for metric, shift in (("correlation", 0.0), ("cosine", 0.05 * order)):
                c = base - 0.1 * order + shift
                rows.append({"point": point, "part": part, "transform": t, "family": fam, "metric": metric,
                             "channel": c, "layer": c + 0.05, "undefined_fraction": 0.1 * (t == "rotation(90)"),
                             "n_images": 4, "order": order, "mean_activation": float(order)})
    return rows


def test_parts_follow_the_spec_aggregation_order():
    rep = Report.from_rows(_rows(), {"model": "toy"})
    parts = rep.parts[rep.parts.metric == "correlation"]
    early_t = parts[(parts.part == "early") & (parts.family == "translation")].iloc[0]
    # per point: mean over shifts (0.8 - 0.1*order); per part: mean over p0, p1
    assert math.isclose(early_t.channel, ((0.8) + (0.7)) / 2)
    assert math.isclose(early_t.layer, early_t.channel + 0.05)
    assert early_t.n_points == 2
    assert set(parts.part.astype(str)) == {"early", "middle", "pool", "final"}
    for col in ("point", "part", "transform", "family", "channel", "layer", "undefined_fraction", "n_images"):
        assert col in rep.points.columns
    for col in ("part", "family", "channel", "layer"):
        assert col in rep.parts.columns


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_save_load_round_trip(tmp_path, suffix):
    rows = _rows()
    for i, r in enumerate(rows):  # full float64 digits, a NaN, a column of NaN only
        r.update(channel=r["channel"] + i * 1.234567890123e-13, dead=float("nan"))
    rows[3]["layer"] = float("nan")
    rep = Report.from_rows(rows, {"model": "toy", "accuracy": 0.5})
    files = rep.save(tmp_path / f"r{suffix}")
    assert all(f.exists() for f in files) and not list(tmp_path.glob("*.tmp"))
    back = Report.load(tmp_path / f"r{suffix}")
    pd.testing.assert_frame_equal(back.points[rep.points.columns], rep.points, check_exact=True)
    def strict(constant):  # NaN / Infinity are not JSON: other readers (jq, JavaScript) refuse them
        raise AssertionError(f"{constant} written into a .json file")
    for f in files:
        if f.suffix == ".json":
            json.loads(f.read_text(), parse_constant=strict)
    assert back.meta["model"] == "toy" and back.accuracy == 0.5
    with pytest.raises(FileNotFoundError):
        Report.load(tmp_path / f"missing{suffix}")
    # a damaged file is named, not a bare JSONDecodeError / KeyError
    damaged = tmp_path / ("r.json" if suffix == ".json" else "r.meta.json")
    damaged.write_text('{"points": [')
    with pytest.raises(ValueError, match=r"r(\.meta)?\.json'.*not valid JSON"):
        Report.load(tmp_path / f"r{suffix}")
    if suffix == ".json":
        damaged.write_text('{"meta": {}}')
        with pytest.raises(ValueError, match="has no 'points'"):
            Report.load(damaged)


def test_plot_writes_a_png(tmp_path):
    rep = Report.from_rows(_rows(), {"model": "toy"})
    other = Report.from_rows(_rows(), {"model": "toy2"})
    fig = rep.plot(tmp_path / "f.png", others={"toy2": other})
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # saved atomically, as PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]
    assert len(fig.axes) == 4  # two families x (channel, layer)


def test_metric_bias_correlates_cosine_with_activation():
    pattern = [0.5, 0.7, 0.4, 0.6, 0.5]
    rows = []
    for r in _rows():
        o = r["order"]
        c = 0.1 + 0.15 * o if r["metric"] == "cosine" else pattern[o]  # cosine follows the activation
        rows.append(dict(r, channel=c))
    bias = Report.from_rows(rows).metric_bias()
    corr = bias["correlation"].set_index(["family", "metric"])["correlation_with_mean_activation"]
    assert math.isclose(corr[("rotation", "cosine")], 1.0)
    # only the points before global pooling (p0, p1, p2), as the thesis' "after each residual block"
    assert math.isclose(corr[("rotation", "correlation")], float(np.corrcoef(pattern[:3], range(3))[0, 1]))
    every = Report.from_rows(rows).metric_bias(parts=None)["correlation"].set_index(
        ["family", "metric"])["correlation_with_mean_activation"]
    assert math.isclose(every[("rotation", "correlation")], float(np.corrcoef(pattern, range(5))[0, 1]))
    assert {"mean_activation", "cosine", "correlation"} <= set(bias["table"].columns)
    only = Report.from_rows([r for r in _rows() if r["metric"] == "correlation"])
    with pytest.raises(ValueError, match="cosine"):
        only.metric_bias()


def test_combine_runs_mean_and_std():
    reps = []
    for seed, bump in enumerate((0.0, 0.02, 0.04)):
        rows = [dict(r, channel=r["channel"] + bump) for r in _rows()]
        reps.append(Report.from_rows(rows, {"setting": "a", "seed": seed}))
    out = combine_runs(reps, by=["setting"])
    row = out[(out.part == "early") & (out.family == "translation") & (out.metric == "correlation")].iloc[0]
    assert math.isclose(row.channel, 0.75 + 0.02) and math.isclose(row.channel_std, 0.02)
    assert row.runs == 3


def test_summary_of_two_metrics_is_correlations():
    rep = Report.from_rows(_rows())
    assert rep.summary().equals(rep.summary("correlation"))
    assert not rep.summary("cosine").equals(rep.summary("correlation"))


def test_parts_figure_keeps_the_parts_in_order():
    full = Report.from_rows(_rows())
    few = Report.from_rows([r for r in _rows() if r["part"] in ("pool", "final")])
    fig = few.plot(None, others={"full": full})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["early", "middle", "late", "pool", "final"]
    xs = [list(line.get_xdata()) for line in ax.get_lines() if len(line.get_xdata()) > 1]
    assert [3, 4] in xs and [0, 1, 3, 4] in xs  # pool and final at their places in both lines


def test_accuracy_figure_draws_each_transform_set_of_a_family_apart():
    from equifast.figures import plot_accuracy_correlation
    from equifast.points import PARTS

    rows = [{"part": p, "family": "translation", "transforms": t, "score": "channel",
             "spearman": rho + 0.1 * i}
            for t, rho in (("circular", 0.2), ("zero", -0.4)) for i, p in enumerate(PARTS)]
    fig = plot_accuracy_correlation(pd.DataFrame(rows))
    drawn = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines()
             if line.get_label().startswith("channel")}
    # one line per transform set, each part at its place (not one zigzag line through both)
    assert drawn == {"channel (circular)": [0, 1, 2, 3, 4], "channel (zero)": [0, 1, 2, 3, 4]}

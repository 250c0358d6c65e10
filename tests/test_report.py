"""Reports: SPEC columns, aggregation order, files, figures, metric bias, seeds."""
import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from equifast.report import Report, combine_runs, metric_bias


def _rows(late=False):
    rows = []
    # early: p0, p1; middle: p2; pool; final (``late``: p3 in late too, before pool). Two
    # translation transforms, one rotation.
    points = [("p0", "early"), ("p1", "early"), ("p2", "middle"), ("pool", "pool"), ("final", "final")]
    for order, (point, part) in enumerate(points[:3] + [("p3", "late")] * late + points[3:]):
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


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_numpy_values_in_meta_come_back_as_the_numbers_they_were(tmp_path, suffix):
    # a seed or setting taken from a pandas table is a NumPy scalar: it was saved as text
    # ("3"), so runs loaded back no longer grouped with runs of the Python int 3
    meta = {"seed": np.int64(3), "width": np.float32(0.5), "augment": np.bool_(True),
            "milestones": np.array([3, 6]), "model": "toy"}
    rep = Report.from_rows(_rows(), meta)
    rep.save(tmp_path / f"r{suffix}")
    back = Report.load(tmp_path / f"r{suffix}").meta
    want = {k: (v.tolist() if isinstance(v, (np.generic, np.ndarray)) else v) for k, v in meta.items()}
    assert back == want and type(back["seed"]) is int and back["augment"] is True
    assert [type(v) for v in back.values()] == [type(v) for v in want.values()]
    loaded = Report.load(tmp_path / f"r{suffix}")
    both = combine_runs([rep, loaded], by=["seed"])  # the same seed: one group of two runs
    assert set(both.runs) == {2}


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_nan_and_infinities_in_meta_are_written_as_json_null(tmp_path, suffix):
    # json.dumps wrote them as NaN / Infinity: no JSON reader but Python's takes that file
    meta = {"lr": float("nan"), "limits": [1.0, float("inf")], "bound": np.float64(-np.inf),
            "grid": np.array([0.5, np.nan]), "model": "toy"}
    Report.from_rows(_rows(), meta).save(tmp_path / f"r{suffix}")
    written = tmp_path / ("r.json" if suffix == ".json" else "r.meta.json")

    def strict(token):
        raise AssertionError(f"{token} in {written.name}")
    doc = json.loads(written.read_text(), parse_constant=strict)
    want = {"lr": None, "limits": [1.0, None], "bound": None, "grid": [0.5, None], "model": "toy"}
    assert (doc["meta"] if suffix == ".json" else doc) == want
    assert Report.load(tmp_path / f"r{suffix}").meta == want


def test_plot_writes_a_png(tmp_path):
    rep = Report.from_rows(_rows(), {"model": "toy"})
    other = Report.from_rows(_rows(), {"model": "toy2"})
    fig = rep.plot(tmp_path / "f.png", others={"toy2": other})
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # saved atomically, as PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]
    assert len(fig.axes) == 4  # two families x (channel, layer)
    rep.plot(tmp_path / "f.PDF")
    assert (tmp_path / "f.PDF").read_bytes()[:5] == b"%PDF-"
    # matplotlib took the temporary file's ".tmp" for the format: "Format 'tmp' is not supported"
    for bad, said in (("figure", "has none"), ("f.xyz", "has '.xyz'"), (".", "is a folder")):
        for draw in (rep.plot, rep.plot_shifts):
            with pytest.raises(ValueError, match=f"Expected a figure's file name.*{said}"):
                draw(tmp_path / bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.PDF", "f.png"]


def test_plot_refuses_lines_that_would_hide_or_mislead():
    rows = _rows(late=True)
    rep = Report.from_rows(rows, {"model": "resnet18"})
    # an other labelled as this report replaced its line: one line, the other's values
    with pytest.raises(ValueError, match=r"labelled apart from this report \('resnet18'\)"):
        rep.plot(others={"resnet18": Report.from_rows(rows)})
    assert len(rep.plot(label="mine", others={"resnet18": Report.from_rows(rows)}).legends[0]
               .get_texts()) == 2
    # a list of reports, or a part table, failed deep inside (AttributeError: no `items`, `parts`)
    other = Report.from_rows(rows, {"model": "other"})
    with pytest.raises(TypeError, match=r"Expected `others` to be a dict of label -> Report, but got a list"):
        rep.plot(others=[other])
    with pytest.raises(TypeError, match=r"Expected `others` to map labels to Reports, but 'other' is a DataFrame"):
        rep.plot(others={"other": other.parts})
    # a cosine line beside a correlation one, under one axis of "score"
    cosine = Report.from_rows([r for r in rows if r["metric"] == "cosine"])
    correlation = Report.from_rows([r for r in rows if r["metric"] == "correlation"])
    from equifast.figures import plot_shifts

    mixed = r"share one metric, but they measured 'model' cosine, 'B' correlation"
    with pytest.raises(ValueError, match=mixed):
        cosine.plot(others={"B": correlation})
    with pytest.raises(ValueError, match=mixed):
        plot_shifts({"model": cosine.shifts, "B": correlation.shifts})
    # a metric the other did not measure names it
    with pytest.raises(ValueError, match=r"one of those the report measured \(correlation\), but "
                                         r"got 'cosine' \(in 'B'\)"):
        rep.plot(others={"B": correlation}, metric="cosine")
    rep.plot(others={"B": correlation})  # correlation, as rep draws when it has both


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
    # without the first (a stem), as the docstring says for the thesis' set of blocks only
    points = Report.from_rows(rows).points
    blocks = metric_bias(points[points.point != "p0"], parts=None)["correlation"].set_index(
        ["family", "metric"])["correlation_with_mean_activation"]
    assert math.isclose(blocks[("rotation", "correlation")],
                        float(np.corrcoef(pattern[1:], range(1, 5))[0, 1]))
    every = Report.from_rows(rows).metric_bias(parts=None)["correlation"].set_index(
        ["family", "metric"])["correlation_with_mean_activation"]
    assert math.isclose(every[("rotation", "correlation")], float(np.corrcoef(pattern, range(5))[0, 1]))
    assert {"mean_activation", "cosine", "correlation"} <= set(bias["table"].columns)
    # the thesis' "magnitude of the activations": a second statistic, correlated alike
    mags = [2.0, 0.5, 1.5, 9.0, 9.0]
    with_mag = Report.from_rows([dict(r, mean_magnitude=mags[r["order"]]) for r in rows])
    corr = with_mag.metric_bias()["correlation"].set_index(["family", "metric"])
    assert math.isclose(corr.loc[("rotation", "correlation"), "correlation_with_mean_magnitude"],
                        float(np.corrcoef(pattern[:3], mags[:3])[0, 1]))
    assert math.isclose(corr.loc[("rotation", "cosine"), "correlation_with_mean_activation"], 1.0)
    # a report saved before the magnitude was kept: its column and correlation are NaN; one
    # without the activations' statistics at all has nothing to correlate: an error
    assert bias["table"]["mean_magnitude"].isna().all()
    assert bias["correlation"]["correlation_with_mean_magnitude"].isna().all()
    with pytest.raises(ValueError, match="mean_activation"):
        Report.from_rows([{k: v for k, v in r.items() if k != "mean_activation"} for r in rows]).metric_bias()
    with pytest.raises(ValueError, match="the points' order, as equifast.measure writes, but it has no order"):
        Report.from_rows([{k: v for k, v in r.items() if k != "order"} for r in rows]).metric_bias()
    only = Report.from_rows([r for r in _rows() if r["metric"] == "correlation"])
    with pytest.raises(ValueError, match="cosine"):
        only.metric_bias()
    # one part by name, as "early" (it was read letter by letter: every correlation NaN)
    one = Report.from_rows(rows)
    assert one.metric_bias(parts="early")["correlation"].equals(one.metric_bias(parts=["early"])["correlation"])
    assert one.metric_bias(parts=("early", "middle"))["correlation"].equals(bias["correlation"])
    for bad in (["erly"], [], ("early", "head")):
        with pytest.raises(ValueError, match=r"`parts` to be some of early, middle, late, pool, final"):
            one.metric_bias(parts=bad)


def test_combine_runs_mean_and_std():
    reps = []
    for seed, bump in enumerate((0.0, 0.02, 0.04)):
        rows = [dict(r, channel=r["channel"] + bump) for r in _rows()]
        reps.append(Report.from_rows(rows, {"setting": "a", "seed": seed}))
    out = combine_runs(reps, by=["setting"])
    row = out[(out.part == "early") & (out.family == "translation") & (out.metric == "correlation")].iloc[0]
    assert math.isclose(row.channel, 0.75 + 0.02) and math.isclose(row.channel_std, 0.02)
    assert row.runs == 3


def test_combine_runs_by_one_name_and_by_list_values():
    # by="setting" was read letter by letter (meta "s", "e", ...: all None), one group of 3
    reps = [Report.from_rows([dict(r, channel=r["channel"] + bump) for r in _rows()],
                             {"setting": setting, "transforms": ["a", "b"]})
            for bump, setting in ((0.0, "a"), (0.1, "a"), (0.4, "b"))]
    out = combine_runs(reps, by="setting")
    assert out.equals(combine_runs(reps, by=["setting"]))
    assert sorted(set(zip(out.setting, out.runs))) == [("a", 2), ("b", 1)]
    with pytest.raises(ValueError, match=r"run 0's \['transforms'\] is a list or dict"):
        combine_runs(reps, by=["transforms"])  # was TypeError: unhashable type: 'list'


def test_combine_runs_refuses_runs_of_other_models_in_one_group():
    # ResNet and MobileNet points were averaged as two seeds of one run, without a word
    import equifast as ef

    mine = Report.from_rows(_rows(), {"model": "a"})
    other = Report.from_rows([dict(r, point=r["point"].replace("p", "q")) for r in _rows()], {"model": "b"})
    with pytest.raises(ValueError, match=r"to be of one model \(the same points\), but run 1 has "
                                         r"\['q0', 'q1', 'q2'\] and lacks \['p0', 'p1', 'p2'\] beside run 0"):
        ef.combine_runs([mine, other])
    out = ef.combine_runs([mine, other, mine], by="model")  # each model's runs alone: fine
    assert sorted(set(zip(out.model, out.runs))) == [("a", 2), ("b", 1)]


def test_combine_runs_refuses_runs_measured_at_other_sizes_in_one_group():
    # a run at 64 px beside one at 32 px was averaged as a second seed
    import torch
    import torchvision
    import equifast as ef

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    small, large = (ef.measure(model, torch.rand(2, 3, s, s), transforms=ef.rotations(), batch_size=2)
                    for s in (32, 64))
    with pytest.raises(ValueError, match=r"maps of one size, but run 1's point 'stem' is 64x16x16 "
                                         r"where run 0's is 64x8x8"):
        ef.combine_runs([small, large])
    small.meta["size"], large.meta["size"] = 32, 64
    out = ef.combine_runs([small, large, small], by="size")  # each size's runs alone: fine
    assert sorted(set(zip(out["size"], out.runs))) == [(32, 2), (64, 1)]
    both = out[(out["size"] == 32) & (out.part == "early")].iloc[0]
    assert math.isclose(both.channel, small.parts[small.parts.part == "early"].channel.iloc[0],
                        rel_tol=1e-12)


def test_combine_runs_of_a_table_without_shapes_beside_one_with_them():
    # a points table of SPEC's columns (no shape) beside a measured one was refused as "maps
    # of one size, but run 1's point 'p0' is 8x4x4 where run 0's is None"
    plain = Report.from_rows(_rows(), {"seed": 0})
    shaped = Report.from_rows([dict(r, channel=r["channel"] + 0.1, shape="8x4x4") for r in _rows()],
                              {"seed": 1})
    for runs in ([plain, shaped], [shaped, plain]):
        out = combine_runs(runs)
        for part, channel in out.groupby(["part", "family", "metric"]).channel.first().items():
            both = [r.parts.set_index(["part", "family", "metric"]).channel[part] for r in runs]
            assert math.isclose(channel, sum(both) / 2, rel_tol=1e-12)
        assert set(out.runs) == {2}
    # a first run without shapes hides no size two later runs differ in
    other = Report.from_rows([dict(r, shape="8x8x8") for r in _rows()], {"seed": 2})
    with pytest.raises(ValueError, match=r"run 2's point 'p0' is 8x8x8 where run 1's is 8x4x4"):
        combine_runs([plain, shaped, other])


def test_combine_runs_is_the_same_to_the_last_bit_in_any_order_of_the_runs():
    # a sweep's records or a study's seeds may come in any order: the same mean and std,
    # bit for bit (float sums in the order given differed in the last bit)
    rng = np.random.default_rng(0)
    reps = [Report.from_rows([dict(r, channel=r["channel"] + rng.normal(0, 0.1),
                                   layer=r["layer"] + rng.normal(0, 0.1)) for r in _rows()],
                             {"setting": "ab"[i % 2], "seed": i}) for i in range(6)]
    keys = ["setting", "part", "family", "metric"]

    def combined(order):
        out = combine_runs([reps[i] for i in order], by=["setting"])
        return out.astype({"part": str}).sort_values(keys).reset_index(drop=True)

    want = combined(range(6))
    for order in [range(5, -1, -1)] + [rng.permutation(6) for _ in range(10)]:
        pd.testing.assert_frame_equal(combined(order), want, check_exact=True)
    row = want[(want.setting == "a") & (want.part == "early") & (want.family == "rotation")
               & (want.metric == "cosine")].iloc[0]
    runs = [r.parts for r in reps[::2]]
    values = [p[(p.part == "early") & (p.family == "rotation") & (p.metric == "cosine")].channel.item()
              for p in runs]
    assert math.isclose(row.channel, np.mean(values), rel_tol=1e-15)
    assert math.isclose(row.channel_std, np.std(values, ddof=1), rel_tol=1e-12) and row.runs == 3


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
    assert [3, 4] in xs and [0, 1, 2, 3, 4] in xs  # pool and final at their places in both lines


def test_accuracy_figure_draws_each_transform_set_of_a_family_apart():
    from equifast.figures import plot_accuracy_correlation
    from equifast.points import PARTS

    with pytest.raises(ValueError, match="Expected correlations to draw .* the table has no rows"):
        plot_accuracy_correlation(pd.DataFrame(columns=["part", "family", "score", "spearman"]))

    rows = [{"part": p, "family": "translation", "transforms": t, "score": "channel",
             "spearman": rho + 0.1 * i}
            for t, rho in (("circular", 0.2), ("zero", -0.4)) for i, p in enumerate(PARTS)]
    fig = plot_accuracy_correlation(pd.DataFrame(rows))
    drawn = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines()
             if line.get_label().startswith("channel")}
    # one line per transform set, each part at its place (not one zigzag line through both)
    assert drawn == {"channel (circular)": [0, 1, 2, 3, 4], "channel (zero)": [0, 1, 2, 3, 4]}


def _part_case():
    """Four points of the early part under three rotations, with NaN entries; the expected part
    scores below are worked out by hand (SPEC aggregation: per point the mean over the family's
    defined transforms, per part the mean over the points that have a score)."""
    nan = float("nan")
    channel = {"a": (0.1, 0.2, 0.9), "b": (0.5, nan, nan), "c": (0.0, 0.3, 0.3), "d": (nan, nan, nan)}
    layer = {"a": (0.2, 0.3, 1.0), "b": (0.9, nan, nan), "c": (0.1, 0.4, 0.7), "d": (nan, nan, nan)}
    undefined = {"a": (0.0, 0.0, 0.5), "b": (0.2, 1.0, 1.0), "c": (0.1, 0.1, 0.1), "d": (1.0, 1.0, 1.0)}
    rows = []
    for order, point in enumerate("abcd"):
        for i, t in enumerate(("rotation(90)", "rotation(180)", "rotation(270)")):
            rows.append({"point": point, "part": "early", "transform": t, "family": "rotation",
                         "channel": channel[point][i], "layer": layer[point][i],
                         "undefined_fraction": undefined[point][i], "n_images": 2, "order": order})
    return rows


def test_part_mean_is_the_mean_of_per_point_means_skipping_undefined():
    # per point: a 0.4 (median 0.2), b 0.5 (its NaN skipped), c 0.2 (median 0.3), d none.
    # part: (0.4 + 0.5 + 0.2) / 3; not the mean of the 7 defined entries (2.3 / 7), not a median
    # (0.4) or max (0.5), not NaN because b or d has undefined entries
    parts = Report.from_rows(_part_case()).parts
    assert len(parts) == 1
    row = parts.iloc[0]
    assert math.isclose(row.channel, (0.4 + 0.5 + 0.2) / 3)
    assert math.isclose(row.layer, (0.5 + 0.9 + 0.4) / 3)  # layer per point: 0.5, 0.9, 0.4
    # undefined_fraction: the mean over all four points, d's 1.0 in it
    assert math.isclose(row.undefined_fraction, (1 / 6 + 2.2 / 3 + 0.1 + 1.0) / 4)
    assert row.n_points == 4


def test_parts_are_ordered_by_family_then_part():
    rows = [r for r in reversed(_rows()) if r["metric"] == "correlation"]  # final first
    parts = Report.from_rows(rows).parts
    got = list(zip(parts.family, parts.part.astype(str)))
    order = ["early", "middle", "pool", "final"]
    assert got == [("rotation", p) for p in order] + [("translation", p) for p in order]


def test_metric_bias_table_and_its_edge_cases():
    # the table: per point and family, the mean over the family's transforms of each metric
    bias = Report.from_rows(list(reversed(_rows()))).metric_bias()  # rows in reverse order
    table = bias["table"]
    trans = table[table.family == "translation"]
    assert list(trans.point) == ["p0", "p1", "p2", "pool", "final"]  # in the model's order
    p1 = trans[trans.point == "p1"].iloc[0]
    # _rows: translation(1,1) 0.9 - 0.1 order, translation(2,2) 0.7 - 0.1 order; cosine + 0.05 order
    assert math.isclose(p1.correlation, (0.8 + 0.6) / 2) and math.isclose(p1.cosine, 0.75)
    assert p1.mean_activation == 1.0
    # an undefined score is left out of the correlation; fewer than three defined points
    # correlate to NaN (two points always give +-1)
    rows = []
    for order, cos in enumerate((0.2, 0.9, 0.4, float("nan"))):
        for metric, c in (("cosine", cos), ("correlation", 0.5 + 0.1 * order)):
            rows.append({"point": f"q{order}", "part": "early", "transform": "rotation(90)",
                         "family": "rotation", "metric": metric, "channel": c, "layer": c,
                         "undefined_fraction": 0.0, "n_images": 2, "order": order,
                         "mean_activation": [0.0, 1.0, 3.0, 5.0][order]})
    corr = Report.from_rows(rows).metric_bias()["correlation"].set_index("metric")
    want = float(np.corrcoef([0.2, 0.9, 0.4], [0.0, 1.0, 3.0])[0, 1])
    assert math.isclose(corr.loc["cosine", "correlation_with_mean_activation"], want)
    two = Report.from_rows(rows).metric_bias(parts=None)
    rows[4]["channel"] = float("nan")  # q2's cosine: two defined points left
    corr = Report.from_rows(rows).metric_bias()["correlation"].set_index("metric")
    assert math.isnan(corr.loc["cosine", "correlation_with_mean_activation"])
    assert len(two["table"]) == 4


def test_over_runs_counts_distinct_runs_and_keeps_missing_keys():
    from equifast.report import over_runs

    df = pd.DataFrame({"setting": ["a", "a", "a", None, None],
                       "run": [0, 0, 1, 0, 1],
                       "channel": [0.1, 0.3, 0.5, 0.2, 0.4]})
    out = over_runs(df, ["setting"], ["channel"])
    assert len(out) == 2
    a = out[out.setting == "a"].iloc[0]
    assert a.runs == 2  # run 0 gave two rows: still two runs
    assert math.isclose(a.channel, 0.3)
    missing = out[out.setting.isna()].iloc[0]  # a setting a run did not record is kept
    assert missing.runs == 2 and math.isclose(missing.channel, 0.3)
    assert math.isclose(missing.channel_std, float(np.std([0.2, 0.4], ddof=1)))


def test_over_runs_is_each_groups_numpy_mean_and_std_of_its_sorted_values():
    # one matrix of the groups of each size, not a Python call per group (minutes over a
    # sweep's shift tables): the same bits as numpy over each group's values, sorted
    from equifast.report import over_runs

    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({"model": rng.choice(["a", "b", None, "c"], n),
                       "part": pd.Categorical(rng.choice(["early", "late"], n)),
                       "shift": rng.integers(0, 40, n), "seed": rng.integers(0, 5, n),
                       "channel": rng.random(n), "layer": rng.random(n) * 1e3})
    df.loc[rng.random(n) < 0.02, "channel"] = np.nan
    df.loc[:3, "layer"] = np.inf
    keys = ["model", "part", "shift"]
    out = over_runs(df, keys, ["channel", "layer"], run="seed", count="seeds")
    groups = list(df.groupby(keys, sort=False, observed=True, dropna=False))
    assert len(out) == len(groups) and len({len(g) for _, g in groups}) > 5  # groups of many sizes
    for row, (key, g) in zip(out.itertuples(index=False), groups):
        assert [None if pd.isna(k) else k for k in row[:3]] == [None if pd.isna(k) else k for k in key]
        for v in ("channel", "layer"):
            x = np.sort(g[v].to_numpy(dtype=float))
            with np.errstate(invalid="ignore"):
                want = (x.mean(), x.std(ddof=1) if len(x) > 1 else np.nan)
            got = (getattr(row, v), getattr(row, f"{v}_std"))
            assert np.array_equal(got, want, equal_nan=True), (key, v, got, want)
        assert row.seeds == g["seed"].nunique()
    assert list(out.columns) == keys + ["channel", "channel_std", "layer", "layer_std", "seeds"]
    empty = over_runs(df.iloc[:0], keys, ["channel"], run="seed")
    assert len(empty) == 0 and list(empty.columns) == keys + ["channel", "channel_std", "runs"]


def test_combine_runs_keeps_settings_apart():
    reps = [Report.from_rows([dict(r, channel=r["channel"] + bump) for r in _rows()], meta)
            for bump, meta in ((0.0, {"setting": "a"}), (0.1, {"setting": "a"}),
                               (0.4, {"setting": "b"}), (0.2, {}))]
    out = combine_runs(reps, by=["setting"])
    sel = out[(out.part == "early") & (out.family == "translation") & (out.metric == "correlation")]
    by = {(None if pd.isna(s) else s): row for s, row in zip(sel.setting, sel.itertuples())}
    assert set(by) == {"a", "b", None} and len(sel) == 3
    assert math.isclose(by["a"].channel, 0.75 + 0.05) and by["a"].runs == 2
    assert math.isclose(by["b"].channel, 0.75 + 0.4) and by["b"].runs == 1
    assert math.isclose(by[None].channel, 0.75 + 0.2) and by[None].runs == 1


def test_summary_holds_the_part_scores():
    rep = Report.from_rows(_rows())
    for metric in ("correlation", "cosine"):
        wide = rep.summary(metric)
        assert list(wide.columns) == [(f, s) for f in ("rotation", "translation")
                                      for s in ("channel", "layer", "undefined")]
        parts = rep.parts[rep.parts.metric == metric]
        for row in parts.itertuples():
            assert math.isclose(wide.loc[row.part, (row.family, "channel")], row.channel)
            assert math.isclose(wide.loc[row.part, (row.family, "undefined")], row.undefined_fraction)
            assert math.isclose(wide.loc[row.part, (row.family, "layer")], row.layer)
    # early, correlation, translation: p0 0.8, p1 0.7 (as test_parts_follow_the_spec_aggregation_order)
    assert math.isclose(rep.summary().loc["early", ("translation", "channel")], 0.75)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_saved_parts_file_is_the_parts_table(tmp_path, suffix):
    rep = Report.from_rows(_rows(), {"model": "toy"})
    files = rep.save(tmp_path / f"r{suffix}")
    assert sorted(files) == sorted(tmp_path.iterdir())  # every file written, and only those
    parts_file = tmp_path / f"r.parts{suffix}"
    saved = pd.read_csv(parts_file) if suffix == ".csv" else pd.read_parquet(parts_file)
    assert list(saved.columns) == list(rep.parts.columns)
    np.testing.assert_allclose(saved[["channel", "layer", "undefined_fraction"]].to_numpy(float),
                               rep.parts[["channel", "layer", "undefined_fraction"]].to_numpy(float))
    assert list(saved.part.astype(str)) == list(rep.parts.part.astype(str))


def test_save_to_another_suffix_is_refused_before_its_folder_is_made(tmp_path):
    # the folder was made, then the suffix refused: an empty folder was left behind
    with pytest.raises(ValueError, match=r"Expected a .json, .csv or .parquet path, but got '.*r.txt'"):
        Report.from_rows(_rows()).save(tmp_path / "new" / "r.txt")
    assert list(tmp_path.iterdir()) == []


def test_missing_report_file_is_named():
    for suffix in (".json", ".csv"):
        with pytest.raises(FileNotFoundError, match="Expected .*/no/such/report"):
            Report.load(f"/no/such/report{suffix}")


def test_atomic_writes_keep_the_old_file_when_writing_fails(tmp_path):
    # equifast._io, which reports, figures, runs and studies write through
    from equifast._io import atomic_write, save_figure_atomic, write_text_atomic

    target = tmp_path / "deep" / "er" / "r.json"  # missing folders are made
    write_text_atomic(target, "old")
    write_text_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert target.read_text() == "old" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"

    def half(tmp):
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["r.json"]
    import matplotlib.pyplot as plt

    fig = plt.figure()
    save_figure_atomic(fig, tmp_path / "f.svg")  # the format of the suffix, not the default PNG
    save_figure_atomic(fig, tmp_path / "f.pdf")
    plt.close(fig)
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:400]
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"


def test_check_own_folder_never_takes_a_users_folder(tmp_path):
    from equifast._io import check_own_folder

    args = (["recipe.json"], "a run folder", "--out")
    assert check_own_folder(tmp_path / "new", *args) == tmp_path / "new"  # missing: fine
    (tmp_path / "empty").mkdir()
    check_own_folder(tmp_path / "empty", *args)  # empty: fine
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.json").write_text("{}")
    (tmp_path / "run" / "metrics.csv").write_text("")
    check_own_folder(tmp_path / "run", *args)  # ours: fine
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("")
    with pytest.raises(FileExistsError, match=r"holds other files: \['thesis.tex'\]"):
        check_own_folder(tmp_path / "mine", *args)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        check_own_folder(tmp_path / "file", *args)


def test_a_metric_that_was_not_measured_is_an_error_not_an_empty_table():
    import torch

    import equifast as ef

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    both = ef.measure(model, torch.rand(2, 3, 12, 12), transforms=ef.Rotation(1),
                      metric=["correlation", "cosine"])
    one = Report(both.points[both.points.metric == "cosine"].reset_index(drop=True), dict(both.meta))
    with pytest.raises(ValueError, match=r"^Expected `metric` to be one of those the report measured \(cosine\), "
                                         r"but got 'correlation'\.$"):
        one.summary("correlation")
    with pytest.raises(ValueError, match="one of those the report measured"):
        one.plot(metric="correlation")
    # the default: the only one, or correlation among several
    assert one.summary().equals(one.summary("cosine"))
    assert both.summary().equals(both.summary("correlation"))
    assert not both.summary("cosine").equals(both.summary())


def test_runs_of_other_transforms_are_not_combined_as_seeds():
    import torch

    import equifast as ef

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.rand(2, 3, 12, 12)
    one, three = (ef.measure(model, x, transforms=t) for t in ([ef.Rotation(1)], ef.rotations()))
    with pytest.raises(ValueError, match=r"same transforms, but run 1 has "
                                         r"\['rotation\(180\)', 'rotation\(270\)'\] beside run 0"):
        combine_runs([one, three])
    with pytest.raises(ValueError, match=r"same transforms, but run 1 lacks "
                                         r"\['rotation\(180\)', 'rotation\(270\)'\] beside run 0"):
        combine_runs([three, one])
    one.meta["setting"], three.meta["setting"] = "a", "b"  # other settings may differ
    assert set(combine_runs([one, three], by=["setting"])["runs"]) == {1}


def test_runs_of_another_vector_mode_or_eps_are_not_combined_as_seeds():
    # a vector's invariance per image and its correlation across images (or entries another
    # eps left undefined) were averaged as two seeds of one run, with a std of their difference
    import torch

    import equifast as ef

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(4, 3, 12, 12)
    per, across, loose = (ef.measure(model, x, transforms=[ef.Rotation(1)], **kw) for kw in
                          ({}, dict(vector_mode="across_images"), dict(eps=0.5)))
    assert not per.parts.channel.equals(across.parts.channel)  # other scores of the same points
    with pytest.raises(ValueError, match=r"same settings, but run 1 has vector_mode "
                                         r"'across_images' where run 0's is 'per_image'"):
        combine_runs([per, across])
    with pytest.raises(ValueError, match=r"same settings, but run 2 has eps 0\.5 where run 0's "
                                         r"is 1e-05"):
        combine_runs([per, per, loose])
    # grouped by it, each alone: its own scores
    out = combine_runs([per, across, per], by="vector_mode")
    for mode, want in (("per_image", per), ("across_images", across)):
        got = out[out.vector_mode == mode].reset_index(drop=True)
        np.testing.assert_array_equal(got.channel, want.parts.channel)


def test_load_takes_a_measure_out_folder_and_says_which_path_to_give(tmp_path):
    rep = Report.from_rows(_rows(), {"model": "toy"})
    rep.save(tmp_path / "out" / "report.json")  # as `equifast measure --out out` names it
    pd.testing.assert_frame_equal(Report.load(tmp_path / "out").points, rep.points)
    with pytest.raises(FileNotFoundError, match="a folder without report.json"):
        Report.load(tmp_path)
    rep.save(tmp_path / "r18.parquet")
    # asked for 'r18.points.points.parquet' or said the meta file had no points, and no more
    with pytest.raises(FileNotFoundError, match=r"give the path it was given \('r18.parquet'\)"):
        Report.load(tmp_path / "r18.points.parquet")
    with pytest.raises(ValueError, match=r"\('r18.parquet' or 'r18.csv'\)"):
        Report.load(tmp_path / "r18.meta.json")
    # another file, or a path without a suffix: it asked for 'figure.points.png', 'r18.points'
    (tmp_path / "out" / "figure.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"Expected a report: the .json, .csv or .parquet path "
                                         r"Report.save was given, .* but '.*figure.png' is none of them\.$"):
        Report.load(tmp_path / "out" / "figure.png")
    with pytest.raises(FileNotFoundError, match=r"'.*r18' does not exist; did you mean '.*r18.parquet'\?$"):
        Report.load(tmp_path / "r18")
    with pytest.raises(FileNotFoundError, match=r"'.*no-such' does not exist\.$"):
        Report.load(tmp_path / "no-such")


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_reports_saved_before_shift_families_are_relabelled_on_load(tmp_path, suffix):
    import torch

    import equifast as ef

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    new = ef.measure(model, torch.rand(2, 3, 16, 16), transforms="translation:1-2,translation:1-2:zero,"
                                                                 "translation:3:zero:nearest,rotation:90")
    # as the version before wrote it: every shift 'translation', zero-filled ones averaged in
    old = Report(new.points.assign(family=new.points["family"].where(
        ~new.points["family"].str.startswith("translation"), "translation")), dict(new.meta))
    assert set(old.parts.family) == {"translation", "rotation"}
    old.save(tmp_path / f"old{suffix}")
    back = Report.load(tmp_path / f"old{suffix}")
    assert list(back.points.family) == list(new.points.family)
    pd.testing.assert_frame_equal(back.parts.reset_index(drop=True), new.parts.reset_index(drop=True),
                                  check_dtype=False, check_categorical=False)
    assert set(combine_runs([back, new])["runs"]) == {2}  # one row per family, both runs in it


def test_shift_table_is_each_parts_mean_at_each_shift():
    from equifast.report import part_table, shift_table
    rows = _rows()
    rows.append({**rows[0], "transform": "translation(-3,2,zero)", "family": "translation-zero",
                 "channel": 0.25, "layer": 0.5})
    rows[2] = {**rows[2], "channel": float("nan"), "layer": float("nan"),
               "undefined_fraction": 1.0}  # p0 undefined at translation(2,2), correlation
    table = shift_table(pd.DataFrame(rows))
    corr = table[table.metric == "correlation"].set_index(["part", "family", "transform"])
    assert list(table.columns[:5]) == ["part", "family", "transform", "dy", "dx"]
    assert "rotation(90)" not in set(table["transform"])
    # by hand: early is p0 (order 0) and p1 (order 1), channel = base - 0.1 * order
    assert math.isclose(corr.loc[("early", "translation", "translation(1,1)")].channel, (0.9 + 0.8) / 2)
    assert corr.loc[("early", "translation", "translation(1,1)")].n_points == 2
    assert math.isclose(corr.loc[("early", "translation", "translation(2,2)")].channel, 0.6)  # p1 alone
    assert math.isclose(corr.loc[("middle", "translation", "translation(2,2)")].layer, 0.7 - 0.2 + 0.05)
    zero = corr.loc[("early", "translation-zero", "translation(-3,2,zero)")]
    assert (zero.dy, zero.dx, zero.channel, zero.layer) == (-3, 2, 0.25, 0.5)
    # measured order within a part; families and parts in the parts table's order
    early = table[(table.part == "early") & (table.metric == "cosine") & (table.family == "translation")]
    assert list(early.dy) == [1, 2]
    order = lambda t: list(dict.fromkeys(zip(t.family, t.part.astype(str))))
    parts = part_table(pd.DataFrame(rows))
    assert order(table) == order(parts[parts.family != "rotation"])


def test_shift_means_are_the_family_scores_where_every_point_is_defined():
    rep = Report.from_rows(_rows())
    means = (rep.shifts.groupby(["part", "family", "metric"], observed=True)[["channel", "layer"]]
             .mean())
    parts = rep.parts[rep.parts.family == "translation"].set_index(["part", "family", "metric"])
    for key, row in parts.iterrows():
        assert math.isclose(means.loc[key].channel, row.channel)
        assert math.isclose(means.loc[key].layer, row.layer)


def test_shift_figure_draws_the_table(tmp_path):
    rows = [{**r, "transform": f"translation({s},{s})", "family": "translation",
             "channel": r["channel"] * s / 4}
            for s in (1, 2, 3, 4) for r in _rows() if r["transform"] == "translation(1,1)"]
    rep = Report.from_rows(rows, {"model": "toy"})
    fig = rep.plot_shifts(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2  # one family x (channel, layer)
    lines = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}  # errorbar: (line, ...)
    assert list(lines) == ["early", "middle", "pool", "final"]
    early = rep.shifts[(rep.shifts.part == "early") & (rep.shifts.metric == "correlation")]
    assert list(lines["early"].get_xdata()) == [1, 2, 3, 4]
    assert np.allclose(lines["early"].get_ydata(), early.channel)
    # measured 4 first then 1-3: the line ran 4 -> 1 -> 2 -> 3, a segment back across the panel
    late_first = Report.from_rows(rows[3 * len(rows) // 4:] + rows[:3 * len(rows) // 4])
    line = {c.get_label(): c.lines[0] for c in late_first.plot_shifts().axes[0].containers}["early"]
    assert list(line.get_xdata()) == [1, 2, 3, 4]
    assert np.allclose(line.get_ydata(), early.channel)
    other = [{**r, "transform": "translation(1,-2)"} for r in _rows()
             if r["transform"] == "translation(1,1)"]
    fig = Report.from_rows(rows[:len(other)] + other).plot_shifts()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["(1,1)", "(1,-2)"]
    with pytest.raises(ValueError, match="Expected translations"):
        Report.from_rows([r for r in _rows() if r["family"] == "rotation"]).plot_shifts()


def test_shift_figure_keeps_each_parts_colour_and_names_every_row():
    from equifast.figures import plot_shifts
    from equifast.report import shift_table
    rows = [{**r, "transform": f"translation({s},{s})", "family": "translation"}
            for s in (1, 2) for r in _rows() if r["transform"] == "translation(1,1)"]
    full = shift_table(pd.DataFrame(rows))
    few = full[full.part.isin(["pool", "final"])]  # a model whose early and middle are missing
    fig = plot_shifts({"few": few, "full": full}, metric="correlation")
    colours = [{c.get_label(): c.lines[0].get_color() for c in ax.containers} for ax in fig.axes]
    assert colours[0]["pool"] == colours[2]["pool"] and colours[0]["final"] == colours[2]["final"]
    assert colours[2]["early"] != colours[2]["pool"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["early", "middle", "pool", "final"]
    assert [ax.get_title() for ax in fig.axes[::2]] == [
        "channel: few, translation, correlation", "channel: full, translation, correlation"]
    assert all(ax.get_xlabel() == "diagonal shift (pixels)" for ax in fig.axes)
    # a report of rotations only: no translations to draw, whichever metric is asked for
    rotations = Report.from_rows([r for r in _rows() if r["family"] == "rotation"])
    with pytest.raises(ValueError, match="Expected translations"):
        rotations.plot_shifts(metric="correlation")
    fig = plot_shifts({"rotations": rotations.shifts, "full": full}, metric="cosine")
    assert [ax.get_title() for ax in fig.axes] == ["channel: full, translation, cosine",
                                                   "layer: full, translation, cosine"]
    # a transform of the user's whose name only contains a translation's is not one
    named = [{**r, "transform": "subpixel_translation(1,1)", "family": "subpixel"} for r in rows]
    assert shift_table(pd.DataFrame(named)).empty


def test_parts_figure_keeps_each_settings_colour():
    full = Report.from_rows(_rows(late=True))
    rotation_only = Report.from_rows([r for r in _rows(late=True) if r["family"] == "rotation"])
    fig = rotation_only.plot(None, label="rot", others={"full": full})
    colour = lambda ax, label: next(c.lines[0].get_color() for c in ax.containers
                                    if c.get_label() == label)
    rotation, translation = fig.axes[0], fig.axes[2]  # "rot" has no translation row
    assert translation.get_title() == "channel equivariance: translation"
    assert colour(translation, "full") == colour(rotation, "full") != colour(rotation, "rot")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rot", "full"]


def test_a_long_legend_fits_below_the_panels():
    base = Report.from_rows(_rows(late=True))
    fig = base.plot(None, label="resnext101_32x8d",
                    others={f"model_with_a_long_name_{i}": base for i in range(9)})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    assert len(fig.legends[0].get_texts()) == 10
    assert 0 <= legend.x0 and legend.x1 <= fig.bbox.width  # no name cut at the edges
    assert legend.y1 <= min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)  # below the axes' labels


def test_an_undefined_part_is_shown_not_dropped_and_undefined_runs_are_not_averaged_away():
    rows = [dict(r) for r in _rows()]
    for r in rows:
        if r["point"] == "pool":  # a dead pooled vector: every score undefined
            r.update(channel=float("nan"), layer=float("nan"), undefined_fraction=1.0)
    dead = Report.from_rows(rows)
    wide = dead.summary("correlation")
    assert "pool" in wide.index and math.isnan(wide.loc["pool", ("translation", "channel")])
    assert wide.loc["pool", ("translation", "undefined")] == 1.0
    table = dead.metric_bias()["table"]
    assert "pool" in set(table.point) and table[table.point == "pool"].cosine.isna().all()
    # over seeds: one dead run makes the mean undefined, not the mean of the other runs
    alive = Report.from_rows(_rows())
    both = combine_runs([alive, dead, alive])
    pool = both[(both.part == "pool") & (both.family == "translation") &
                (both.metric == "correlation")].iloc[0]
    assert math.isnan(pool.channel) and math.isnan(pool.channel_std) and pool.runs == 3
    assert math.isclose(pool.undefined_fraction, 1 / 3)


def test_a_csv_report_of_vectors_keeps_its_shapes_as_text(tmp_path):
    rows = [{**r, "shape": "512"} for r in _rows()]  # every point a vector: all digits
    Report.from_rows(rows).save(tmp_path / "r.csv")
    assert list(Report.load(tmp_path / "r.csv").points["shape"].unique()) == ["512"]


@pytest.fixture(autouse=True)
def _close_figures():
    """The figures a test draws are closed after it (pyplot keeps each one open)."""
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def _shift_rows(**changes):
    """_rows' translation(1,1) scores at diagonal shifts 1..3, with ``changes`` to every row."""
    return [{**r, "transform": f"translation({s},{s})", "family": "translation", **changes}
            for s in (1, 2, 3) for r in _rows() if r["transform"] == "translation(1,1)"]


def test_score_figures_show_negative_scores_on_every_panel():
    from equifast.figures import plot_accuracy_correlation
    negative = [dict(r, channel=r["channel"] - 1.0) for r in _rows()]  # channel -0.7 .. 0
    for fig in (Report.from_rows(negative).plot(), Report.from_rows(_shift_rows(channel=-0.4)).plot_shifts()):
        # a score below 0 was drawn outside the panel ([0, 1.05]); the panels keep one range
        assert all(ax.get_ylim() == (-1.05, 1.05) for ax in fig.axes)
    positive = [r for r in _rows() if r["family"] == "translation"]  # rotation's final is -0.1
    for fig in (Report.from_rows(positive).plot(), Report.from_rows(_shift_rows()).plot_shifts()):
        assert all(ax.get_ylim() == (0, 1.05) for ax in fig.axes)  # the thesis' range
    rows = [{"part": p, "family": "rotation", "score": "channel", "spearman": -0.9} for p in ("early", "final")]
    assert plot_accuracy_correlation(pd.DataFrame(rows)).axes[0].get_ylim() == (-1.05, 1.05)


def test_undefined_scores_are_marked_not_silent_gaps():
    from equifast.figures import UNDEFINED, plot_accuracy_correlation
    from equifast.points import PARTS
    rows = [dict(r, channel=np.nan, layer=np.nan, undefined_fraction=1.0) if r["point"] == "p2"
            else r for r in _rows()]  # the middle part (p2) has no score
    parts = Report.from_rows(rows).plot(metric="correlation")
    shifts = Report.from_rows(_shift_rows(layer=np.nan)).plot_shifts()  # no layer score at all
    marks = lambda ax: [list(line.get_xdata()) for line in ax.get_lines() if line.get_gid() == UNDEFINED]
    assert marks(parts.axes[0]) == [[1, 2]]  # middle, and late (no point), in each panel
    assert [marks(ax) for ax in shifts.axes] == [[], [[1, 2, 3]] * 4]  # each part's line
    # the parts undefined at one shift each in a row of their own, none hidden under another
    heights = [line.get_ydata()[0] for line in shifts.axes[1].get_lines() if line.get_gid() == UNDEFINED]
    assert len(set(heights)) == 4 and min(heights) == 0.03
    table = pd.DataFrame([{"part": p, "family": "rotation", "score": "channel",
                           "spearman": np.nan if p == "middle" else 0.5} for p in PARTS])
    corr = plot_accuracy_correlation(table)
    line = corr.axes[0].get_lines()[0]
    assert np.isnan(line.get_ydata()[1])  # the line breaks at middle, not bridged early-late
    assert marks(corr.axes[0]) == [[1]]
    for fig in (parts, shifts, corr):  # one legend entry for the marks, after the lines'
        assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "undefined"
    assert "undefined" not in [t.get_text() for t in Report.from_rows(_rows(late=True)).plot().legends[0].get_texts()]



def test_a_part_without_points_between_two_with_them_is_marked_not_bridged():
    from equifast.figures import UNDEFINED
    # one point before pooling (early, pool, final): the line ran from early straight to pool
    # across middle and late, as if they were scored; SqueezeNet's (no pool) from late to final
    for kept, gaps in ((("early", "pool", "final"), [1, 2]), (("early", "middle", "final"), [2, 3]),
                       (("early", "middle"), []), (("pool", "final"), [])):
        rep = Report.from_rows([r for r in _rows(late=True) if r["part"] in kept])
        fig = rep.plot(metric="correlation")
        for ax, (fam, score) in zip(fig.axes, [(f, s) for f in ("rotation", "translation")
                                               for s in ("channel", "layer")]):
            want = rep.parts[(rep.parts.metric == "correlation") & (rep.parts.family == fam)]
            want = dict(zip(want.part.cat.codes, want[score]))
            line = ax.containers[0].lines[0]
            xs = list(range(min(want), max(want) + 1))
            assert list(line.get_xdata()) == xs
            np.testing.assert_array_equal(line.get_ydata(), [want.get(x, np.nan) for x in xs])
            assert [list(m.get_xdata()) for m in ax.get_lines() if m.get_gid() == UNDEFINED] == (
                [gaps] if gaps else [])
        assert ("undefined" in [t.get_text() for t in fig.legends[0].get_texts()]) == bool(gaps)


def test_more_than_ten_lines_are_told_apart():
    base = Report.from_rows(_rows())
    fig = base.plot(None, label="m0", others={f"m{i}": base for i in range(1, 12)})
    style = {c.get_label(): (c.lines[0].get_color(), c.lines[0].get_marker(), c.lines[0].get_linestyle())
             for c in fig.axes[0].containers}
    assert len(set(style.values())) == 12  # m10 and m11 were drawn exactly as m0 and m1
    assert style["m0"] == ("C0", "o", "-")  # the first ten as before


def test_parts_figure_names_its_metric_and_its_title_sits_on_the_panels():
    rep = Report.from_rows(_rows())
    assert rep.plot(metric="cosine").axes[0].get_ylabel() == "score (cosine)"
    assert rep.plot(metric="correlation").axes[2].get_ylabel() == "score (correlation)"
    from equifast.figures import plot_parts
    fig = plot_parts({"toy": rep.parts}, metric="correlation", title="a title")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    gap = fig._suptitle.get_window_extent(renderer).y0 - max(
        ax.get_tightbbox(renderer).y1 for ax in fig.axes)
    assert 0 <= gap <= 0.2 * fig.dpi  # it was 0.46 in: room kept twice, by tight_layout too


def test_figures_with_error_bars_say_what_the_bars_are():
    from equifast.figures import plot_parts, plot_shifts
    rep = Report.from_rows(_rows())
    parts = rep.parts[rep.parts.metric == "correlation"]
    over_seeds = parts.assign(channel_std=0.1, layer_std=0.1)
    assert plot_parts({"toy": parts}).axes[0].get_ylabel() == "score (correlation)"
    assert plot_parts({"a": parts, "b": over_seeds}).axes[0].get_ylabel() == (
        "score (correlation)\nmean ± std over seeds")
    shifts = rep.shifts[rep.shifts.metric == "correlation"]
    assert plot_shifts({"toy": shifts}).axes[0].get_ylabel() == "score"
    assert plot_shifts({"toy": shifts.assign(channel_std=0.1, layer_std=0.1)}).axes[0].get_ylabel() == (
        "score\nmean ± std over seeds")


def test_one_seeds_undefined_std_draws_without_error_bars():
    # a study of one seed has NaN stds: their bars are empty segments (it crashed the figure)
    from equifast.figures import plot_parts, plot_shifts
    rep = Report.from_rows(_rows(late=True))
    parts = rep.parts[rep.parts.metric == "correlation"].assign(channel_std=np.nan, layer_std=np.nan)
    line = plot_parts({"one seed": parts}).axes[0].containers[0].lines[0]
    assert np.allclose(line.get_ydata(), parts[parts.family == parts.family.iloc[0]].channel)
    shifts = rep.shifts[rep.shifts.metric == "correlation"].assign(channel_std=np.nan, layer_std=np.nan)
    assert plot_shifts({"one seed": shifts}).axes[0].get_ylim() == (0, 1.05)


def test_accuracy_figure_labels_its_axes_and_has_one_legend():
    from equifast.figures import plot_accuracy_correlation
    from equifast.points import PARTS
    rows = [{"part": p, "family": f, "score": s, "spearman": 0.1 * i}
            for f in ("translation", "rotation") for s in ("layer", "channel") if f == "translation" or s == "channel"
            for i, p in enumerate(PARTS)]
    fig = plot_accuracy_correlation(pd.DataFrame(rows))
    assert [ax.get_xlabel() for ax in fig.axes] == ["part", "part"]
    assert fig.axes[0].get_ylabel() == "Spearman's ρ"
    assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, below the panels
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["layer", "channel"]
    colour = lambda ax: {line.get_label(): line.get_color() for line in ax.get_lines()}
    # the rotation panel has no layer line: channel keeps its colour there
    assert colour(fig.axes[1])["channel"] == colour(fig.axes[0])["channel"] != colour(fig.axes[0])["layer"]


def test_shift_figure_wraps_a_long_model_name_in_its_panel_titles():
    name = "vit_large_patch14_clip_336.openai_ft_in12k_in1k_and_a_long_suffix"
    fig = Report.from_rows(_shift_rows(), {"model": name}).plot_shifts()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    left, right = (ax.title.get_window_extent(renderer) for ax in fig.axes)
    # each title was one line, cut at the figure's edge and over the other panel's title
    assert 0 <= left.x0 and left.x1 < right.x0 and right.x1 <= fig.bbox.width
    whole = f"channel: {name}, translation, correlation"  # wrapped, nothing left out
    assert "\n" in fig.axes[0].get_title()
    assert "".join(fig.axes[0].get_title().split()) == "".join(whole.split())


def test_points_named_by_digits_read_back_as_names(tmp_path):
    # a Sequential's children are points "0", "1", ...: a CSV of such points only read them
    # back as integers, which no longer matched the names of the same points measured again
    rows = [dict(r, point={"p0": "0", "p1": "1", "p2": "2", "pool": "3", "final": "4"}[r["point"]])
            for r in _rows()]
    rep = Report.from_rows(rows)
    for suffix in (".csv", ".parquet", ".json"):
        rep.save(str(tmp_path / f"r{suffix}"))
        back = Report.load(str(tmp_path / f"r{suffix}"))
        assert back.points["point"].tolist() == rep.points["point"].tolist(), suffix


def _bits(a: pd.Series) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.int64)


def test_every_format_reads_back_names_that_look_missing_and_every_value_bit_for_bit(tmp_path):
    # a CSV read point names "NA", "None", "nan", "null" and "" (module names, or a user's) as
    # missing: the points lost their names and the part table their scores
    names = {"p0": "NA", "p1": "None", "p2": "", "pool": "nan", "final": "null"}
    rows = [dict(r, point=names[r["point"]]) for r in _rows()]
    rows[0].update(channel=-0.0, layer=5e-324, n_images=2 ** 62 + 1)  # sign, subnormal, > 2**53
    rows[6].update(channel=float("nan"), layer=float("nan"), undefined_fraction=1.0)  # None (1,1)
    rows[2].update(layer=1.7976931348623157e308)
    rep = Report.from_rows(rows, {"model": "toy", "big": 2 ** 64 + 1, "zero": -0.0})
    for suffix in (".json", ".csv", ".parquet"):
        rep.save(tmp_path / f"r{suffix}")
        back = Report.load(tmp_path / f"r{suffix}")
        assert back.points["point"].tolist() == [r["point"] for r in rows], suffix
        assert back.points["n_images"].tolist() == [r["n_images"] for r in rows], suffix
        for table, want in ((back.points, rep.points), (back.parts, rep.parts)):
            for col in ("channel", "layer", "undefined_fraction"):
                assert np.array_equal(_bits(table[col]), _bits(want[col])), (suffix, col)
        assert back.meta["big"] == 2 ** 64 + 1 and math.copysign(1, back.meta["zero"]) == -1
    # the parts as computed by hand: early's translation channel is the mean of NA's and None's
    early = rep.parts[(rep.parts.part == "early") & (rep.parts.family == "translation")
                      & (rep.parts.metric == "correlation")].iloc[0]
    na = np.mean([-0.0, 0.7])  # NA: translations (1,1) -> -0.0, (2,2) -> 0.7
    assert math.isclose(early.channel, (na + 0.6) / 2)  # None: (1,1) undefined, (2,2) -> 0.6


def _saved(tmp_path, suffix, rows, meta=None):
    Report.from_rows(rows, {"model": "toy", **(meta or {})}).save(tmp_path / f"r{suffix}")
    return tmp_path / f"r{suffix}"


def _edit_points(path, edit):
    """Rewrite the points of a saved report (any format) with ``edit(DataFrame)``."""
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        doc["points"] = edit(pd.DataFrame(doc["points"])).to_dict("records")
        path.write_text(json.dumps(doc))
        return
    table = path.with_name(f"r.points{path.suffix}")
    df = pd.read_parquet(table) if path.suffix == ".parquet" else pd.read_csv(table)
    df = edit(df)
    df.to_parquet(table) if path.suffix == ".parquet" else df.to_csv(table, index=False)


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
@pytest.mark.parametrize("edit, match", [
    (lambda df: df.drop(columns=["channel", "family"]),
     r"its points table lacks the column\(s\) 'family', 'channel'; it was written by equifast "
     r"0\.0\.1, this is "),
    (lambda df: df.assign(layer=["0.5"] * (len(df) - 1) + ["high"]),
     r"its column 'layer' holds 'high' \(row 29\), not a number"),
    (lambda df: df.assign(part=df["part"].replace("middle", "centre")),
     r"it names part\(s\) 'centre'; the parts are early, middle, late, pool, final"),
    (lambda df: df.assign(transform=[None] + df["transform"].tolist()[1:]),
     r"row 0 has no 'transform' \(a truncated or hand-edited file\?\)"),
    # rows deleted, or a file cut at a line break: the points left out of a family's mean
    (lambda df: df.iloc[:-3], r"point\(s\) 'final' have no row under 'translation\(2,2\)' "
     r"\(cosine\), which the other points have \(a truncated or hand-edited file\?\)"),
    # the other numbers measure writes: "six" images loaded as they were
    (lambda df: df.assign(n_images=["4"] * (len(df) - 1) + ["six"]),
     r"its column 'n_images' holds 'six' \(row 29\), not a number"),
    # counted twice in every mean over them
    (lambda df: pd.concat([df, df.iloc[[4]]], ignore_index=True),
     r"its row 30 repeats point 'p0' under 'rotation\(90\)' \(correlation\)"),
], ids=["columns-missing", "score-not-a-number", "unknown-part", "name-missing", "rows-missing",
        "n-images-not-a-number", "row-repeated"])
def test_a_hand_edited_or_foreign_report_is_a_clear_error(tmp_path, suffix, edit, match):
    # they failed deep inside (KeyError 'family', "agg function failed"), or scored the
    # unknown part as NaN
    path = _saved(tmp_path, suffix, _rows(), {"versions": {"equifast": "0.0.1"}})
    _edit_points(path, edit)
    with pytest.raises(ValueError, match=rf"Expected a report saved by Report.save in .*, but {match}"):
        Report.load(path)


@pytest.mark.parametrize("suffix, damage, match", [
    (".json", lambda p: p.write_text('{"points": {"point": "p0"}}'),
     r"its 'points' are not a list of rows"),
    (".json", lambda p: p.write_text(json.dumps({"points": [], "meta": ["toy"]})),
     r"its meta is a list, not a dict"),
    (".csv", lambda p: p.with_name("r.meta.json").write_text('"toy"'),
     r"its meta is a str, not a dict"),
    (".csv", lambda p: p.with_name("r.points.csv").write_text(""),
     r"r\.points\.csv'.*cannot be read \(EmptyDataError"),
    (".csv", lambda p: p.with_name("r.points.csv").write_text(
        p.with_name("r.points.csv").read_text()[:-20]), r"r\.points\.csv'.*truncated file"),
    (".parquet", lambda p: p.with_name("r.points.parquet").write_bytes(b"PAR1 not parquet"),
     r"r\.points\.parquet'.*cannot be read \(ArrowInvalid"),
    (".csv", lambda p: (p.with_name("r.meta.json").write_text('{"transforms": "[rotation(90)]"}'),
                        p.with_name("r.points.csv").write_text(
                            p.with_name("r.points.csv").read_text().splitlines(keepends=True)[0])),
     r"its points table has no rows while its meta names the transforms measured"),
], ids=["json-points-dict", "json-meta-list", "meta-str", "csv-empty", "csv-truncated",
        "parquet-corrupt", "csv-header-only"])
def test_a_damaged_report_file_is_named(tmp_path, suffix, damage, match):
    # they were TypeErrors of dict(), EmptyDataError or ArrowInvalid without the report, or
    # (a truncated CSV) a report whose last row had lost its last values
    path = _saved(tmp_path, suffix, _rows())
    damage(path)
    with pytest.raises(ValueError, match=match):
        Report.load(path)


def test_csv_and_parquet_of_one_stem_never_pair_a_report_with_anothers_meta(tmp_path):
    # B saved as r.parquet replaced the meta A (r.csv) loads with: A read as model B, seed 1
    a = Report.from_rows(_rows(), {"model": "A", "seed": 0})
    b = Report.from_rows(_rows(), {"model": "B", "seed": 1})
    a.save(tmp_path / "r.csv")
    with pytest.raises(FileExistsError, match=r"holds the meta of another report saved as "
                                              r".*r\.points\.csv'.*delete r\.points\.csv first"):
        b.save(tmp_path / "r.parquet")
    assert not (tmp_path / "r.points.parquet").exists()
    assert Report.load(tmp_path / "r.csv").meta == {"model": "A", "seed": 0}
    a.save(tmp_path / "r.parquet")  # the same report in both formats shares its meta
    assert Report.load(tmp_path / "r.parquet").meta == {"model": "A", "seed": 0}
    # a rerun of one measurement saved in both formats: only its timings differ
    again = Report.from_rows(_rows(), {"model": "A", "seed": 0, "seconds": 9.5})
    again.save(tmp_path / "r.csv")
    again.save(tmp_path / "r.parquet")
    assert Report.load(tmp_path / "r.csv").meta["seconds"] == 9.5
    (tmp_path / "r.points.csv").unlink()
    b.save(tmp_path / "r.parquet")  # the other format gone: the meta is this path's alone
    assert Report.load(tmp_path / "r.parquet").meta == {"model": "B", "seed": 1}


def test_csv_and_parquet_of_one_stem_saved_at_once_never_pair_a_report_with_anothers_meta(
        tmp_path, monkeypatch):
    # B saved as r.parquet by another process while A was being saved as r.csv: both passed the
    # check of the shared meta before either was committed, and A then loaded as model B
    from equifast import report as report_module

    a = Report.from_rows(_rows(), {"model": "A", "seed": 0})
    b = Report.from_rows(_rows(), {"model": "B", "seed": 1})
    real = report_module.stage_folder

    def other_save_meanwhile(folder):  # A checked, not yet committed: B saved in full
        monkeypatch.setattr(report_module, "stage_folder", real)
        b.save(tmp_path / "r.parquet")
        return real(folder)

    monkeypatch.setattr(report_module, "stage_folder", other_save_meanwhile)
    with pytest.raises(FileExistsError, match=r"holds the meta of another report saved as "
                                              r".*r\.points\.parquet'"):
        a.save(tmp_path / "r.csv")
    assert not (tmp_path / "r.points.csv").exists()
    assert not list(tmp_path.glob(".equifast-*"))  # no stage left behind
    assert Report.load(tmp_path / "r.parquet").meta == {"model": "B", "seed": 1}


def test_a_json_report_whose_score_is_true_is_refused(tmp_path):
    # true was read as a score of 1.0
    path = _saved(tmp_path, ".json", _rows())
    doc = json.loads(path.read_text())
    doc["points"][3]["channel"] = True
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"its column 'channel' holds True \(row 3\), not a number"):
        Report.load(path)


def test_a_report_lacking_rows_is_refused_when_saved_as_load_would_refuse_it(tmp_path):
    # it was saved, then refused by load as a truncated file
    rows = _rows()
    for suffix in (".json", ".csv", ".parquet"):
        with pytest.raises(ValueError, match=r"Expected every point under every transform and metric, "
                                             r".* but point\(s\) 'final' have no row under "
                                             r"'rotation\(90\)' \(cosine\), which the other points have; "
                                             r"keep the rows"):
            Report.from_rows(rows[:-1]).save(tmp_path / f"r{suffix}")
        # a row without its undefined fraction: saved, then refused as a row cut short
        with pytest.raises(ValueError, match=r"each row whole, .* but row 2 has no "
                                             r"'undefined_fraction'; keep the rows"):
            Report.from_rows([dict(r, undefined_fraction=float("nan")) if i == 2 else r
                              for i, r in enumerate(rows)]).save(tmp_path / f"r{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_a_report_made_of_a_repeated_row_is_refused():
    # the repeated row counted twice in the means of its family and part
    rows = _rows()
    with pytest.raises(ValueError, match=r"its row 30 repeats point 'p0' under 'translation\(1,1\)' "
                                         r"\(correlation\)"):
        Report.from_rows(rows + [dict(rows[0], channel=0.0)])
    Report.from_rows(rows + [dict(rows[0], metric="other")])  # another metric is another row


def test_a_report_of_no_points_round_trips_and_its_figure_says_why_there_is_none(tmp_path):
    # its CSV was a blank line that load could not read (EmptyDataError), and plot failed in
    # matplotlib ("Number of rows must be a positive integer, not 0")
    empty = Report.from_rows([], {"model": "none"})
    for suffix in (".json", ".csv", ".parquet"):
        empty.save(tmp_path / f"r{suffix}")
        back = Report.load(tmp_path / f"r{suffix}")
        assert len(back.points) == 0 and len(back.parts) == 0 and back.meta == {"model": "none"}
    with pytest.raises(ValueError, match=r"Expected part scores to draw .* the report measured no point"):
        empty.plot()
    one = Report.from_rows([r for r in _rows() if r["point"] == "p2"])
    one.plot(others={"none": empty})  # a line of no scores beside one of some: drawn


def test_combine_runs_refuses_no_runs_other_metrics_and_a_by_key_no_run_has():
    # [] was pandas' "No objects to concatenate", a table an AttributeError; runs of other
    # metrics combined into all-NaN rows said to be over 2 runs; by=["sed"] (a typo) put every
    # run in one group of None
    both = Report.from_rows(_rows(), {"setting": "a", "seed": 0})
    corr = Report.from_rows([dict(r, channel=r["channel"] + 0.1) for r in _rows()
                             if r["metric"] == "correlation"], {"setting": "a", "seed": 1})
    with pytest.raises(ValueError, match="at least one report"):
        combine_runs([])
    with pytest.raises(TypeError, match="run 1 is a DataFrame"):
        combine_runs([both, corr.points])
    # one report was "'Report' object is not iterable"; a dict's runs were its labels (str)
    with pytest.raises(TypeError, match=r"Expected `reports` to be a list of Reports \(one per run\), "
                                        r"but got a Report; pass \[report\]"):
        combine_runs(both)
    with pytest.raises(TypeError, match=r"but got a dict; pass list\(reports.values\(\)\)"):
        combine_runs({"seed 0": both, "seed 1": both})
    pd.testing.assert_frame_equal(combine_runs([both]), combine_runs(iter([both])))
    with pytest.raises(ValueError, match=r"same metrics, but run 1 measured \['correlation'\] and "
                                         r"run 0 \['correlation', 'cosine'\]"):
        combine_runs([both, corr])
    with pytest.raises(ValueError, match="'sed' is in none of them"):
        combine_runs([both, both], by=["sed"])
    # what the message advises: the metric they share, the mean of the two runs' part scores
    kept = Report(both.points[both.points.metric == "correlation"], both.meta)
    out = combine_runs([kept, corr], by="setting")
    row = out[(out.part == "early") & (out.family == "rotation")].iloc[0]
    one = both.parts[(both.parts.part == "early") & (both.parts.family == "rotation")
                     & (both.parts.metric == "correlation")].channel.iloc[0]
    assert math.isclose(row.channel, one + 0.05) and row.runs == 2
    # a key some runs lack stays a group of None beside the others
    assert set(combine_runs([both, Report(corr.points, {})], by="setting").runs) == {1}
    # by=None groups by nothing, as by=() (was "'NoneType' object is not iterable")
    assert combine_runs([kept, corr], by=None).equals(combine_runs([kept, corr]))


def test_a_report_is_made_of_a_points_table_only():
    # a list was an AttributeError, a table without 'part' a KeyError, a score that is no
    # number pandas' "agg function failed", and a part of another name left the parts (NaN)
    rows = _rows()
    with pytest.raises(TypeError, match="a pandas DataFrame .* but got a list; .*from_rows"):
        Report(rows)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) 'part'"):
        Report(pd.DataFrame(rows).drop(columns="part"))
    with pytest.raises(ValueError, match=r"column 'channel' holds 'x' \(row 1\)"):
        Report.from_rows([dict(r, channel="x") if i == 1 else r for i, r in enumerate(rows)])
    with pytest.raises(ValueError, match=r"names part\(s\) 'stem'"):
        Report.from_rows([dict(r, part="stem") if r["point"] == "p0" else r for r in rows])
    assert len(Report(pd.DataFrame()).parts) == 0  # an empty report stays one
    # a model's name as meta failed inside dict(): "dictionary update sequence element #0 ..."
    for meta in ("resnet18", 3):
        with pytest.raises(TypeError, match=rf"Expected `meta` to be a dict \(as report.meta\), but got a "
                                            rf"{type(meta).__name__}"):
            Report.from_rows(rows, meta)
    assert Report.from_rows(rows, None).meta == {} and Report(pd.DataFrame(rows), {"a": 1}).meta == {"a": 1}
    # a table taken is scored as before: early's rotation is the mean of its two points
    parts = Report(pd.DataFrame(rows)).parts
    row = parts[(parts.part == "early") & (parts.family == "rotation") & (parts.metric == "cosine")]
    assert math.isclose(row.channel.iloc[0], ((0.3 + 0.0) + (0.3 - 0.1 + 0.05)) / 2)


def test_categorical_columns_are_grouped_by_the_values_they_hold(tmp_path):
    # pandas 2 (observed=False) grouped a categorical part by every category: each part counted
    # every point, and the toy's late part, which has no point, was a part of its own
    rows = _rows()
    plain = Report.from_rows(rows)
    df = pd.DataFrame(rows)
    names = ["point", "transform", "family", "metric"]
    cat = df.assign(part=pd.Categorical(df["part"], ["early", "middle", "late", "pool", "final"],
                                        ordered=True), **{c: df[c].astype("category") for c in names})
    text = lambda t: t.astype({c: str for c in t.columns if c in names + ["part"]})
    rep = Report(cat)
    want = text(plain.parts)
    assert list(want.n_points) == [2, 1, 1, 1] * 4 and "late" not in set(want.part)
    pd.testing.assert_frame_equal(text(rep.parts), want)
    pd.testing.assert_frame_equal(text(rep.shifts), text(plain.shifts))
    pd.testing.assert_frame_equal(text(rep.metric_bias()["correlation"]),
                                  text(plain.metric_bias()["correlation"]))
    rep.save(tmp_path / "r.parquet")  # read back as categorical columns
    pd.testing.assert_frame_equal(text(Report.load(tmp_path / "r.parquet").parts), want)

@pytest.mark.parametrize("name,folder", [("r.json", "r.json"), ("r.csv", "r.points.csv"),
                                         ("r.parquet", "r.meta.json")])
def test_save_onto_a_folder_names_it(tmp_path, name, folder):
    # the rename of the temporary file failed: IsADirectoryError naming '.r.json.<pid>.tmp'
    (tmp_path / folder).mkdir()
    rep = Report.from_rows(_rows(), {"model": "toy"})
    with pytest.raises(IsADirectoryError, match=rf"to {re.escape(repr(str(tmp_path / folder)))}, "
                                                "but that is a folder"):
        rep.save(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [folder]  # nothing else written
    back = Report.load(rep.save(tmp_path / "ok" / name)[0].parent / name)
    pd.testing.assert_frame_equal(back.parts, rep.parts)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_points_beside_another_reports_meta_are_refused(tmp_path, suffix):
    # another run's points file copied beside this report's meta loaded as this run's model,
    # images and accuracy, without a word
    rows = _rows()
    transforms = list(dict.fromkeys(r["transform"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    path = _saved(tmp_path, suffix, rows, {"transforms": transforms, "metrics": metrics})
    rotation = [r for r in rows if r["transform"] == "rotation(90)"]
    other = Report.from_rows(rotation, {"model": "other", "transforms": ["rotation(90)"],
                                        "metrics": metrics})
    other.save(tmp_path / "other" / f"r{suffix}")
    (tmp_path / "r.meta.json").write_text((tmp_path / "other" / "r.meta.json").read_text())
    unnamed = [t for t in transforms if t != "rotation(90)"]
    with pytest.raises(ValueError, match=re.escape(f"its points hold transforms {unnamed} that its "
                                                   "meta does not name (it names ['rotation(90)'])")):
        Report.load(path)
    # the meta of a run of one metric beside points of two
    (tmp_path / "r.meta.json").write_text(json.dumps({"transforms": transforms,
                                                       "metrics": ["correlation"]}))
    with pytest.raises(ValueError, match=re.escape("its points hold metrics ['cosine'] that its meta")):
        Report.load(path)
    # and saved so, it is refused before any file is written
    with pytest.raises(ValueError, match=re.escape("Expected the meta to name every transform and "
                                                   "metric of the points")):
        Report.from_rows(rows, {"transforms": ["rotation(90)"]}).save(tmp_path / "new" / f"r{suffix}")
    assert not (tmp_path / "new").exists()
    # fewer than the meta names: one metric's rows of a report, saved apart, load
    full = Report.from_rows(rows, {"model": "toy", "transforms": transforms, "metrics": metrics})
    cosine = Report(full.points[full.points["metric"] == "cosine"], full.meta)
    cosine.save(tmp_path / "cosine" / f"r{suffix}")
    back = Report.load(tmp_path / "cosine" / f"r{suffix}")
    pd.testing.assert_frame_equal(back.parts, full.parts[full.parts["metric"] == "cosine"]
                                  .reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_points_of_another_runs_images_beside_this_meta_are_refused(tmp_path, suffix):
    # another model's points of the same transforms, measured on other images, copied beside
    # this report's meta, loaded as this report's model and accuracy without a word
    rows = _rows()
    meta = {"transforms": list(dict.fromkeys(r["transform"] for r in rows)),
            "metrics": list(dict.fromkeys(r["metric"] for r in rows))}
    mine = {r["n_images"] for r in rows}.pop()
    path = _saved(tmp_path, suffix, rows, dict(meta, n_images=mine))
    other = [dict(r, n_images=mine + 3) for r in rows]
    Report.from_rows(other, dict(meta, model="other", n_images=mine + 3)).save(tmp_path / "o" / f"r{suffix}")
    (tmp_path / f"r.points{suffix}").write_bytes((tmp_path / "o" / f"r.points{suffix}").read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"its points were measured on {mine + 3} images, "
                                                   f"where its meta says {mine} (n_images): are the "
                                                   "points and the meta of two reports mixed")):
        Report.load(path)
    # and saved so, it is refused before any file is written
    with pytest.raises(ValueError, match="Expected the meta to count the images of the points"):
        Report.from_rows(other, dict(meta, n_images=mine)).save(tmp_path / "new" / f"r{suffix}")
    assert not (tmp_path / "new").exists()
    # the report's own files, and a meta without n_images, load
    pd.testing.assert_frame_equal(Report.load(tmp_path / "o" / f"r{suffix}").points,
                                  Report.from_rows(other).points, check_dtype=False)
    _saved(tmp_path / "o", suffix, rows, meta)
    assert "n_images" not in Report.load(tmp_path / "o" / f"r{suffix}").meta


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
@pytest.mark.parametrize("name, group, value", [("point", "part", "p2"),
                                                ("transform", "family", "translation(2,2)")])
def test_a_point_or_transform_renamed_in_some_rows_only_is_refused(tmp_path, suffix, name, group, value):
    # its cosine rows moved to another part (family) were averaged there: a share of the point
    # in each of two parts, without a word
    rows = _rows()
    path = _saved(tmp_path, suffix, rows)
    other = {"part": "late", "family": "rotation"}[group]
    before = list(dict.fromkeys(r[group] for r in rows if r[name] == value))
    _edit_points(path, lambda df: df.assign(**{group: df[group].mask(
        (df[name] == value) & (df["metric"] == "cosine"), other)}))
    with pytest.raises(ValueError, match=re.escape(f"its {name} {value!r} is in the "
                                                   f"{'parts' if group == 'part' else 'families'} "
                                                   f"{before[0]!r}, {other!r} in different rows")):
        Report.load(path)
    # renamed in every row, it is read as renamed
    _edit_points(path, lambda df: df.assign(**{group: df[group].mask(df[name] == value, other)}))
    assert set(Report.load(path).points.loc[lambda df: df[name] == value, group]) == {other}


def test_a_line_whose_label_starts_with_an_underscore_is_named_in_the_legend():
    # matplotlib's legend leaves such labels out: the "_base" line was drawn, named nowhere
    base = Report.from_rows(_rows(late=True))
    fig = base.plot(None, label="_base", others={"_other": base, "full": base})
    drawn = [c.get_label() for c in fig.axes[0].containers]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == drawn == ["_base", "_other", "full"]
    # each entry is drawn as its line is
    handles = fig.legends[0].legend_handles
    assert [h.get_color() for h in handles] == [c.lines[0].get_color() for c in fig.axes[0].containers]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_save_stopped_between_its_files_leaves_the_earlier_report_whole(tmp_path, monkeypatch,
                                                                         suffix, error):
    earlier = Report.from_rows(_rows(), {"model": "earlier"})
    earlier.save(tmp_path / f"r{suffix}")
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    writer = "to_csv" if suffix == ".csv" else "to_parquet"
    real = getattr(pd.DataFrame, writer)
    calls = []

    def stops_at_the_parts(df, *args, **kwargs):  # the points written, the parts not
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(df, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, writer, stops_at_the_parts)
    rows = _rows()
    for r in rows:
        r["channel"] = r["channel"] / 2
    with pytest.raises(type(error)) as got:
        Report.from_rows(rows, {"model": "later"}).save(tmp_path / f"r{suffix}")
    if isinstance(error, OSError):  # named as the file asked for, not the hidden stage's
        assert got.value.filename == str(tmp_path / f"r.parts{suffix}")
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    monkeypatch.undo()
    back = Report.load(tmp_path / f"r{suffix}")
    assert back.meta["model"] == "earlier"
    pd.testing.assert_frame_equal(back.points[earlier.points.columns], earlier.points, check_exact=True)


def test_figures_name_a_table_without_the_columns_they_draw():
    # each failed deep inside: a bare KeyError ('family', 'dy', 'score') or, for one table given
    # without its label, an AttributeError of a Series
    from equifast.figures import plot_accuracy_correlation, plot_parts, plot_shifts
    rep = Report.from_rows(_shift_rows())
    with pytest.raises(ValueError, match=r"Expected the table of 'toy' to be a part table .* but "
                                         r"it lacks \['family'\]"):
        plot_parts({"toy": rep.parts.drop(columns="family")})
    with pytest.raises(TypeError, match=r"Expected `frames` to be a dict of label -> part table, "
                                        r"but got a DataFrame"):
        plot_parts(rep.parts)
    with pytest.raises(TypeError, match=r"dict of label -> shift table, but got 'toy': a list"):
        plot_shifts({"toy": [rep.shifts]})
    with pytest.raises(ValueError, match=r"Expected the table of 'toy' to be a shift table .* "
                                         r"lacks \['dy', 'dx'\]"):
        plot_shifts({"toy": rep.parts})  # the part table given for the shift table
    rows = pd.DataFrame({"part": ["early", "late"], "family": "rotation", "spearman": [0.2, 0.5]})
    with pytest.raises(ValueError, match=r"Expected `table` to be a table of correlations .* lacks "
                                         r"\['score'\]"):
        plot_accuracy_correlation(rows)


def test_figures_refuse_rows_one_line_would_zigzag_through_and_parts_they_cannot_place():
    from equifast.figures import plot_accuracy_correlation, plot_parts, plot_shifts
    from equifast.report import shift_table
    rep = Report.from_rows(_shift_rows())
    correlation = rep.points[rep.points.metric == "correlation"]
    # the points table for the part table: early's line ran back and forth through its 6 rows
    # (2 points x 3 shifts), each drawn at 'early', none the part's score
    assert (correlation.part == "early").sum() == 6
    with pytest.raises(ValueError, match=r"one row per \(family, part\) in the table of 'toy', but "
                                         r"it has 6 of family=translation, part=early \(told apart "
                                         r"by \['point', 'transform'"):
        plot_parts({"toy": correlation})
    # two seeds' shift tables joined: a line through both seeds' scores at every shift
    seeds = pd.concat([shift_table(correlation).assign(seed=s) for s in (0, 1)])
    with pytest.raises(ValueError, match=r"has 2 of family=translation, part=early, dy=1, dx=1 "
                                         r"\(told apart by \['seed'\]\)"):
        plot_shifts({"toy": seeds})
    # a whole accuracy_correlation table of two datasets: one line through both
    rows = [{"dataset": d, "part": p, "family": "rotation", "score": "channel", "spearman": rho}
            for d, rho in (("a", 0.5), ("b", -0.5)) for p in ("early", "middle")]
    with pytest.raises(ValueError, match=r"told apart by \['dataset'\]"):
        plot_accuracy_correlation(pd.DataFrame(rows))
    drawn = plot_accuracy_correlation(pd.DataFrame(rows[:2])).axes[0].get_lines()[0]
    assert drawn.get_xydata().tolist() == [[0, 0.5], [1, 0.5]]  # one dataset's: drawn
    # a part of another name was drawn at x = -1, outside the panel, in plot_parts (left out of
    # plot_shifts): gone without a word
    stem = rep.parts.assign(part=rep.parts.part.astype(str).replace({"early": "stem"}))
    with pytest.raises(ValueError, match=r"parts of the table of 'toy' to be among early, middle, "
                                         r"late, pool, final, but it has 'stem'"):
        plot_parts({"toy": stem})
    with pytest.raises(ValueError, match=r"but it has 'stem'"):
        plot_shifts({"toy": rep.shifts.assign(part=rep.shifts.part.astype(str).replace({"early": "stem"}))})


def test_accuracy_figure_marks_a_part_without_a_row_between_two_and_does_not_bridge_it():
    from equifast import figures
    from equifast.points import PARTS
    # no model has a pool (SqueezeNets): the channel line ran from late straight to final
    rows = pd.DataFrame([{"part": p, "family": "rotation", "score": "channel", "spearman": rho}
                         for p, rho in (("early", 0.4), ("middle", 0.2), ("late", -0.1), ("final", 0.6))])
    ax = figures.plot_accuracy_correlation(rows).axes[0]
    line = next(line for line in ax.get_lines() if line.get_label() == "channel")
    want = rows.set_index("part")["spearman"].reindex(list(PARTS))  # pool: no row, NaN
    assert list(line.get_xdata()) == list(range(len(PARTS)))
    np.testing.assert_array_equal(line.get_ydata(), want.to_numpy())
    assert [list(m.get_xdata()) for m in ax.get_lines() if m.get_gid() == figures.UNDEFINED] == [
        [PARTS.index("pool")]]


def test_parts_figure_names_lines_keyed_by_numbers_in_its_legend():
    # settings keyed by a width (0.5, 1.0): the lines were drawn, the legend left empty
    from equifast.figures import plot_parts
    narrow, wide = Report.from_rows(_rows(late=True)), Report.from_rows(_rows(late=True))
    fig = plot_parts({0.5: narrow.parts, 1.0: wide.parts}, metric="correlation")
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["0.5", "1.0"]
    drawn = {c.get_label(): c.lines[0].get_color() for c in fig.axes[0].containers}
    assert [h.get_color() for h in legend.legend_handles] == [drawn["0.5"], drawn["1.0"]]


def test_shift_table_takes_one_by_column_by_name_and_names_a_missing_one():
    from equifast.report import shift_table
    points = pd.concat([Report.from_rows(_shift_rows()).points.assign(seed=s, channel=lambda d, s=s: d.channel + s)
                        for s in (0, 1)], ignore_index=True)
    # "seed" was taken letter by letter: KeyError: 's'
    table = shift_table(points, by="seed")
    pd.testing.assert_frame_equal(table, shift_table(points, by=["seed"]))
    keys = ["seed", "part", "transform", "metric"]
    want = points.astype({"part": str}).groupby(keys).channel.mean()  # each seed apart
    got = table.astype({"part": str}).set_index(keys).channel
    assert len(got) == len(want) and np.allclose(got.reindex(want.index), want)
    with pytest.raises(ValueError, match=r"Expected each name in `by` to be a column of the points "
                                         r"table, but 'model' is not \(its columns: point, part"):
        shift_table(points, by=["seed", "model"])  # a bare KeyError: 'model'


def test_metric_bias_of_scores_that_do_not_vary_is_undefined():
    # under the identity every score is 1 up to float32 rounding: np.corrcoef correlated that
    # rounding noise with the activations (0.70 for ResNet-18); the scores' own rule
    # (TOLERANCE) says such a column has nothing to correlate
    from equifast import TOLERANCE

    acts, noise, varied = [0.2, 0.33, 0.56, 0.44], [5e-8, 2e-8, 6e-8, 1e-8], [0.3, 0.9, 0.4, 0.6]
    rows = []
    for order in range(4):
        for metric, c in (("cosine", 1.0 - noise[order]), ("correlation", varied[order])):
            rows.append({"point": f"q{order}", "part": "early", "transform": "identity",
                         "family": "identity", "metric": metric, "channel": c, "layer": c,
                         "undefined_fraction": 0.0, "n_images": 2, "order": order,
                         "mean_activation": acts[order], "mean_magnitude": 1.0 + noise[order]})
    corr = Report.from_rows(rows).metric_bias()["correlation"].set_index("metric")
    # the columns' spread against their size, as the rule reads it
    spread = np.linalg.norm(np.subtract(1.0, noise) - np.mean(np.subtract(1.0, noise)))
    assert spread <= TOLERANCE * np.linalg.norm(np.subtract(1.0, noise))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exactly constant column: no RuntimeWarning either
        assert math.isnan(corr.loc["cosine", "correlation_with_mean_activation"])
        constant = Report.from_rows([dict(r, channel=1.0) for r in rows]).metric_bias()
    assert constant["correlation"]["correlation_with_mean_activation"].isna().all()
    # the magnitude does not vary either; the scores that do still correlate with the activations
    assert corr["correlation_with_mean_magnitude"].isna().all()
    assert math.isclose(corr.loc["correlation", "correlation_with_mean_activation"],
                        float(np.corrcoef(varied, acts)[0, 1]))

"""``equifast sweep report``'s statistics on hand-made tables: Spearman as scipy computes it on
the same per-model means, and the accuracies it correlates with."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from equifast.distributed import analysis


def _parts(acc, source=None, datasets=("a",), seeds=(0, 1), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for ds in datasets:
        for s in seeds:
            for m, a in acc.items():
                for part in analysis.PARTS:
                    ch = rng.random()
                    if m == "m1" and part == "pool":
                        ch = np.nan  # undefined in every seed
                    if m == "m3" and part == "early" and s == 1:
                        ch = np.nan  # undefined in one seed: its mean is undefined too
                    rows.append(dict(dataset=ds, metric="correlation", transforms="rotation",
                                     family="rotation", model=m, part=part, seed=s, channel=ch,
                                     layer=ch + 0.05, accuracy=a,
                                     accuracy_source=None if source is None else source[m]))
    return pd.DataFrame(rows)


ACC = {"m0": .70, "m1": .75, "m2": np.nan, "m3": .80, "m4": .80, "m5": .60, "m6": .90}


def test_spearman_is_scipys_over_models_with_a_score_and_an_accuracy():
    df = _parts(ACC, datasets=("a", "b"))
    corr = analysis.accuracy_correlation(analysis.part_scores(df))
    assert len(corr) == 2 * 5 * 2
    for (ds, part, score), row in corr.set_index(["dataset", "part", "score"]).iterrows():
        g = df[(df.dataset == ds) & (df.part == part)]
        means = g.groupby("model")[[score, "accuracy"]].agg(lambda x: x.mean(skipna=False)).dropna()
        ref = spearmanr(means[score], means["accuracy"])
        assert row.n_models == len(means)
        assert row.spearman == pytest.approx(ref.statistic) and row.p_value == pytest.approx(ref.pvalue)
    # 5 models have both in the early and pool parts (m2 has no accuracy, m3 / m1 no score)
    assert set(corr[corr.part.isin(["early", "pool"]) & (corr.score == "channel")].n_models) == {5}
    few = analysis.accuracy_correlation(analysis.part_scores(df), min_models=6)
    assert few[few.n_models < 6].spearman.isna().all() and few[few.n_models >= 6].spearman.notna().all()


def test_mixed_measured_and_known_accuracies_are_said():
    # two models measured on the data's labels, two (of other classes) with their known top-1
    source = {"m0": "measured", "m1": "measured", "m2": "known", "m3": "known"}
    acc = {"m0": .7, "m1": .8, "m2": .75, "m3": .9}
    with pytest.warns(UserWarning, match=r"dataset 'a': the accuracies mix top-1 measured .* "
                                         r"\(2 models\) with known accuracies \(2: m2, m3\)"):
        analysis.part_scores(_parts(acc, source))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one kind each: nothing to say
        analysis.part_scores(_parts(acc, dict.fromkeys(acc, "measured")))
        analysis.part_scores(_parts(acc, source), accuracy="known")


def test_the_default_metric_is_correlation_or_the_one_the_sweep_measured():
    # a sweep of cosine only: the default (correlation) was refused by `sweep report`, though
    # the user never passed --metric
    cosine = _parts(ACC).assign(metric="cosine")
    both = pd.concat([_parts(ACC, seed=1), cosine], ignore_index=True)
    for df, want in ((cosine, "cosine"), (both, "correlation")):
        scores = analysis.part_scores(df)
        assert set(scores["metric"]) == {want}
        pd.testing.assert_frame_equal(scores, analysis.part_scores(df, metric=want))
        assert analysis.final_correlation(df).equals(analysis.final_correlation(df, metric=want))
    with pytest.raises(ValueError, match=r"`metric` to be one of \['cosine'\], but got 'correlation'"):
        analysis.part_scores(cosine, metric="correlation")  # asked for: still refused
    assert set(analysis.part_scores(both, metric=None)["metric"]) == {"cosine", "correlation"}


def test_figure_titles_name_the_metric_drawn_not_auto(tmp_path, monkeypatch):
    import equifast.figures

    titles = []
    real = equifast.figures.plot_parts

    def plot_parts(frames, path=None, title="", **kw):
        titles.append(title)
        return real(frames, path, title=title, **kw)

    monkeypatch.setattr(equifast.figures, "plot_parts", plot_parts)
    analysis.sweep_figures(_parts(ACC).assign(metric="cosine"), tmp_path / "figures")
    assert titles == ["rotation equivariance per part (a, cosine)"]


def test_datasets_whose_names_make_one_figure_file_name_are_refused(tmp_path):
    # 'img net' and 'img_net' both drew fig11_..._img_net.png: the second replaced the first
    df = _parts({"m0": .7, "m1": .8}, datasets=("img net", "img_net"))
    with pytest.raises(ValueError, match=r"'img net' and 'img_net' both make "
                                         r"'fig11_translation_img_net.png'; rename one"):
        analysis.sweep_figures(df, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()  # nothing written
    files = analysis.sweep_figures(_parts({"m0": .7, "m1": .8}, datasets=("img net", "img-net")),
                                   tmp_path / "figures", min_models=2)
    assert {p.name for p in files["figures"]} >= {"fig12_rotation_img_net.png",
                                                  "fig12_rotation_img-net.png"}


def test_parts_of_other_names_are_refused_not_merged_into_one():
    # 'stage1' and 'stage2' both became NaN in the parts' Categorical: one part of them, where
    # each model was counted twice in a Spearman (n_models 8 of 4 models)
    df = _parts({"m0": .7, "m1": .8, "m2": .6, "m3": .9}, seeds=(0,))
    named = df.assign(part=df["part"].map({"early": "stage1", "middle": "stage2"}).fillna(df["part"]))
    for f in (analysis.part_scores, analysis.accuracy_correlation, analysis.final_correlation):
        with pytest.raises(ValueError, match=r"parts to be some of early, middle, late, pool, "
                                             r"final, but it names 'stage1', 'stage2'"):
            f(named)
    # the parts it knows: each model once in each part's correlation
    corr = analysis.accuracy_correlation(df)
    assert set(corr["n_models"]) <= {3, 4} and corr["part"].notna().all()
    for (part, score), row in corr.set_index(["part", "score"]).iterrows():
        g = df[df.part == part][["model", score, "accuracy"]].dropna()
        assert row.n_models == len(g) == g["model"].nunique()


def test_a_table_lacking_a_column_is_said_by_its_name():
    # a bare KeyError 'layer' (or 'transform', of the shifts) from pandas
    df = _parts({"m0": .7, "m1": .8, "m2": .6}, seeds=(0,))
    for col in ("model", "family", "part", "channel", "layer"):
        for f in (analysis.part_scores, analysis.accuracy_correlation, analysis.final_correlation):
            with pytest.raises(ValueError, match=rf"Expected a parts table with the columns model, "
                                                 rf"family, part, channel, layer, but it lacks '{col}'"):
                f(df.drop(columns=col))
    points = df.assign(point=df["part"], transform="rotation(90)", undefined_fraction=0.0)
    for col in ("point", "transform", "undefined_fraction", "layer"):
        with pytest.raises(ValueError, match=rf"Expected a points table .* but it lacks '{col}'"):
            analysis.shift_scores(points.drop(columns=col))
    assert len(analysis.shift_scores(points)) == 0  # no translation: no rows, as documented


def test_mixed_accuracies_of_a_table_without_a_dataset_column_are_said():
    # its dataset is 'data' (part_scores' default): a bare KeyError "['dataset'] not in index"
    source = {"m0": "measured", "m1": "measured", "m2": "known"}
    df = _parts({"m0": .7, "m1": .8, "m2": .75}, source).drop(columns="dataset")
    with pytest.warns(UserWarning, match=r"dataset 'data': the accuracies mix top-1 measured .* "
                                         r"\(2 models\) with known accuracies \(1: m2\)"):
        scores = analysis.part_scores(df)
    means = df.groupby(["model", "part"])["accuracy"].mean()
    got = scores.astype({"part": str}).set_index(["model", "part"])["accuracy"]
    pd.testing.assert_series_equal(got.sort_index(), means.sort_index(), check_names=False)


def test_rows_of_one_seed_repeated_are_refused_not_counted_as_seeds():
    # two datasets' rows without their dataset column: each model's mean was over both, with a
    # standard deviation over "1 seed"
    df = _parts({"m0": .7, "m1": .8, "m2": .6}, datasets=("a", "b"), seeds=(0,))
    with pytest.raises(ValueError, match=rf"Expected one row per seed of each dataset, metric, "
                                         rf"transforms, family, model, part, but {len(df)} rows "
                                         rf"repeat theirs \(the first: dataset 'data', .* seed 0\)"):
        analysis.part_scores(df.drop(columns="dataset"))
    with pytest.raises(ValueError, match="one row per seed"):
        analysis.accuracy_correlation(pd.concat([df, df.iloc[:1]], ignore_index=True))
    scores = analysis.part_scores(df)  # told apart: one seed each, no spread
    assert (scores["seeds"] == 1).all() and scores["channel_std"].isna().all()
    means = df.groupby(["dataset", "model", "part"])["channel"].mean()
    got = scores.astype({"part": str}).set_index(["dataset", "model", "part"])["channel"]
    pd.testing.assert_series_equal(got.sort_index(), means.sort_index(), check_names=False)


def test_a_model_of_two_joined_score_tables_is_refused_not_ranked_twice():
    # part_scores of two sweeps joined, m0 in both: it was ranked as two models (n_models 6)
    first = analysis.part_scores(_parts({"m0": .7, "m1": .8, "m2": .6}, seeds=(0,)))
    second = analysis.part_scores(_parts({"m0": .7, "m3": .9, "m4": .5}, seeds=(0,), seed=1))
    joined = pd.concat([first, second], ignore_index=True)
    for f in (analysis.accuracy_correlation, analysis.final_correlation):
        with pytest.raises(ValueError, match=r"one row per model .* but model 'm0' has several of "
                                             r"part 'early' \(a, correlation, rotation, rotation\)"):
            f(joined)
    # each model once: as scipy ranks the five
    kept = joined[~((joined.model == "m0") & joined.index.isin(second.index + len(first)))]
    corr = analysis.accuracy_correlation(kept)
    for (part, score), row in corr.set_index(["part", "score"]).iterrows():
        g = kept[kept.part == part][[score, "accuracy"]].dropna()
        assert row.n_models == len(g) <= 5
        if len(g) >= 3:
            assert row.spearman == pytest.approx(spearmanr(g[score], g["accuracy"]).statistic)


def test_an_accuracy_that_is_no_number_is_refused_not_left_out():
    # '71.2%' was made NaN: its model left out of every Spearman (n_models 3 of 5)
    acc = {"m0": "71.2%", "m1": "75.0", "m2": 0.69, "m3": 0.8, "m4": 77}
    df = _parts({m: 0.5 for m in acc}, seeds=(0,)).assign(accuracy=lambda d: d.model.map(acc))
    with pytest.raises(ValueError, match=r"column 'accuracy' to hold top-1 accuracies .* but it "
                                         r"holds '71.2%' \(model 'm0'\)"):
        analysis.accuracy_correlation(df)
    numbers = {"m0": 71.2, "m1": 75.0, "m2": 0.69, "m3": 0.8, "m4": 77}
    df = df.assign(accuracy=df.model.map(numbers).astype(object).where(df.model != "m1", "75.0"))
    corr = analysis.accuracy_correlation(df)  # '75.0' is a number, as read from a CSV
    for (part, score), row in corr.set_index(["part", "score"]).iterrows():
        g = df[df.part == part].assign(accuracy=lambda d: d.model.map(numbers))[[score, "accuracy"]].dropna()
        assert row.n_models == len(g)
        assert row.spearman == pytest.approx(spearmanr(g[score], g["accuracy"]).statistic)


def test_a_score_that_is_no_number_is_named_by_its_column():
    # "could not convert string to float: 'x'" (parts) and "agg function failed
    # [how->mean,dtype->object]" (shifts) named neither the column nor the row
    df = _parts({"m0": .7, "m1": .8, "m2": .6}, seeds=(0,))
    bad = df.astype({"channel": object})
    bad.loc[3, "channel"] = "n/a"
    with pytest.raises(ValueError, match=r"^Expected the column 'channel' to hold numbers, but "
                                         r"it holds 'n/a' \(row 3\)"):
        analysis.part_scores(bad)
    points = bad.assign(point=bad["part"], transform="translation(1,1)", family="translation",
                        undefined_fraction=0.0)
    with pytest.raises(ValueError, match=r"^Expected the column 'channel' to hold numbers, but "
                                         r"it holds 'n/a' \(row 3\)"):
        analysis.shift_scores(points)
    # numbers written as text (a table read as strings) are the numbers they spell
    text = df.astype({"layer": str})
    pd.testing.assert_frame_equal(analysis.part_scores(text), analysis.part_scores(df))
    # a blank text cell is a missing score, as an empty CSV cell (it was refused, and told to
    # be "left empty")
    blank, missing = df.astype({"layer": str}), df.copy()
    blank.loc[3, "layer"], missing.loc[3, "layer"] = " ", np.nan
    pd.testing.assert_frame_equal(analysis.part_scores(blank), analysis.part_scores(missing))

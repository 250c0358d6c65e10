"""What a researcher expects to repeat: the same numbers whatever the image order, the layout,
the threads, the way the images are given, the caller's random state; files that read back as
they were written; a command run twice that writes the same files.

Tolerances: bitwise where the arithmetic is the same (each image alone through the model, the
scores' fixed-point sums in any order); the model's float32 rounding (1e-6) where a setting
changes its arithmetic (channels-last, batch size); float64 rounding where only float64 sums
change order (activation means, across-images moments), float32 for the across-images layer
score (its K x K correlations are float32).
"""
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

import equifast as ef
from equifast.data import ImageFiles, seeded_subset
from equifast.models import default_preprocess
from equifast.report import Report

EXACT = ["channel", "layer", "undefined_fraction", "layer_undefined_fraction",
         "offdiagonal_fraction", "n_images"]
FLOAT64_SUMS = ["mean_activation", "mean_magnitude"]


def net(classes=5):
    """A small CNN with two dead channels at its first point (undefined entries)."""
    torch.manual_seed(0)
    first = nn.Conv2d(3, 6, 3, padding=1)
    with torch.no_grad():
        first.bias[:2] = -50.0  # two channels that ReLU leaves at 0 everywhere: undefined
    return nn.Sequential(nn.Sequential(first, nn.ReLU()),
                         nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
                         nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


TRANSFORMS = [ef.Translation(1, 2), ef.Translation(2, 2, mode="zero"), ef.Rotation(1),
              ef.Flip("horizontal")]


@pytest.mark.parametrize("vector_mode", ["per_image", "across_images"])
def test_images_in_another_order_give_the_same_scores_to_the_bit(vector_mode):
    # each image alone through the model (batch_size=1): its scores are the same bits in either
    # order, and their fixed-point sums do not depend on the order they are added in
    x = torch.rand(7, 3, 12, 12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    kw = dict(transforms=TRANSFORMS, metric=["correlation", "cosine"], batch_size=1,
              vector_mode=vector_mode)
    want = ef.measure(net(), x, **kw).points
    got = ef.measure(net(), x[perm], **kw).points
    assert (want.undefined_fraction > 0).any()  # the dead channels count in the order too
    vectors = want.point.isin(["pool", "final"])
    if vector_mode == "per_image":
        pd.testing.assert_frame_equal(got.drop(columns=FLOAT64_SUMS),
                                      want.drop(columns=FLOAT64_SUMS), check_exact=True)
    else:  # vectors across images: moments merged image by image (Chan's formulas), float64
        # but for the K x K correlations of the layer score, float32 (VectorState)
        pd.testing.assert_frame_equal(got[~vectors], want[~vectors], check_exact=False,
                                      rtol=1e-12, atol=0)
        float64 = [c for c in EXACT if c != "layer"]
        pd.testing.assert_frame_equal(got[vectors][float64], want[vectors][float64],
                                      check_exact=False, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got[vectors].layer, want[vectors].layer, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(got[FLOAT64_SUMS], want[FLOAT64_SUMS], check_exact=False,
                                  rtol=1e-12, atol=0)


def test_layout_threads_and_batching_change_the_scores_by_float32_rounding_only():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(8, 3, 32, 32)
    ts = [ef.Translation(4, 4), ef.Rotation(1)]
    want = ef.measure(model, x, transforms=ts, batch_size=8).points
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = ef.measure(model, x, transforms=ts, batch_size=8).points
    finally:
        torch.set_num_threads(threads)
    runs = {"channels_last=False": ef.measure(model, x, transforms=ts, batch_size=8,
                                              channels_last=False).points,
            "batch_size=3": ef.measure(model, x, transforms=ts, batch_size=3).points,  # 3+3+2
            "one thread": one_thread}
    for name, got in runs.items():
        assert list(got.columns) == list(want.columns), name
        pd.testing.assert_frame_equal(got[["point", "transform", "n_images", "undefined_fraction"]],
                                      want[["point", "transform", "n_images", "undefined_fraction"]])
        for column in ("channel", "layer", "mean_activation", "mean_magnitude"):
            np.testing.assert_allclose(got[column], want[column], rtol=0, atol=1e-6,
                                       err_msg=f"{name}: {column}")
        # offdiagonal_fraction is a count of arg-maxes: float32 rounding can move a near tie
        np.testing.assert_allclose(got.offdiagonal_fraction, want.offdiagonal_fraction, atol=0.02)


def _photo_folder(root):
    """Seven real photos in five class folders (sorted index = the model's class)."""
    import skimage.data
    from PIL import Image

    names = ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat", "immunohistochemistry")
    for i, photo in enumerate(names):
        folder = root / "abcde"[i % 5]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(getattr(skimage.data, photo)()).save(folder / f"{photo}.png")
    return root


def test_a_seeded_subset_of_a_folder_is_those_images_given_as_a_tensor(tmp_path):
    # n_images of a folder: a subset drawn with `seed`, in file order; the same seed, the same
    # images, read in this process or by two loader workers; given as a tensor (with their
    # labels), the same scores and accuracy to the bit
    root = _photo_folder(tmp_path)
    preprocess = default_preprocess(32)
    ts = [ef.Rotation(1), ef.Translation(4, 4)]
    files = ImageFiles(root)
    subsets = {}
    for seed in (0, 1):
        picked = seeded_subset(files, 4, seed).indices
        assert picked == sorted(picked)
        subsets[seed] = picked
        x = torch.stack([preprocess(files[i][0]) for i in picked])
        y = torch.tensor([files[i][1] for i in picked])
        tensor = ef.measure(net(), x, labels=y, transforms=ts, batch_size=3)
        for workers in (0, 2):
            folder = ef.measure(net(), str(root), transforms=ts, n_images=4, seed=seed,
                                batch_size=3, preprocess=preprocess, num_workers=workers)
            pd.testing.assert_frame_equal(folder.points, tensor.points, check_exact=True)
            assert folder.accuracy == tensor.accuracy is not None
    assert subsets[0] != subsets[1]


def test_the_callers_random_streams_are_neither_used_nor_reset(tmp_path):
    # torch's, NumPy's and Python's global streams are where they were after a measurement
    # (random weights by name, a seeded subset, loader workers), and the report does not depend
    # on them
    root = _photo_folder(tmp_path)
    kw = dict(weights=None, num_classes=5, transforms=[ef.Rotation(1)], n_images=3, seed=2,
              preprocess=default_preprocess(32), points=["layer1", "final"], num_workers=2)
    reports = []
    for caller_seed in (10, 11):
        torch.manual_seed(caller_seed)
        np.random.seed(caller_seed)
        random.seed(caller_seed)
        want = (torch.rand(2), np.random.rand(2), random.random())
        torch.manual_seed(caller_seed)
        np.random.seed(caller_seed)
        random.seed(caller_seed)
        reports.append(ef.measure("resnet18", str(root), **kw))
        got = (torch.rand(2), np.random.rand(2), random.random())
        assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert got[2] == want[2]
    pd.testing.assert_frame_equal(reports[0].points, reports[1].points, check_exact=True)


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_a_measured_report_reads_back_as_it_was_written(tmp_path, suffix):
    # every table, column order and dtype, the undefined entries (dead channels; a point with
    # nothing defined: constant logits) and the meta, as measure made them
    model = net()
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.zero_()
    rep = ef.measure(model, torch.rand(3, 3, 12, 12), transforms=TRANSFORMS + ef.diagonal_shifts(3, 4),
                     metric=["correlation", "cosine"], labels=torch.tensor([0, 1, -1]))
    final = rep.points[rep.points.point == "final"]
    assert final.channel.isna().all() and (final.undefined_fraction == 1).all()
    assert rep.points.channel.notna().any()
    rep.save(tmp_path / f"r{suffix}")
    back = Report.load(tmp_path / f"r{suffix}")
    for table in ("points", "parts", "shifts"):
        pd.testing.assert_frame_equal(getattr(back, table), getattr(rep, table), check_exact=True,
                                      obj=table)
    assert back.meta == rep.meta
    assert [type(v) for v in back.meta.values()] == [type(v) for v in rep.meta.values()]


@pytest.mark.slow
def test_the_command_run_twice_writes_the_same_files_but_its_timing(tmp_path, capsys):
    import json

    from equifast.cli import main

    root = _photo_folder(tmp_path / "photos")
    timing = {"seconds", "images_per_second"}
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, workers in zip(outs, ("0", "2")):
        assert main(["measure", "--model", "resnet18", "--weights", "none", "--data", str(root),
                     "--n-images", "3", "--transforms", "translation:1-2,rotation:90",
                     "--metric", "correlation,cosine", "--out", str(out), "--no-progress",
                     "--loader-workers", workers]) == 0
    names = sorted(f.name for f in outs[0].iterdir())
    assert names == sorted(f.name for f in outs[1].iterdir()) and "report.meta.json" in names
    for name in names:
        a, b = ((out / name).read_bytes() for out in outs)
        if name == "report.meta.json" or name == "report.json":
            da, db = json.loads(a), json.loads(b)
            meta_a, meta_b = (d.get("meta", d) for d in (da, db))
            assert set(meta_a) == set(meta_b) and timing <= set(meta_a)
            # the same keys in the same order, every value but the timing the same
            assert list(meta_a) == list(meta_b)
            for key in timing:
                meta_a.pop(key), meta_b.pop(key)
            assert da == db, name
        else:
            assert a == b, name  # tables, figures and the metric-bias files to the byte


def test_a_run_repeated_from_its_meta_gives_the_same_scores(tmp_path):
    # the meta said neither eps nor channels_last: a run measured with eps=0.3 (other entries
    # undefined) or channels-last off read as one of the defaults, and could not be repeated
    x = torch.rand(5, 3, 12, 12)
    first = ef.measure(net(), x, transforms=TRANSFORMS, metric=["correlation", "cosine"],
                       batch_size=2, eps=0.3, channels_last=False)
    first.save(tmp_path / "r.json")
    meta = Report.load(tmp_path / "r.json").meta
    assert meta["transforms"] == [t.name for t in TRANSFORMS]
    again = ef.measure(net(), x, transforms=TRANSFORMS, metric=meta["metrics"],
                       batch_size=meta["batch_size"], eps=meta["eps"],
                       channels_last=meta["channels_last"], vector_mode=meta["vector_mode"],
                       seed=meta["seed"])
    pd.testing.assert_frame_equal(again.points, first.points, check_exact=True)
    # and the default's tolerance is another measurement: the undefined entries differ
    default = ef.measure(net(), x, transforms=TRANSFORMS, metric=["correlation", "cosine"],
                         batch_size=2, channels_last=False)
    assert (default.points.undefined_fraction != first.points.undefined_fraction).any()
    assert default.meta["eps"] == ef.TOLERANCE and default.meta["channels_last"] is False


def test_a_negative_seed_is_refused_as_the_seed_torch_takes_it_for():
    # torch takes a seed s < 0 as 2**64 + s: seed=-1 was measured as the run of 2**64 - 1, with
    # another seed in its meta, and two such runs averaged as two seeds with a std of 0
    kw = dict(transforms=[ef.Rotation(1)], n_images=2, batch_size=2)
    for seed in (-1, -2 ** 63):
        same = torch.Generator().manual_seed(seed).initial_seed()  # what torch draws with
        assert same != seed
        with pytest.raises(ValueError, match=rf"Expected `seed` to be an integer in 0\.\.{2 ** 64 - 1}"
                                             rf" .* but got {seed} .* draws for {same}: pass that"):
            ef.measure(net(), None, seed=seed, **kw)
    a, b = (ef.measure(net(), None, seed=s, **kw) for s in (2 ** 64 - 1, 1))
    assert a.meta["seed"] == 2 ** 64 - 1 and not a.points.channel.equals(b.points.channel)

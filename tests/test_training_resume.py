"""Resuming and reusing training runs: what counts as the same run, and where it trained.

Real Fashion-MNIST runs of a few dozen images (skipped without the idx files).
"""
import os
import re
import shutil
import types
import warnings

import pandas as pd
import pytest
import torch

from equifast.devices import resolve_device
from equifast.training import get_recipe, train
from equifast.training.data import FASHION_MNIST_ROOT
from equifast.training.studies import run_study
from equifast.training.trainer import CHECKPOINT
from equifast.warning import EquifastWarning

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST idx files not found")

TINY = dict(epochs=2, train_subset=64, test_subset=32, batch_size=32)


class _Crash(RuntimeError):
    pass


def _crash_after_first(epoch, row):
    if epoch == 1:
        raise _Crash("simulated crash after epoch 1")


@needs_fmnist
def test_a_run_resumed_on_another_kind_of_device_warns(tmp_path, same_run):
    # device=None: a run begun on a GPU and resumed where there is none compared only the
    # recipe's device field (None both times) and went on silently on the CPU
    recipe = get_recipe("cnn7-fmnist6", **TINY)  # device None: the best present
    here = resolve_device(None)
    with pytest.raises(_Crash):
        train(recipe, str(tmp_path / "same"), callback=_crash_after_first)
    ckpt = torch.load(tmp_path / "same" / CHECKPOINT, weights_only=True)
    if here.type == "cuda":
        index = torch.cuda.current_device()
        record = {"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index)}
        now = f"{record['device']} ({record['name']})"
    else:
        record, now = {"device": "cpu", "name": "cpu"}, "cpu"
    assert ckpt["devices"] == [record]  # the device used, where the recipe says None
    for other in ("moved", "legacy", "ray"):
        shutil.copytree(tmp_path / "same", tmp_path / other)
    # what a run on the other kind of device writes (a GPU's, on a machine without one)
    elsewhere, before = (({"device": "cpu", "name": "cpu"}, "cpu") if here.type == "cuda" else
                         ({"device": "cuda:0", "name": "NVIDIA H200"}, "cuda:0 (NVIDIA H200)"))
    torch.save({**ckpt, "devices": [elsewhere]}, tmp_path / "moved" / CHECKPOINT)
    # a checkpoint from before the record: its recipe's device field, as before
    legacy = {k: v for k, v in ckpt.items() if k != "devices"}
    torch.save({**legacy, "recipe": {**ckpt["recipe"], "device": "cuda"}},
               tmp_path / "legacy" / CHECKPOINT)

    # what two Ray workers on this machine write
    torch.save({**ckpt, "rng_per_rank": ckpt["rng_per_rank"] * 2, "devices": [record] * 2,
                "world_size": 2}, tmp_path / "ray" / CHECKPOINT)

    from equifast.training.trainer import start_lines
    assert start_lines(recipe, str(tmp_path / "same"))[0] == (
        f"resuming {str(tmp_path / 'same')!r} after epoch 1 of 2, from its checkpoint")
    said = []  # resume=False refuses the unfinished run: no line says it resumes
    with pytest.raises(FileExistsError, match="unfinished run"):
        train(recipe, str(tmp_path / "same"), resume=False, say=said.append)
    assert not any(line.startswith("resuming") for line in said)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train(recipe, str(tmp_path / "same")).resumed_from == 1
    with pytest.warns(EquifastWarning, match=r"on 1 worker\(s\), its epochs so far on 2 \(resume "
                                             r"with 2 for an exact continuation\): .* not be bitwise"):
        assert train(recipe, str(tmp_path / "ray")).resumed_from == 1
    with pytest.warns(EquifastWarning, match=re.escape(
            f"on {now}, its epochs so far on {before}: the rest of the run computes "
            "differently, so it will not be bitwise the uninterrupted run.")):
        assert train(recipe, str(tmp_path / "moved")).resumed_from == 1
    with pytest.warns(EquifastWarning, match=r"another device \(None, its recipe's was 'cuda'\)"):
        assert train(recipe, str(tmp_path / "legacy")).resumed_from == 1
    # a record and a warning only: the runs trained alike (all on this machine)
    same_run(tmp_path / "same", tmp_path / "moved")
    same_run(tmp_path / "same", tmp_path / "legacy")


def test_measure_images_does_not_make_another_run():
    base = get_recipe("resnet44-crop")
    assert base.same_run(base.replace(measure_images=100))
    assert base.differences(base.replace(measure_images=100, lr=0.5)) == {"lr": (0.1, 0.5)}


@needs_fmnist
def test_a_study_measured_on_other_images_reuses_its_runs(tmp_path, monkeypatch):
    # a study rerun with another measure_images refused (or retrained) every finished run,
    # although training does not read it; the measuring must still take the value asked for
    import equifast
    measured = []

    def fake_measure(model, images, transforms=(), metric="correlation", batch_size=64,
                     n_images=2000, device=None, seed=0):
        measured.append((len(images), n_images))
        parts = pd.DataFrame({"part": ["early", "middle", "late", "pool", "final"],
                              "family": "rotation", "channel": 0.5, "layer": 0.6})
        return types.SimpleNamespace(parts=parts)

    monkeypatch.setattr(equifast, "measure", fake_measure, raising=False)
    overrides = {**TINY, "epochs": 1, "device": "cpu"}
    run_study("objective-fashion", str(tmp_path), seeds=[0],
              overrides={**overrides, "measure_images": 12})
    assert measured == [(12, 12)] * 3
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed0/checkpoint.pt")}
    assert len(stamps) == 3
    measured.clear()
    run_study("objective-fashion", str(tmp_path), seeds=[0],
              overrides={**overrides, "measure_images": 7})
    assert measured == [(7, 7)] * 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    measured.clear()
    run_study("objective-fashion", str(tmp_path), seeds=[0], overrides=overrides, n_images=5)
    assert measured == [(5, 5)] * 3


@needs_fmnist
def test_a_second_process_training_the_same_folder_is_refused(tmp_path):
    # it would delete (overwrite=True) or interleave the first one's checkpoints and metrics
    import json
    import socket
    import subprocess
    import sys

    recipe = get_recipe("cnn7-fmnist6", **TINY, device="cpu")
    run = tmp_path / "run"
    with pytest.raises(_Crash):
        train(recipe, str(run), callback=_crash_after_first)
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert CHECKPOINT in kept and not any(n.endswith(".lock") for n in kept)  # released
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = run / ".equifast-train.lock"
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        for overwrite in (False, True):
            with pytest.raises(BlockingIOError, match=f"no other training writing to .*pid {other.pid}"):
                train(recipe, str(run), overwrite=overwrite)
            assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p != lock} == kept
    finally:
        other.kill()
        other.wait()
    # its process gone (killed): the lock is stale, taken over, and the run resumes and ends
    result = train(recipe, str(run))
    assert result.resumed_from == 1 and not lock.exists()
    # a folder of a user's own files is refused as before, and gets no lock file
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files"):
        train(recipe, str(mine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

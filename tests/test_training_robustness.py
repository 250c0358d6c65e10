"""What a researcher running the training studies for hours runs into: diverging runs,
interrupted and resumed runs, run folders of another recipe. Tiny real runs on Fashion-MNIST
(skipped without it)."""
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from equifast.training import get_recipe, load_model, train
from equifast.training.data import FASHION_MNIST_ROOT

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST idx files not found")

TINY = dict(epochs=2, train_subset=128, test_subset=64, batch_size=64, device="cpu")


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@needs_fmnist
def test_a_diverging_run_stops_in_its_first_non_finite_epoch(tmp_path, capsys):
    # a learning rate far too high trained on to the end, then saved a NaN model.pt and a
    # result.json (test_loss NaN, test_acc at chance) that a study measured and averaged
    from equifast.training import TrainingDivergedError
    from equifast.training.cli import main

    recipe = get_recipe("cnn7-fmnist6", optimizer="sgd", lr=1e8, momentum=0.9, **TINY)
    with pytest.raises(TrainingDivergedError, match=r"^Training diverged in epoch 1 of 2 at lr "
                                                    r"1e\+08 \(.*loss nan.*the run has no "
                                                    r"checkpoint") as err:
        train(recipe, str(tmp_path / "run"))
    # its two training steps were finite: the test loss, looked at after the epoch, was not
    assert err.value.epoch == 1 and err.value.step is None and isinstance(err.value, ValueError)
    row = err.value.row
    assert row["epoch"] == 1 and not all(map(math.isfinite, (row["train_loss"], row["test_loss"])))
    assert [n for n in _names(tmp_path / "run") if n != "tb"] == ["recipe.json"]
    # the command says it in one line
    with pytest.raises(SystemExit) as exit_:
        main(["train", "cnn7-fmnist6", "--lr", "1e9", "--subset", "128", "--test-subset", "64",
              "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "cli")])
    err_text = capsys.readouterr().err
    assert exit_.value.code == 2 and "diverged in epoch 1 of 1" in err_text
    assert "Traceback" not in err_text and len(err_text.strip().splitlines()) == 1


@needs_fmnist
def test_a_run_diverging_later_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, same_run):
    from equifast.training import TrainingDivergedError
    from equifast.training import trainer

    recipe = get_recipe("cnn7-fmnist6", **TINY)
    train(recipe, str(tmp_path / "straight"))
    cross_entropy = trainer.F.cross_entropy

    def diverge_after_epoch_1(epoch, row):
        if epoch == 1:  # from now on the loss is NaN (an exploding step)
            monkeypatch.setattr(trainer.F, "cross_entropy",
                                lambda *a, **k: cross_entropy(*a, **k) * float("nan"))

    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"epoch 2 of 2 .*not finite from step 1 of "
                                                    r"2; stopped at step 1\).*checkpoint of epoch "
                                                    r"1 is kept"):
        train(recipe, str(run), callback=diverge_after_epoch_1)
    monkeypatch.undo()
    assert [n for n in _names(run) if n != "tb"] == ["checkpoint.pt", "metrics.csv", "recipe.json"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]
    # the kept checkpoint is epoch 1 of the run, whole: resumed, it ends as the straight run
    assert train(recipe, str(run)).resumed_from == 1
    same_run(tmp_path / "straight", run)
    assert json.loads((run / "result.json").read_text())["epochs"] == 2


class _TrainingSteps:
    """Whether each training forward pass of a CNN7 gave finite logits, in order (a global
    forward hook: it sees the model the trainer builds)."""

    def __enter__(self):
        from equifast.training.models import CNN7

        self.finite = []

        def hook(module, _input, output):
            if isinstance(module, CNN7) and module.training:
                self.finite.append(bool(torch.isfinite(output).all()))
        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def first_bad(self):
        return self.finite.index(False) + 1


@needs_fmnist
@pytest.mark.parametrize("every", [1, 5])
def test_a_run_diverging_mid_epoch_stops_within_the_check_interval(tmp_path, monkeypatch, every):
    # the loss was checked at the end of the epoch only: a run at a bad lr that went NaN in its
    # first steps trained (and tested) the whole epoch, hours on a large data set. On CPU the
    # loss is looked at every step; an accelerator's interval (a host sync) is tried here too
    from equifast.training import TrainingDivergedError
    from equifast.training import trainer

    monkeypatch.setattr(trainer, "_CHECK_EVERY_CPU", every)
    recipe = get_recipe("cnn7-fmnist6", optimizer="sgd", lr=1e8, momentum=0.9, epochs=2,
                        train_subset=1024, test_subset=64, batch_size=8, device="cpu")
    run = tmp_path / "run"
    with _TrainingSteps() as steps, pytest.raises(TrainingDivergedError) as err:
        train(recipe, str(run))
    bad = steps.first_bad()  # the step whose logits, so its loss, first were not finite
    stopped = -(-bad // every) * every  # the first check at or after it
    assert err.value.epoch == 1 and err.value.step == bad and len(steps.finite) == stopped
    assert stopped <= 10 < 128  # 128 steps an epoch
    assert f"from step {bad} of 128; stopped at step {stopped})" in str(err.value)
    row = err.value.row
    assert row["epoch"] == 1 and math.isnan(row["train_loss"]) and math.isnan(row["test_loss"])
    # the accuracy of the steps done, counted apart: a whole number of the 8 * stopped images
    assert 0 <= row["train_acc"] * 8 * stopped == round(row["train_acc"] * 8 * stopped)
    assert [n for n in _names(run) if n != "tb"] == ["recipe.json"]


@needs_fmnist
def test_a_run_diverging_mid_epoch_2_keeps_epoch_1_and_resumes_into_the_same_step(tmp_path):
    # a real divergence in the middle of a later epoch: the learning rate jumps by 1e30 after
    # epoch 1 (a gamma far off); the folder keeps epoch 1 whole, and resuming it repeats epoch
    # 2 from the same state, so it diverges at the same step again
    from equifast.training import TrainingDivergedError

    recipe = get_recipe("cnn7-fmnist6", optimizer="sgd", lr=0.01, momentum=0.9, milestones=[1],
                        gamma=1e30, epochs=3, train_subset=256, test_subset=64, batch_size=8,
                        device="cpu")
    run = tmp_path / "run"
    for attempt in range(2):
        with _TrainingSteps() as steps, pytest.raises(TrainingDivergedError,
                                                      match="checkpoint of epoch 1 is kept") as err:
            train(recipe, str(run))
        done = 32 if attempt == 0 else 0  # epoch 1's 32 steps, trained once
        assert all(steps.finite[:done + 1]) and steps.first_bad() == done + err.value.step
        assert err.value.epoch == 2 and len(steps.finite) == done + err.value.step < done + 32
        assert [n for n in _names(run) if n != "tb"] == ["checkpoint.pt", "metrics.csv", "recipe.json"]
        assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
        assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]
        if attempt == 0:
            first = err.value.step
    assert err.value.step == first


@needs_fmnist
def test_a_study_run_that_cannot_be_measured_is_named(tmp_path):
    # a run with NaN weights (diverged before training stopped such runs) failed the whole
    # study's measurement with "f(x) at point 'stem' ... NaN", not saying which of its runs
    from equifast.training import measure_study, run_study

    run_study("objective-fashion", str(tmp_path), seeds=[0], measure=False,
              overrides={**TINY, "epochs": 1})
    bad = tmp_path / "FMNIST6-Rot-Inv" / "seed0" / "model.pt"
    state = torch.load(bad, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"^Could not measure the run '.*FMNIST6-Rot-Inv/seed0' "
                                         r"\(FMNIST6-Rot-Inv, seed 0\): .*NaN") as err:
        measure_study("objective-fashion", str(tmp_path), seeds=[0], n_images=8)
    assert "finite" in str(err.value.__cause__)


def test_a_recipe_this_version_cannot_read_is_one_error_naming_the_file(tmp_path):
    # a recipe.json with a field of another equifast version (or edited) was a TypeError
    # traceback ("Recipe.__init__() got an unexpected keyword argument") from `equifast train`,
    # `equifast measure --model RUN` and the studies
    from equifast.training import Recipe
    from equifast.training.trainer import CHECKPOINT, RECIPE, prepare_out_dir

    recipe = get_recipe("cnn7-fmnist6", epochs=1)
    with pytest.raises(ValueError, match=r"unknown ones \['label_smoothing'\]"):
        Recipe.from_dict({**recipe.to_dict(), "label_smoothing": 0.1})
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert prepare_out_dir(recipe, str(tmp_path)) is None
    (tmp_path / CHECKPOINT).write_bytes(b"")  # an unfinished run (only its presence counts)
    for field, value, said in (("label_smoothing", 0.1, r"unknown ones \['label_smoothing'\]"),
                               ("epochs", "1", "Expected `epochs` to be an int")):
        (tmp_path / RECIPE).write_text(json.dumps({**recipe.to_dict(), field: value}))
        for call in (lambda: prepare_out_dir(recipe, str(tmp_path)),
                     lambda: load_model(str(tmp_path))):
            with pytest.raises(ValueError, match=rf"^Could not read the recipe of the run file "
                                                 rf"'.*{RECIPE}': .*{said}.*--overwrite"):
                call()
    assert prepare_out_dir(recipe, str(tmp_path), overwrite=True) is None  # as it says
    assert json.loads((tmp_path / RECIPE).read_text()) == recipe.to_dict()


class _Stop(RuntimeError):
    pass


def _stop_after_epoch_1(epoch, row):
    if epoch == 1:
        raise _Stop


@needs_fmnist
def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    # seed 0's checkpoint copied into seed 1's folder was resumed silently (seed 1's result was
    # seed 0's run); one of another model failed in load_state_dict with a size-mismatch
    # traceback
    from equifast.training.trainer import build_model_for

    recipe = get_recipe("cnn7-fmnist6", **TINY)
    for seed in (0, 1):
        with pytest.raises(_Stop):
            train(recipe.replace(seed=seed), str(tmp_path / f"seed{seed}"), callback=_stop_after_epoch_1)
    theirs = (tmp_path / "seed0" / "checkpoint.pt").read_bytes()
    (tmp_path / "seed1" / "checkpoint.pt").write_bytes(theirs)
    said = (r"checkpoint '.*seed1/checkpoint.pt' to be of the run in its folder, but it was "
            r"written by a run of another recipe .*\{'seed': \(0, 1\)\}")
    with pytest.raises(ValueError, match=said):
        train(recipe.replace(seed=1), str(tmp_path / "seed1"))
    with pytest.raises(ValueError, match=said):
        load_model(str(tmp_path / "seed1"))
    assert (tmp_path / "seed1" / "checkpoint.pt").read_bytes() == theirs  # left as it was
    assert train(recipe, str(tmp_path / "seed0")).resumed_from == 1  # its own run resumes
    # final weights of another model in a run folder
    other = build_model_for(get_recipe("cnn7-fmnist6-rot-eq")).state_dict()
    torch.save(other, tmp_path / "seed0" / "model.pt")
    with pytest.raises(ValueError, match=r"weights '.*seed0/model.pt' to be of the model that "
                                         r"recipe.json describes \(cnn7, fmnist6\), but they do "
                                         r"not fit it \(size mismatch for head.weight"):
        load_model(str(tmp_path / "seed0"))


def _tb_steps(folder, tag="test_acc"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@needs_fmnist
@pytest.mark.parametrize("stop_in", ["checkpoint", "metrics"])
def test_tensorboard_holds_each_epoch_once_after_a_stop_while_saving(tmp_path, monkeypatch,
                                                                       stop_in):
    # Ctrl-C after epoch 1's checkpoint was written but before its TensorBoard scalars: the
    # run resumed at epoch 2 and epoch 1 was missing from TensorBoard for good
    pytest.importorskip("tensorboard")
    from equifast.training import trainer

    recipe = get_recipe("cnn7-fmnist6", **TINY)
    straight = train(recipe, str(tmp_path / "straight"))
    target = {"checkpoint": "save_torch_atomic", "metrics": "_write_csv"}[stop_in]
    real = getattr(trainer, target)

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(trainer, target, real)
        if stop_in == "metrics":
            real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, target, interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, str(tmp_path / "run"))
    resumed = train(recipe, str(tmp_path / "run"))
    assert resumed.resumed_from == (1 if stop_in == "metrics" else 0)
    want = [(row["epoch"], pytest.approx(row["test_acc"])) for row in straight.metrics]
    assert _tb_steps(tmp_path / "straight" / "tb") == want
    assert _tb_steps(tmp_path / "run" / "tb") == want


@needs_fmnist
def test_a_report_of_an_unfinished_run_says_how_far_it_was_trained(tmp_path):
    # the warning of load_model was the only trace: a saved report of a run stopped at epoch 1
    # of 2 read like one of the trained model
    import equifast as ef
    from equifast.warning import EquifastWarning

    run = tmp_path / "run"
    with pytest.raises(_Stop):
        train(get_recipe("cnn7-fmnist6", **TINY), str(run), callback=_stop_after_epoch_1)
    ts = [ef.Rotation(1)]
    with pytest.warns(EquifastWarning, match=r"unfinished \(epoch 1 of 2\)") as ws:
        early = ef.measure(str(run), transforms=ts, n_images=8)
    # the caller's line (stacklevel=2 named a line of equifast's models.py)
    assert {w.filename for w in ws if issubclass(w.category, EquifastWarning)} == {__file__}
    assert (early.meta["trained_epochs"], early.meta["recipe_epochs"]) == (1, 2)
    train(get_recipe("cnn7-fmnist6", **TINY), str(run))  # resumed to the end
    done = ef.measure(str(run), transforms=ts, n_images=8)
    assert (done.meta["trained_epochs"], done.meta["recipe_epochs"]) == (2, 2)
    assert not done.points["channel"].equals(early.points["channel"])  # other weights measured


def test_a_run_killed_writing_its_first_recipe_json_can_be_started_again(tmp_path):
    # killed between writing recipe.json's temporary file and renaming it (the first file of a
    # run): the rerun refused the folder for "other files: ['.recipe.json.<pid>.<hex>.tmp']"
    import subprocess
    import sys

    from equifast.training.trainer import RECIPE, prepare_out_dir

    run = tmp_path / "run"
    code = ("import os, signal\n"
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from equifast.training import get_recipe\n"
            "from equifast.training.trainer import prepare_out_dir\n"
            f"prepare_out_dir(get_recipe('cnn7-fmnist6', epochs=1), {str(run)!r})\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    assert [p.name.startswith(f".{RECIPE}.") for p in run.iterdir()] == [True]  # its temp file
    recipe = get_recipe("cnn7-fmnist6", epochs=1)
    assert prepare_out_dir(recipe, str(run)) is None
    assert _names(run) == [RECIPE]
    assert json.loads((run / RECIPE).read_text()) == recipe.to_dict()


@pytest.mark.parametrize("text", ["[]", "", '{"name": "objective"}', '"objective-fashion"'])
def test_a_damaged_study_marker_is_said_so(tmp_path, text):
    # study.json edited or cut short: a list was an AttributeError traceback, an empty file
    # "Expecting value: line 1 column 1 (char 0)", naming no file
    from equifast.training import run_study
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(text)
    with pytest.raises(ValueError, match=r"^Expected '.*study.json' to name the study of `out` "
                                         r"\(\{\"study\": \"objective-fashion\"\}\), but it holds "):
        run_study("objective-fashion", str(out), seeds=[0])
    assert _names(out) == ["study.json"] and (out / "study.json").read_text() == text


@needs_fmnist
def test_a_damaged_metrics_file_of_a_finished_run_is_named(tmp_path, capsys):
    # a finished run's metrics.csv edited or cut short: "invalid literal for int() with base
    # 10: 'garbage'", naming no file
    from equifast.training.cli import main
    recipe = get_recipe("cnn7-fmnist6", **{**TINY, "epochs": 1})
    run = tmp_path / "run"
    train(recipe, str(run))
    good = (run / "metrics.csv").read_text()
    # cut short: its last row one field short, whatever the length of its numbers (cutting 5
    # characters left a whole row where the time's digits were longer: the test was flaky)
    cut = good.rstrip("\n").rsplit(",", 1)[0] + "\n"
    for bad in (good + "garbage,row\n", cut, good.replace("epoch,", "epoch;", 1)):
        (run / "metrics.csv").write_text(bad)
        with pytest.raises(ValueError, match=r"^Could not read the run file '.*metrics.csv' "
                                             r"\(.*\): it is damaged"):
            train(recipe, str(run))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "cnn7-fmnist6", "--subset", "128", "--test-subset", "64", "--epochs", "1",
              "--batch-size", "64", "--device", "cpu", "--quiet", "--out", str(run)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "metrics.csv" in err and len(err.strip().splitlines()) == 1
    (run / "metrics.csv").write_text(good)  # put back, the run reads as it did
    assert train(recipe, str(run)).metrics[0]["epoch"] == 1


class _Interrupted(BaseException):  # as Ctrl-C: not an Exception
    pass


@needs_fmnist
def test_an_overwrite_interrupted_while_deleting_leaves_the_old_run_or_an_unfinished_one(
        tmp_path, monkeypatch, same_run):
    # --overwrite deleted checkpoint.pt and metrics.csv before result.json: stopped between, the
    # folder read as finished (measured, reused) with its checkpoint and metrics gone; stopped
    # after recipe.json, the leftover tb/ made the rerun refuse the folder as a user's files
    import pathlib
    import shutil

    from equifast.training import measure_study, run_study

    study, overrides = tmp_path / "study", {**TINY, "epochs": 1}
    run_study("objective-fashion", str(study), seeds=[0], measure=False, overrides=overrides)
    run, saved = study / "FMNIST6" / "seed0", tmp_path / "saved"
    shutil.copytree(run, saved)
    files = ["result.json", "model.pt", "metrics.csv", "checkpoint.pt", "recipe.json"]
    assert set(files) | {"tb"} <= set(_names(run))
    deletable = files[:-1] + ["tb"]  # recipe.json is replaced by the new one, never deleted
    recipe = get_recipe("cnn7-fmnist6", seed=0, **overrides)
    unlink, rmtree = pathlib.Path.unlink, shutil.rmtree
    deleted = []

    def deleting(path, stop_after):
        path = pathlib.Path(path)
        if path.parent == run and path.name in deletable and path.exists():
            if len(deleted) == stop_after:
                raise _Interrupted
            deleted.append(path.name)

    for k in range(len(deletable)):
        shutil.rmtree(run)
        shutil.copytree(saved, run)
        deleted.clear()
        monkeypatch.setattr(pathlib.Path, "unlink",
                            lambda self, *a, k=k, **kw: (deleting(self, k), unlink(self, *a, **kw))[1])
        monkeypatch.setattr(shutil, "rmtree",
                            lambda p, *a, k=k, **kw: (deleting(p, k), rmtree(p, *a, **kw))[1])
        with pytest.raises(_Interrupted):
            train(recipe, str(run), overwrite=True)
        monkeypatch.undo()
        assert len(deleted) == k
        left = set(_names(run))
        if "result.json" in left:  # still reads as finished: then it is the old run, whole
            assert set(files) | {"tb"} <= left, k
            assert all((run / f).read_bytes() == (saved / f).read_bytes() for f in files), k
        else:  # unfinished: never measured, and a rerun completes it
            with pytest.raises(FileNotFoundError, match=r"FMNIST6/seed0'.*no result.json"):
                measure_study("objective-fashion", str(study), seeds=[0], n_images=8)
            if "metrics.csv" in left:  # never the rows of a run whose checkpoint is gone
                assert "checkpoint.pt" in left, k
            result = train(recipe, str(run))
            assert (result.epochs, len(result.metrics)) == (1, 1), k
        assert set(files) <= set(_names(run)), k
        same_run(saved, run)  # resumed from its last checkpoint or retrained: the same weights
        ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
        model = torch.load(run / "model.pt", weights_only=True)
        assert all(torch.equal(model[n], ckpt["model"][n]) for n in model), k


@needs_fmnist
def test_an_overwrite_interrupted_before_its_new_recipe_is_written_is_started_again(
        tmp_path, monkeypatch, same_run):
    # --overwrite deleted recipe.json, then wrote the new one: interrupted between, a run folder
    # holding the user's notes beside the run read as a folder of the user's files, and every
    # later `equifast train` of it (with --overwrite too) was refused
    import shutil

    import equifast.training.trainer as trainer

    recipe = get_recipe("cnn7-fmnist6", seed=0, **{**TINY, "epochs": 1})
    fresh, run = tmp_path / "fresh", tmp_path / "run"
    train(recipe, str(fresh))
    shutil.copytree(fresh, run)
    (run / "notes.txt").write_text("mine")

    def interrupted(path, data):
        raise _Interrupted

    monkeypatch.setattr(trainer, "write_text_atomic", interrupted)  # the new recipe.json
    with pytest.raises(_Interrupted):
        train(recipe.replace(seed=1), str(run), overwrite=True)
    monkeypatch.undo()
    assert not {"result.json", "checkpoint.pt", "model.pt"} & set(_names(run))
    assert train(recipe, str(run)).epochs == 1  # started again, not refused
    same_run(fresh, run)
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "recipe.json").read_text()) == recipe.to_dict()


@needs_fmnist
def test_measure_study_refuses_a_run_whose_recipe_is_not_the_studys(tmp_path):
    # a run folder copied from another setting (or study), or a recipe.json edited by hand,
    # was measured as this study's run
    import shutil

    from equifast.training import measure_study, run_study

    overrides = {**TINY, "epochs": 1}
    run_study("objective-fashion", str(tmp_path), seeds=[0], measure=False, overrides=overrides)
    plain, rot_eq = tmp_path / "FMNIST6" / "seed0", tmp_path / "FMNIST6-Rot-Eq" / "seed0"
    shutil.move(plain, tmp_path / "kept")
    shutil.copytree(tmp_path / "FMNIST6-Rot-Inv" / "seed0", plain)  # another setting's run
    with pytest.raises(ValueError, match=r"^Expected the run '.*FMNIST6/seed0' to be the run of "
                                         r"FMNIST6 .* of study 'objective-fashion', but .*"
                                         r"\{'dataset': \('fmnist6-rot-inv', 'fmnist6'\)\}"):
        measure_study("objective-fashion", str(tmp_path), seeds=[0], n_images=8)
    shutil.rmtree(plain)
    shutil.move(tmp_path / "kept", plain)
    stored = json.loads((rot_eq / "recipe.json").read_text())
    (rot_eq / "recipe.json").write_text(json.dumps({**stored, "lr": 0.02}))  # edited by hand
    with pytest.raises(ValueError, match=r"share `lr` .*0\.02: \['.*FMNIST6-Rot-Eq/seed0'\]"):
        measure_study("objective-fashion", str(tmp_path), seeds=[0], n_images=8)
    with pytest.raises(ValueError, match=r"run '.*FMNIST6-Rot-Eq/seed0' .*\{'lr': \(0\.02, 0\.01\)\}"):
        measure_study("objective-fashion", str(tmp_path), seeds=[0], n_images=8,
                      overrides=overrides)
    # the same edit on every run is a study trained with --lr 0.02: refused only against the
    # overrides it was not trained with
    for run in tmp_path.glob("*/seed0"):
        (run / "recipe.json").write_text(json.dumps({**json.loads((run / "recipe.json").read_text()),
                                                      "lr": 0.02}))
    from equifast.training.studies import _check_run_recipes, get_study
    study = get_study("objective-fashion")
    assert [r.lr for r in _check_run_recipes(study, str(tmp_path), study.runs([0]))] == [0.02] * 3


def test_measure_study_reads_runs_of_recipes_with_other_defaults(tmp_path):
    # the study-wide fields were inferred as the value every run shares: a study of a cnn7
    # (lr 0.01) beside a resnet44 (lr 0.1), trained correctly by run_study, was refused
    from equifast.training.recipes import RECIPES
    from equifast.training.studies import Study, _check_run_recipes, _run_dir

    study = Study("mixed", (("cnn", "cnn7-fmnist6"), ("resnet", "resnet44-none")), "rotation")
    runs = study.runs([0, 1])

    def trained(overrides, edit=None):  # run folders as run_study leaves them
        for label, recipe_name, seed in runs:
            run = Path(_run_dir(str(tmp_path), label, seed))
            run.mkdir(parents=True, exist_ok=True)
            recipe = get_recipe(recipe_name, **{**overrides, "seed": seed})
            if edit and label == edit[0]:
                recipe = recipe.replace(**edit[1])
            (run / "recipe.json").write_text(json.dumps(recipe.to_dict()))
            (run / "result.json").write_text("{}")
        return [r.lr for r in _check_run_recipes(study, str(tmp_path), runs)]

    own = [RECIPES[name].lr for _, name, _ in runs]
    assert sorted(set(own)) == [0.01, 0.1]  # the recipes' own, not one for all
    assert trained({"epochs": 1}) == own
    assert trained({"epochs": 1, "lr": 0.05}) == [0.05] * 4
    assert trained({"lr": 0.1}) == [0.1] * 4  # the resnet44's own value, overridden for all
    with pytest.raises(ValueError, match=r"share `lr` .* each to keep its recipe's own"):
        trained({}, edit=("resnet", {"lr": 0.05}))  # not a study's: only some overridden


@needs_fmnist
def test_a_study_interrupted_while_writing_its_tables_keeps_the_earlier_set_whole(
        tmp_path, monkeypatch):
    # Ctrl-C while the figure was drawn left the new runs.csv and summary.csv beside the
    # earlier figure.png: tables and figure of two different measures
    import matplotlib.figure

    from equifast.training import run_study
    from equifast.training.studies import summarize

    overrides = {**TINY, "epochs": 1}
    outputs = ["runs.csv", "summary.csv", "figure.png"]
    run_study("objective-fashion", str(tmp_path), seeds=[0], overrides=overrides, n_images=8)
    first = {n: (tmp_path / n).read_bytes() for n in outputs}
    savefig = matplotlib.figure.Figure.savefig

    def interrupted(*args, **kwargs):
        raise _Interrupted

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    with pytest.raises(_Interrupted):  # measured on other images: other tables
        run_study("objective-fashion", str(tmp_path), seeds=[0], overrides=overrides, n_images=12)
    assert {n: (tmp_path / n).read_bytes() for n in outputs} == first
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    summary = run_study("objective-fashion", str(tmp_path), seeds=[0], overrides=overrides,
                        n_images=12)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert (tmp_path / "runs.csv").read_bytes() != first["runs.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.csv"), summarize(runs))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.csv"),
                                  summary.reset_index(drop=True), check_dtype=False)


@needs_fmnist
def test_a_study_killed_while_moving_its_tables_in_is_completed_by_the_next_call(
        tmp_path, monkeypatch):
    # killed between the renames of its new runs.csv and summary.csv, a study left the new
    # runs.csv beside the earlier summary.csv and figure.png, and a next `equifast study
    # --no-measure` (or one of training only) left that mix as it was
    import equifast._io as io
    from equifast.training import run_study

    kw = dict(seeds=[0], measure=False, overrides={**TINY, "epochs": 1})
    run_study("objective-fashion", str(tmp_path), **kw)
    tables = ["runs.csv", "summary.csv", "figure.png"]
    for name in tables:
        (tmp_path / name).write_text(f"earlier {name}")
    stage = io.stage_folder(tmp_path)
    for name in tables:
        (stage / name).write_text(f"new {name}")
    replace, moved = os.replace, []

    def killed_after_one_table(src, dst):
        if Path(dst).name in tables:
            if moved:
                raise _Interrupted  # as SIGKILL: nothing after it runs
            moved.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(io.os, "replace", killed_after_one_table)
    with pytest.raises(_Interrupted):
        io.commit_staged(stage, tmp_path, tables, remove=[])
    monkeypatch.undo()
    assert [(tmp_path / n).read_text().split()[0] for n in tables] == ["new", "earlier", "earlier"]
    run_study("objective-fashion", str(tmp_path), **kw)  # trains nothing, measures nothing
    assert {n: (tmp_path / n).read_text() for n in tables} == {n: f"new {n}" for n in tables}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@needs_fmnist
def test_a_study_overwrite_interrupted_between_runs_is_carried_on_by_the_next_call(tmp_path):
    # interrupted after retraining the first run, the study rerun without --overwrite reused the
    # other runs' old models (measured beside the new one); rerun with it, it trained the first
    # one a second time
    from equifast.training import measure_study, run_study

    kw = dict(seeds=[0], measure=False, overrides={**TINY, "epochs": 1})
    run_study("objective-fashion", str(tmp_path), **kw)
    results = sorted(tmp_path.glob("*/seed0/result.json"))
    assert len(results) == 3

    def stamps():
        return {p.parent.parent.name: p.stat().st_mtime_ns for p in results}

    def stop_at(n):
        def echo(line):
            if line.startswith(f"[objective-fashion {n}/3]"):
                raise _Interrupted
        return echo

    def trained(before, after):
        return {k for k in before if after[k] != before[k]}

    old = stamps()
    with pytest.raises(_Interrupted):
        run_study("objective-fashion", str(tmp_path), overwrite=True, echo=stop_at(2), **kw)
    first = stamps()
    assert trained(old, first) == {"FMNIST6"}
    # without --overwrite, other options: the run retrained already is a finished run of other
    # options, refused as any other (it was deleted and trained again with them)
    with pytest.raises(ValueError, match="stored recipe differs"):
        run_study("objective-fashion", str(tmp_path), **{**kw, "overrides": {**kw["overrides"], "lr": 0.003}})
    assert stamps() == first
    with pytest.raises(ValueError, match=r"interrupted --overwrite has yet to retrain "
                                         r"'.*FMNIST6-Rot-Inv/seed0'"):
        measure_study("objective-fashion", str(tmp_path), seeds=[0], n_images=8)
    with pytest.raises(_Interrupted):  # --overwrite again: the first is not trained twice
        run_study("objective-fashion", str(tmp_path), overwrite=True, echo=stop_at(3), **kw)
    second = stamps()
    assert trained(first, second) == {"FMNIST6-Rot-Inv"}
    run_study("objective-fashion", str(tmp_path), **kw)  # without: the last old run retrained
    third = stamps()
    assert trained(second, third) == {"FMNIST6-Rot-Eq"}
    assert not (tmp_path / "overwrite.json").exists()
    run_study("objective-fashion", str(tmp_path), **kw)  # all done: nothing trains
    assert stamps() == third
    run_study("objective-fashion", str(tmp_path), overwrite=True, **kw)  # uninterrupted: all
    assert trained(third, stamps()) == set(third)
    assert not (tmp_path / "overwrite.json").exists()


@pytest.mark.parametrize("text", ["", "[]", '{"runs": "FMNIST6/seed0", "done": {}}'])
def test_a_damaged_overwrite_plan_is_said_so(tmp_path, text):
    from equifast.training import run_study
    (tmp_path / "study.json").write_text('{"study": "objective-fashion"}')
    (tmp_path / "overwrite.json").write_text(text)
    with pytest.raises(ValueError, match=r"^Expected '.*overwrite.json' to hold the runs an "
                                         r"interrupted --overwrite has yet to retrain .*Delete it"):
        run_study("objective-fashion", str(tmp_path), seeds=[0], measure=False)
    assert _names(tmp_path) == ["overwrite.json", "study.json"]


@needs_fmnist
def test_a_study_overwrite_deletes_the_tables_of_the_runs_it_retrains(tmp_path):
    # interrupted (or with --no-measure), an --overwrite left runs.csv, summary.csv and
    # figure.png of the old models beside the retrained ones, read as the study's results
    from equifast.training import run_study
    from equifast.training.studies import summarize

    kw = dict(seeds=[0], overrides={**TINY, "epochs": 1}, n_images=8)
    tables = ["runs.csv", "summary.csv", "figure.png"]
    run_study("objective-fashion", str(tmp_path), **kw)
    assert all((tmp_path / n).is_file() for n in tables)

    def stop_at_2(line):
        if line.startswith("[objective-fashion 2/3]"):
            raise _Interrupted

    with pytest.raises(_Interrupted):
        run_study("objective-fashion", str(tmp_path), overwrite=True, echo=stop_at_2, **kw)
    assert not any((tmp_path / n).exists() for n in tables)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    summary = run_study("objective-fashion", str(tmp_path), **kw)  # carried on, then measured
    pd.testing.assert_frame_equal(summarize(pd.read_csv(tmp_path / "runs.csv")),
                                  summary.reset_index(drop=True), check_dtype=False)
    run_study("objective-fashion", str(tmp_path), **kw)  # nothing retrained: they stay
    assert all((tmp_path / n).is_file() for n in tables)


@needs_fmnist
def test_measure_study_refuses_a_run_another_process_begins_to_retrain_meanwhile(tmp_path, monkeypatch):
    # `equifast train --overwrite` of a study's run started while the study measured its other
    # runs: its result.json gone, the study wrote its own recipe.json over the one the run
    # trains with, then failed on the missing weights (after its first epoch: measured its
    # checkpoint, and failed with "'NoneType' object has no attribute 'test_acc'")
    import shutil
    import socket
    import subprocess
    import sys

    import equifast
    from equifast.training import measure_study, run_study

    study = tmp_path / "study"
    run_study("objective-fashion", str(study), seeds=[0], measure=False,
              overrides={**TINY, "epochs": 1})
    rot_eq = study / "FMNIST6-Rot-Eq" / "seed0"
    shutil.copytree(rot_eq, tmp_path / "kept")
    theirs = {**json.loads((rot_eq / "recipe.json").read_text()), "epochs": 3}
    real = equifast.measure

    def retrained_meanwhile(holder):
        """Measure, the first time after another process (pid ``holder``, or one gone: None)
        began to retrain the Rot-Eq run, as train(overwrite=True) does."""
        shutil.rmtree(rot_eq)
        shutil.copytree(tmp_path / "kept", rot_eq)
        measured = []

        def measure(*args, **kwargs):
            if not measured:
                if holder is not None:
                    (rot_eq / ".equifast-train.lock").write_text(
                        json.dumps({"host": socket.gethostname(), "pid": holder}))
                for name in ("result.json", "model.pt", "metrics.csv", "checkpoint.pt"):
                    (rot_eq / name).unlink(missing_ok=True)
                (rot_eq / "recipe.json").write_text(json.dumps(theirs))
            measured.append(1)
            return real(*args, **kwargs)
        monkeypatch.setattr(equifast, "measure", measure)

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        retrained_meanwhile(other.pid)
        with pytest.raises(BlockingIOError, match=rf"training writing to '.*FMNIST6-Rot-Eq/seed0', "
                                                  rf"but pid {other.pid} "):
            measure_study("objective-fashion", str(study), seeds=[0], n_images=8)
    finally:
        other.kill()
        other.wait()
    assert json.loads((rot_eq / "recipe.json").read_text()) == theirs  # the other run's, kept
    # its process killed before its first epoch: refused as unfinished, the recipe kept again
    retrained_meanwhile(None)
    with pytest.raises(FileNotFoundError, match=r"finished run in '.*FMNIST6-Rot-Eq/seed0', but it "
                                                r"has no result\.json"):
        measure_study("objective-fashion", str(study), seeds=[0], n_images=8)
    assert json.loads((rot_eq / "recipe.json").read_text()) == theirs
    # runs this process cannot write to (a read-only copy) take no lock, and are measured
    shutil.rmtree(rot_eq)
    shutil.copytree(tmp_path / "kept", rot_eq)
    monkeypatch.setattr(equifast, "measure", real)
    from equifast._io import FolderLock

    def read_only(self):
        raise PermissionError(13, "Permission denied", str(self.path))
    monkeypatch.setattr(FolderLock, "acquire", read_only)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)
    assert len(measure_study("objective-fashion", str(study), seeds=[0], n_images=8)) > 0

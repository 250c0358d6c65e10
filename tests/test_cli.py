"""The command line, end to end on the embedded default (real weights, real photos)."""

import os
import signal
from pathlib import Path

import pytest
import torch

from equifast.cli import build_parser, main
from equifast.report import Report


def test_measure_embedded_default_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["measure", "--n-images", "4", "--batch-size", "8", "--transforms", "translation:8-9,rotation:90",
               "--metric", "correlation,cosine", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "early" in text and "final" in text and "Metric bias" in text
    # a parts table for each metric asked for (cosine's was in the files only)
    assert "Parts (correlation; images: 4):" in text and "Parts (cosine; images: 4):" in text
    rep = Report.load(out / "report.json")
    assert rep.meta["model"] == "efficientnet_lite0" and rep.meta["n_images"] == 4
    assert f"measured 4 images x 3 transforms in {rep.meta['seconds']:.1f} s" in text
    assert list(rep.parts.part.astype(str).unique()) == ["early", "middle", "late", "pool", "final"]
    assert set(rep.parts.family) == {"translation", "rotation"}
    assert (rep.points.layer >= rep.points.channel - 1e-6).all()
    for name in ("report.parts.csv", "report.points.parquet", "figure.png", "shifts.png",
                 "metric_bias.csv", "metric_bias_correlation.csv"):
        assert (out / name).stat().st_size > 0
    # real ImageNet features: translation equivariance of the early part is clearly positive
    early = rep.parts[(rep.parts.part == "early") & (rep.parts.family == "translation") &
                      (rep.parts.metric == "correlation")]
    assert float(early.channel.iloc[0]) > 0.3
    # measured again into the same folder without shifts or a second metric: no figure or
    # analysis of the earlier run is left to read as this one's
    assert main(["measure", "--n-images", "2", "--transforms", "rotation:90", "--out", str(out),
                 "--no-progress"]) == 0
    assert not (out / "shifts.png").exists() and not (out / "metric_bias.csv").exists()
    assert not (out / "metric_bias_correlation.csv").exists()
    assert (out / "figure.png").exists()


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for cmd in ("measure", "models", "train", "study", "sweep"):
        assert cmd in text


def test_version_names_the_package_torch_and_backend(capsys):
    import equifast

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == (f"equifast {equifast.__version__} (torch {torch.__version__}, "
                                       f"backend {equifast.backend()})\n")


def test_paths_after_an_equals_sign_have_their_tilde_expanded(tmp_path, monkeypatch):
    # the shell leaves `--out=~/x` as it is: taken literally it made a folder named "~" here
    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args(["measure", "--model=~/run", "--weights=~/w.pt",
                                      "--data=~/images", "--out=~/out"])
    assert (args.model, args.weights, args.data, args.out) == tuple(
        str(tmp_path / name) for name in ("run", "w.pt", "images", "out"))
    assert build_parser().parse_args(["measure"]).out == "runs/measure"
    for command in (["train", "cnn7-fmnist6"], ["study", "objective"], ["sweep", "run", "s.yaml"],
                    ["sweep", "status"], ["sweep", "report"]):
        assert build_parser().parse_args(command + ["--out=~/r"]).out == str(tmp_path / "r")
    args = build_parser().parse_args(["sweep", "report", "--figures=~/f"])
    assert args.figures == str(tmp_path / "f")
    assert build_parser().parse_args(["sweep", "run", "~/s.yaml"]).spec == str(tmp_path / "s.yaml")


@pytest.mark.parametrize("argv,match", [
    (["measure", "--model", "resnet5O"], "Did you mean"),
    (["measure", "--data", "/no/such/dir"], "does not exist"),
    (["measure", "--data", __file__], "is a file"),
    (["measure", "--model", "runs/no-such-run/seed0"], "is neither (no such folder)"),
    (["measure", "--out", __file__ + "/sub"], "Cannot create the --out folder"),
    (["measure", "--transforms", "shear:2"], "transform spec"),
    (["measure", "--metric", ""], "Expected --metric"),
    (["measure", "--metric", "correlation,correlation"], "Expected --metric"),
    # any case, as --transforms: CORRELATION was "one of ['correlation', 'cosine']"
    (["measure", "--metric", "CORRELATION,correlation"], "to be one or more distinct metrics"),
    (["measure", "--n-images", "0"], "Expected --n-images to be an integer >= 1, but got 0."),
    (["measure", "--loader-workers", "-1"], "Expected --loader-workers to be an integer >= 0, but got -1."),
    (["measure", "--out", __file__], "is a file"),  # checked before measuring, file kept
    (["measure", "--transforms", "rotation,rotation:90"], "rotation(90) is given more than once"),
    (["measure", "--transforms", "translation:1-2:zero:circular"], "two mode options"),
    # a whole turn: the advice is the spec `identity`, not Python's ef.Identity()
    (["measure", "--transforms", "rotation:0"], "identity: use the spec 'identity')"),
    (["measure", "--transforms", "rotation:360"], "identity: use the spec 'identity')"),
    # an unset variable: "" was the working folder, measured as "embedded photos"
    (["measure", "--data", ""], "Expected --data to name a folder, but it is empty"),
    (["measure", "--out", ""], "Expected --out to name a folder, but it is empty"),
    (["measure", "--num-classes", "-1"], "Expected --num-classes to be an integer >= 0, but got -1."),
])
def test_user_errors_exit_2_with_a_message(argv, match, capsys):
    assert main(argv + ["--no-progress"]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["", " "])
def test_an_empty_transforms_flag_is_refused_not_read_as_the_default(spec, tmp_path, capsys):
    # an unset variable: --transforms "$T" measured the default's 32 shifts and 3 rotations
    out = tmp_path / "m"
    assert main(["measure", "--model", "resnet18", "--weights", "none", "--n-images", "1",
                 "--device", "cpu", "--transforms", spec, "--out", str(out), "--no-progress"]) == 2
    assert "Expected at least one transform spec, but got" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv, flag", [
    (["train", "cnn7-fmnist6", "--out", ""], "--out"),
    (["train", "cnn7-fmnist6", "--data-root", " "], "--data-root"),
    (["study", "objective-fashion", "--out", ""], "--out"),
    (["sweep", "status", "--out", ""], "--out"),
    (["sweep", "report", "--out", ""], "--out"),
])
def test_an_empty_path_flag_is_refused_not_read_as_the_default_folder(argv, flag, tmp_path,
                                                                       monkeypatch, capsys):
    # an unset variable: `--out "$RUN" --overwrite` retrained runs/RECIPE/seed0, the default
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert f"Expected {flag} to name a folder, but it is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_models_lists_names(capsys):
    assert main(["models", "efficientnet_lite"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out.split()
    assert main(["models", "zzzz"]) == 1  # an empty list would read as a success
    assert "no torchvision or timm model name contains 'zzzz'" in capsys.readouterr().err
    # any case: `ViT` and `Mixer` listed nothing
    from equifast.models import available_models

    assert main(["models", "Mixer"]) == 0
    assert capsys.readouterr().out.split() == [n for n in available_models() if "mixer" in n]
    assert main(["models", "zzzz"]) == 1
    assert "no torchvision or timm model name contains 'zzzz'" in capsys.readouterr().err
    # a wildcard as timm takes it, matching the whole name: 'resnet5*' found none
    assert main(["models", "ResNet5?"]) == 0
    assert capsys.readouterr().out.split() == ["resnet50"]
    assert main(["models", "resnet5*"]) == 0
    listed = capsys.readouterr().out.split()
    assert "resnet50" in listed and "resnet50d" in listed and "wide_resnet50_2" not in listed
    assert main(["models", "*zzzz*"]) == 1
    assert "no torchvision or timm model name matches '*zzzz*'" in capsys.readouterr().err


def test_a_command_whose_module_cannot_import_says_why(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def without_ray(name, *args, **kwargs):
        if name == "equifast.distributed.cli":
            raise ModuleNotFoundError("No module named 'ray'", name="ray")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ray)
    assert main(["sweep", "run", "spec.yaml"]) == 2
    assert "`equifast sweep` is unavailable here (ModuleNotFoundError: No module named 'ray')" in \
        capsys.readouterr().err


def test_method_check_takes_no_options(capsys):
    from equifast.method_check import main as method_check

    with pytest.raises(SystemExit) as exit_:
        method_check(["--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_warnings_of_equifast_are_one_line_others_as_python_shows_them(tmp_path, capsys):
    import warnings

    from PIL import Image

    import equifast as ef

    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(tmp_path / "img" / f"{i}.png")
    assert main(["measure", "--data", str(tmp_path / "img"), "--n-images", "5", "--transforms", "rotation:90",
                 "--out", str(tmp_path / "m"), "--no-progress", "--loader-workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "equifast: warning: Measured 2 images, fewer than the --n-images 5 asked for: that is all " \
           "the input holds.\n" in err and "UserWarning" not in err
    # another library's warning keeps Python's format (file, line, category), even when it is
    # reported at a line of equifast (pandas' FutureWarnings are)
    from equifast._console import show_warning

    show_warning(FutureWarning("from pandas"), FutureWarning, ef.measurement.__file__, 7)
    assert capsys.readouterr().err.startswith(f"{ef.measurement.__file__}:7: FutureWarning: from pandas")
    assert warnings.showwarning is not show_warning  # main put Python's display back


def _two_images(folder):
    from PIL import Image
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (48, 48), (70 * i, 90, 30)).save(folder / f"{i}.png")
    return folder


def _measure_args(data, out, transforms):
    return ["measure", "--model", "resnet18", "--weights", "none", "--data", str(data),
            "--transforms", transforms, "--out", str(out), "--no-progress", "--loader-workers", "0"]


def test_measure_never_replaces_a_users_files(tmp_path, capsys):
    # report.json and figure.png were overwritten, shifts.png and metric_bias.csv deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("report.json", "shifts.png", "metric_bias.csv", "notes.txt"):
        (mine / name).write_text(f"my {name}")
    data = _two_images(tmp_path / "img")
    assert main(_measure_args(data, mine, "rotation:90")) == 2
    assert "holds other files" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in mine.iterdir()} == {
        n: f"my {n}" for n in ("report.json", "shifts.png", "metric_bias.csv", "notes.txt")}
    # a file of the user's named as measure's marker made the folder measure's: all replaced
    (mine / "report.meta.json").write_text('{"author": "me"}')
    assert main(_measure_args(data, mine, "rotation:90")) == 2
    assert ("holds other files: ['metric_bias.csv', 'notes.txt', 'report.json', "
            "'report.meta.json', 'shifts.png'] (its report.meta.json does not mark an output folder of `equifast measure`)"
            in capsys.readouterr().err)
    assert (mine / "report.json").read_text() == "my report.json"


def test_a_folder_of_a_file_managers_files_only_is_an_empty_one(tmp_path, capsys):
    # a new folder opened in macOS Finder (.DS_Store) was refused as "holding other files"
    out = tmp_path / "out"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"Bud1")
    (out / "Thumbs.db").write_bytes(b"thumbs")
    assert main(_measure_args(_two_images(tmp_path / "img"), out, "rotation:90")) == 0
    assert (out / "report.json").is_file() and (out / ".DS_Store").read_bytes() == b"Bud1"
    assert (out / "Thumbs.db").read_bytes() == b"thumbs"
    (tmp_path / "mine").mkdir()  # any other file is the user's, as before
    (tmp_path / "mine" / ".DS_Store").write_bytes(b"Bud1")
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(_measure_args(tmp_path / "img", tmp_path / "mine", "rotation:90")) == 2
    assert "holds other files: ['notes.txt']" in capsys.readouterr().err


def test_measure_never_replaces_a_report_saved_by_hand_and_the_users_figures(tmp_path, capsys):
    # Report.save writes the marker (report.meta.json of backend and transforms): the folder
    # read as measure's, its report and figure.png were replaced and shifts.png deleted
    data, mine = _two_images(tmp_path / "img"), tmp_path / "mine"
    assert main(_measure_args(data, tmp_path / "first", "rotation:90")) == 0
    from equifast import Report

    Report.load(tmp_path / "first").save(mine / "report.csv")
    for name in ("figure.png", "shifts.png"):
        (mine / name).write_text(f"my {name}")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    assert main(_measure_args(data, mine, "rotation:90")) == 2
    assert ("(its report.meta.json does not mark an output folder of `equifast measure`)"
            in capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    # measure's own folder is still taken again: its files are replaced as one set
    assert main(_measure_args(data, tmp_path / "first", "rotation:180")) == 0
    assert "rotation(180)" in Report.load(tmp_path / "first").points["transform"].tolist()


def test_an_interrupted_write_leaves_the_earlier_set_whole(tmp_path, monkeypatch, capsys):
    # the files were written one by one: Ctrl-C left the new report.json beside the old parts
    data, out = _two_images(tmp_path / "img"), tmp_path / "out"
    first = _measure_args(data, out, "translation:1-2") + ["--metric", "correlation,cosine"]
    assert main(first) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"shifts.png", "metric_bias.csv", "report.meta.json"} <= set(before)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Report, "plot", interrupted)  # after the tables, before the figure
    assert main(_measure_args(data, out, "rotation:90")) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder left
    monkeypatch.undo()
    assert main(_measure_args(data, out, "rotation:90")) == 0  # the whole new set, none of the old
    assert not (out / "shifts.png").exists() and not (out / "metric_bias.csv").exists()
    meta = Report.load(out / "report.csv").meta
    assert meta["transforms"] == ["rotation(90)"] and meta["images"] == str(data)
    assert sorted(p.name for p in out.iterdir()) == sorted(set(before) - {
        "shifts.png", "metric_bias.csv", "metric_bias_correlation.csv"})
    capsys.readouterr()


def _interrupt_the_move_in(monkeypatch, out, at, action):
    """Run ``action`` instead of the ``at``-th move of a file of the new set into ``out``."""
    real, moved = os.replace, []

    def replace(src, dst):
        if Path(dst).parent == out and Path(src).parent != out:
            moved.append(dst)
            if len(moved) == at:
                action()
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test: a job a shell starts in the background (`make
    test &`, nohup) inherits SIGINT ignored, and Python then installs none."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_the_set_is_moved_in_waits_for_it(tmp_path, monkeypatch, capsys, python_sigint):
    # Ctrl-C between two of the moves left the new report.json beside the old report.meta.json,
    # and the old shifts.png and metric bias tables deleted with the rest of the new set
    data, out = _two_images(tmp_path / "img"), tmp_path / "out"
    assert main(_measure_args(data, out, "translation:1-2") + ["--metric", "correlation,cosine"]) == 0
    _interrupt_the_move_in(monkeypatch, out, 3, lambda: signal.raise_signal(signal.SIGINT))
    assert main(_measure_args(data, out, "rotation:90")) == 130
    assert capsys.readouterr().err.strip().endswith("equifast: interrupted")
    monkeypatch.undo()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert Report.load(out / "report.csv").meta["transforms"] == ["rotation(90)"]
    assert Report.load(out / "report.json").meta["transforms"] == ["rotation(90)"]
    assert not (out / "shifts.png").exists() and not (out / "metric_bias.csv").exists()


class _Killed(BaseException):
    """The process dies here (kill -9): no handler of equifast's runs."""


def test_a_set_cut_off_by_a_kill_is_completed_by_the_next_reader_or_run(tmp_path, monkeypatch):
    data, out = _two_images(tmp_path / "img"), tmp_path / "out"
    assert main(_measure_args(data, out, "translation:1-2")) == 0

    def killed():
        raise _Killed

    _interrupt_the_move_in(monkeypatch, out, 3, killed)
    with pytest.raises(_Killed):
        main(_measure_args(data, out, "rotation:90"))
    monkeypatch.undo()
    assert Report.load(out / "report.csv").meta["transforms"] == ["rotation(90)"]  # not a mix
    assert Report.load(out / "report.json").meta["transforms"] == ["rotation(90)"]
    assert not (out / "shifts.png").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # a first set cut off: the next run finds no foreign files, only what it left
    fresh = tmp_path / "fresh"
    _interrupt_the_move_in(monkeypatch, fresh, 2, killed)
    with pytest.raises(_Killed):
        main(_measure_args(data, fresh, "rotation:90"))
    monkeypatch.undo()
    assert main(_measure_args(data, fresh, "translation:1-2")) == 0
    assert Report.load(fresh / "report.csv").meta["transforms"] == ["translation(1,1)", "translation(2,2)"]
    assert [p.name for p in fresh.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_keeps_the_earlier_set_and_says_where(tmp_path, monkeypatch, capsys):
    import errno

    import matplotlib.pyplot as plt

    data, out = _two_images(tmp_path / "img"), tmp_path / "out"
    opened = plt.get_fignums()
    assert main(_measure_args(data, out, "translation:1-2")) == 0
    # its figures closed once saved: pyplot's warning of 20 open figures broke this one line
    assert plt.get_fignums() == opened
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Report, "plot", full)
    assert main(_measure_args(data, out, "rotation:90")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and str(out) in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                           "capacity of 139.80 GiB of which 1.20 GiB is free."),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 4000000000000000 bytes."),
    # Python's own, as ImageFiles raises it for an image too large to decode (was a traceback)
    MemoryError("Could not decode 'big.jpg' (13000x13000 pixels): out of memory; downscale it, "
                "or give the process more memory."),
])
def test_out_of_memory_is_one_line_naming_the_batch_size(error, tmp_path, monkeypatch, capsys):
    # a batch too large for the device was a torch traceback
    from equifast.measurement import Measurer

    def allocate(*args, **kwargs):
        raise error

    monkeypatch.setattr(Measurer, "update", allocate)
    out = tmp_path / "out"
    assert main(_measure_args(_two_images(tmp_path / "img"), out, "rotation:90")) == 2
    assert capsys.readouterr().err == (f"equifast: error: out of memory ({error}); use a smaller "
                                       "--batch-size.\n")
    assert not out.exists()
    # a command without --batch-size (sweep's driver, here `models`) gives no such advice
    import equifast.models

    monkeypatch.setattr(equifast.models, "available_models", allocate)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == f"equifast: error: out of memory ({error}).\n"
    # any other RuntimeError is a bug, whose traceback is kept
    monkeypatch.setattr(Measurer, "update", lambda *a, **k: torch.zeros(2) @ torch.zeros(3))
    with pytest.raises(RuntimeError, match="size mismatch|shape|inconsistent"):
        main(_measure_args(tmp_path / "img", out, "rotation:90"))


def test_an_error_after_the_commit_says_the_new_set_is_kept(tmp_path, monkeypatch, capsys):
    # it said "the earlier output is kept whole" while the next reader completed the new set
    import errno

    data, out = _two_images(tmp_path / "img"), tmp_path / "out"
    assert main(_measure_args(data, out, "translation:1-2")) == 0

    def full():
        raise OSError(errno.EIO, "Input/output error")

    _interrupt_the_move_in(monkeypatch, out, 2, full)
    assert main(_measure_args(data, out, "rotation:90")) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert "this run's output is committed there" in err and "kept whole" not in err, err
    assert Report.load(out / "report.json").meta["transforms"] == ["rotation(90)"]


def test_a_closed_pipe_ends_quietly(close_stdout, capsys):
    # `equifast models vit | head -1` printed "error: [Errno 32] Broken pipe" and exited 2
    close_stdout()
    assert main(["models", "vit"]) == 141
    assert capsys.readouterr().err == ""


def test_num_classes_measures_a_model_timm_builds_without_a_classifier(tmp_path, capsys):
    # headless timm models were refused with advice to pass num_classes, which the CLI lacked
    args = ["measure", "--model", "eva02_tiny_patch14_224", "--weights", "none", "--n-images", "2",
            "--transforms", "rotation:90", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    said = capsys.readouterr().err
    assert "timm builds 'eva02_tiny_patch14_224' without one" in said and "--num-classes N" in said
    assert main(args + ["--out", str(tmp_path / "b"), "--num-classes", "0"]) == 0
    rep = Report.load(tmp_path / "b" / "report.json")
    assert rep.meta["num_classes"] == 0 and rep.points.query("part == 'final'").shape[0] == 1
    final = rep.points.set_index("point").loc["final"]
    assert final["shape"] == "192"  # the pooled features, not logits


# ---- the command line in shells, scripts and pipelines ---------------------------------------

_TINY = ["measure", "--model", "resnet18", "--weights", "none", "--n-images", "2",
         "--transforms", "rotation:90"]


def test_seed_out_of_torchs_range_is_a_clear_error_before_measuring(tmp_path, capsys):
    # was "equifast: error: Overflow when unpacking long long", from torch.manual_seed
    out = tmp_path / "m"
    assert main(_TINY + ["--out", str(out), "--seed", str(2 ** 64)]) == 2
    err = capsys.readouterr().err
    assert f"Expected --seed to be an integer in 0..{2 ** 64 - 1}" in err
    assert str(2 ** 64) in err and "Overflow" not in err and not out.exists()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    # `equifast measure 2> log` filled the log with the bar's carriage-return redraws
    assert main(_TINY + ["--out", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    assert "measuring" not in captured.err and "\r" not in captured.err
    assert "wrote " in captured.out


def test_a_second_measure_into_the_same_out_is_refused(tmp_path, capsys):
    # both printed "wrote", and the folder held the set of whichever committed last
    import json
    import socket
    import subprocess
    import sys

    out = tmp_path / "m"
    assert main(_TINY + ["--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert not any(name.endswith(".lock") for name in before)  # released when done
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = out / ".equifast-measure.lock"
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        capsys.readouterr()
        assert main(_TINY + ["--out", str(out), "--seed", "1"]) == 2
        err = capsys.readouterr().err
        assert f"no other `equifast measure` writing to {str(out)!r}" in err and f"pid {other.pid}" in err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p != lock} == before
    finally:
        other.kill()
        other.wait()
    # its process gone, the lock is stale: taken over, and released when done
    assert main(_TINY + ["--out", str(out), "--seed", "1"]) == 0
    assert not lock.exists()
    assert Report.load(out).meta["seed"] == 1


def test_quiet_turns_progress_off_in_every_command(capsys):
    # measure's flag was --no-progress only, train's, study's and sweep's --quiet only
    parse = build_parser().parse_args
    assert parse(["measure", "--quiet"]).no_progress and parse(["measure", "--no-progress"]).no_progress
    assert not parse(["measure"]).no_progress
    for argv in (["train", "cnn7-fmnist6"], ["study", "objective"], ["sweep", "run", "s.yaml"]):
        assert parse(argv + ["--quiet"]).quiet and not parse(argv).quiet
    with pytest.raises(SystemExit):  # and sweep run says what its exit status means
        parse(["sweep", "run", "--help"])
    assert "exit status: 0 every job finished; 1 some jobs failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv,said", [
    (["--batch-size", "0"], "equifast: error: Expected --batch-size to be an integer >= 1, but got 0.\n"),
    (["--device", "tpu"], "equifast: error: Expected a device like 'cpu', 'cuda' or 'cuda:1', "
                          "but got 'tpu'.\n"),
])
def test_batch_size_and_device_are_checked_before_anything_is_printed_or_made(argv, said, tmp_path,
                                                                               capsys):
    # they failed after the header line was printed and --out made, naming `batch_size`
    assert main(_TINY + argv + ["--out", str(tmp_path / "m")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == said
    assert not (tmp_path / "m").exists()


def test_a_missing_data_root_of_a_run_folder_is_not_called_a_folder_of_images(tmp_path, capsys):
    # with a run folder as --model, --data is its recipe's data set (Fashion-MNIST's idx files)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text("{}")
    missing = str(tmp_path / "no-data")
    assert main(["measure", "--model", str(run), "--data", missing, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"Expected --data to be the folder of the run's data set, but {missing!r} does not exist" in err
    assert main(["measure", "--data", missing, "--out", str(tmp_path / "m")]) == 2  # a model by name
    assert f"Expected --data to be a folder of images, but {missing!r} does not exist" in capsys.readouterr().err


def test_model_arguments_are_checked_before_anything_is_printed_or_made(tmp_path, capsys):
    # they failed after the header line was printed and --out made; a run folder's refusal
    # said "got weights=None" for `--weights none`
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text("{}")  # refused before the recipe is read
    for argv, said in (
            (["--model", str(run), "--weights", "none"],
             f"Expected no --weights or --num-classes with the run folder {str(run)!r} (it is "
             "measured with its own trained weights), but got --weights none."),
            (["--model", str(run), "--num-classes", "3"], "but got --num-classes 3."),
            (["--model", "resnet18", "--num-classes", "10"],
             "Expected 1000 (the classes of the default weights of 'resnet18') or none, but got 10")):
        assert main(["measure", "--transforms", "rotation:90"] + argv
                    + ["--out", str(tmp_path / "m")]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and said in captured.err and captured.err.count("\n") == 1
        assert not (tmp_path / "m").exists()
    # the same with a folder named as the model in the working folder (an --out of it): its
    # checks were skipped, and failed in load_model after the header was printed
    (tmp_path / "resnet18").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert main(["measure", "--transforms", "rotation:90", "--model", "resnet18",
                     "--weights", "nosuch.pt", "--out", str(tmp_path / "m")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "'nosuch.pt' does not exist" in captured.err
    assert not (tmp_path / "m").exists()


def test_a_failed_measurement_removes_the_parent_folders_it_made(tmp_path, capsys):
    # only the innermost was removed: runs/a/ was left behind, empty
    keep = tmp_path / "runs"
    keep.mkdir()
    argv = _TINY[:3] + ["--weights", str(tmp_path / "no-such.pt")] + _TINY[5:]
    assert main(argv + ["--out", str(keep / "a" / "b" / "c")]) == 2
    assert "no-such.pt" in capsys.readouterr().err
    assert keep.is_dir() and list(keep.iterdir()) == []  # the folder that was there is kept


def test_out_inside_data_is_refused(tmp_path, capsys):
    # the run's figure.png and shifts.png were measured as images by the next run on --data
    data = _two_images(tmp_path / "img")
    for out in (data / "results", data):
        assert main(_measure_args(data, out, "rotation:90")) == 2
        assert f"Expected --out outside --data, but --out {str(out)!r} lies in --data" in \
            capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["0.png", "1.png"]
    assert main(_measure_args(data, tmp_path / "img-results", "rotation:90")) == 0  # beside it


@pytest.mark.parametrize("argv,hint", [
    (["--transforms", "rotaton:90"], "unknown kind 'rotaton'; did you mean 'rotation'?"),
    (["--transforms", "translaton:1-4"], "did you mean 'translation'?"),
    (["--metric", "corelation"], "but got 'corelation'; did you mean 'correlation'?"),
])
def test_typos_get_a_suggestion(argv, hint, capsys):
    assert main(["measure"] + argv) == 2
    err = capsys.readouterr().err
    assert hint in err and err.count("\n") == 1 and "Traceback" not in err


def test_no_command_prints_the_usage_on_stderr(capsys):
    # `equifast > out.txt` with no command put the help text into the file as a result
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: equifast" in captured.err


def test_an_ascii_terminal_does_not_fail_a_finished_measurement(tmp_path, monkeypatch, capsys):
    # under LANG=C without UTF-8 (PYTHONIOENCODING=ascii, a Latin-1 locale, ...) printing the
    # non-ASCII --out after the work was done raised UnicodeEncodeError: "error", exit 2
    import io
    import sys

    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", ascii_out)
    out = tmp_path / "résumé-ρ"
    assert main(_TINY + ["--out", str(out)]) == 0
    assert (out / "report.json").is_file()
    assert "r\\xe9sum\\xe9-\\u03c1/report.json" in raw.getvalue().decode("ascii")


def test_train_keeps_a_relative_data_root_absolute(tmp_path, monkeypatch, capsys):
    # the run's recipe.json kept --data-root as given: `equifast measure --model RUN` from
    # another folder looked for the test set in a folder of that name there
    import json

    from equifast.training.data import FASHION_MNIST_ROOT

    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("no Fashion-MNIST")
    (tmp_path / "fm").symlink_to(FASHION_MNIST_ROOT)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cnn7-fmnist6", "--data-root", "fm", "--epochs", "1", "--subset", "32",
                 "--test-subset", "32", "--device", "cpu", "--out", "run", "--quiet"]) == 0
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recipe["data_root"] == str(tmp_path / "fm")
    capsys.readouterr()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["measure", "--model", "../run", "--n-images", "2", "--transforms", "rotation:90",
                 "--out", "m", "--no-progress"]) == 0, capsys.readouterr().err
    # --help said --seed drew the image subset: a run's images are the first of its test set
    assert main(["measure", "--model", "../run", "--n-images", "2", "--transforms", "rotation:90",
                 "--seed", "1", "--out", "m1", "--no-progress"]) == 0
    import pandas as pd

    pd.testing.assert_frame_equal(Report.load("m").points, Report.load("m1").points)
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["measure"]
                         .format_help().split())
    assert "(a run folder is measured on the first images of its test set, whatever the seed)" \
        in help_text
    # and --data's is the folder of its data set, which the recipe's is the default of
    assert "With a run folder as --model: the folder of its recipe's data set (default: where it " \
           "was trained from)" in help_text
    assert main(["measure", "--model", "../run", "--data", str(tmp_path / "fm"), "--n-images", "2",
                 "--transforms", "rotation:90", "--out", "m2", "--no-progress"]) == 0
    pd.testing.assert_frame_equal(Report.load("m").points, Report.load("m2").points)


def test_study_checks_the_device_before_claiming_its_folder(tmp_path, capsys):
    # an unknown device failed in the first run's training: a progress line was printed and
    # the folder claimed (study.json) first
    out = tmp_path / "study"
    assert main(["study", "objective-fashion", "--device", "tpu", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "Expected a device like" in captured.err and "objective-fashion 1/" not in captured.err
    assert not out.exists()
    assert main(["study", "objective-fashion", "--epochs", "0", "--out", str(out)]) == 2
    assert "Expected --epochs to be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_method_check_into_a_closed_pipe_ends_quietly():
    # `python -m equifast.method_check | head -2` ended in a BrokenPipeError traceback, status 1
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has left before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "equifast.method_check"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""


def test_a_missing_optional_dependency_says_which_extra_installs_it(tmp_path, monkeypatch, capsys):
    # train --workers 2 without Ray printed ModuleNotFoundError's traceback
    import sys
    monkeypatch.setitem(sys.modules, "ray.train.torch", None)  # as where ray is not installed
    out = tmp_path / "run"
    assert main(["train", "cnn7-fmnist6", "--workers", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equifast: error: Training on Ray Train workers (--workers N, --gpu) "
                          "needs ray, which does not import here") and "equifast[distributed]" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_python_m_equifast_is_the_command(capsys):
    # `make demo` with PY=<a venv's python> ran whichever `equifast` was on PATH
    import subprocess
    import sys
    assert main(["models", "resnet1"]) == 0
    run = subprocess.run([sys.executable, "-m", "equifast", "models", "resnet1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == capsys.readouterr().out and "resnet18" in run.stdout


def test_a_sweep_without_ray_says_which_extra_installs_it(tmp_path, monkeypatch, capsys):
    import sys
    from equifast.distributed.cli import main as sweep_main
    spec = Path(__file__).resolve().parents[1] / "distributed" / "examples" / "small.yaml"
    monkeypatch.setitem(sys.modules, "ray", None)  # as where ray is not installed
    assert sweep_main(["run", str(spec), "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equifast sweep: error: Running a sweep needs ray") and "equifast[distributed]" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "sweep").exists()


def test_the_accuracy_says_over_how_many_images_and_the_report_keeps_absolute_paths(
        two_labelled_and_a_stray, capsys):
    # "top-1 accuracy: 0.5000" was 1 of 2 labelled images of 3 measured, and nothing said so;
    # meta kept `--data val` as typed, which named nothing when read from another folder
    tmp_path = two_labelled_and_a_stray
    assert main(["measure", "--model", "resnet18", "--weights", "ckpt.pt", "--data", "val",
                 "--transforms", "rotation:90", "--out", "out", "--no-progress",
                 "--loader-workers", "0"]) == 0
    said = capsys.readouterr()
    assert "\ntop-1 accuracy: 0.5000 (1 of 2 labelled images; 3 measured)\n" in said.out
    meta = Report.load(tmp_path / "out").meta
    assert (meta["accuracy"], meta["accuracy_images"], meta["n_images"]) == (0.5, 2, 3)
    assert (meta["images"], meta["weights"], meta["model"]) == (
        str(tmp_path.resolve() / "val"), str(tmp_path.resolve() / "ckpt.pt"), "resnet18")


@pytest.mark.slow
def test_vit_with_random_weights_says_why_its_final_part_is_nan(tmp_path, capsys):
    # torchvision zero-initialises ViT's classifier: `final` was NaN (undefined_fraction 1.0)
    # and nothing said why
    assert main(["measure", "--model", "vit_b_16", "--weights", "none", "--n-images", "2",
                 "--transforms", "rotation:90", "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("equifast: warning: Every score at point(s) 'final' (its 1000 values in "
                     "each image; every transform) is undefined") == 1
    assert "part(s) 'final' have no score" in err and "--weights none" in err
    final = Report.load(tmp_path / "m").points.set_index("point").loc["final"]
    assert final["undefined_fraction"] == 1.0


def test_measures_errors_name_the_flags_not_the_python_arguments(tmp_path, capsys):
    # "Expected `images` to be the folder of one split" for --data, "pass num_classes=N
    # (--num-classes N)", "Expected `weights` ..." for --weights
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "imagenet" / split / "n01440764").mkdir(parents=True)
        Image.new("RGB", (40, 40), (9, 90, 30)).save(tmp_path / "imagenet" / split / "n01440764" / "a.png")
    for argv, said in (
            (["--model", "resnet18", "--weights", "none", "--data", str(tmp_path / "imagenet")],
             "Expected --data to be the folder of one split (its class folders"),
            (["--model", "resnet18", "--weights", "none", "--num-classes", "0"],
             "Expected --num-classes >= 1 for torchvision's 'resnet18'"),
            (["--model", "resnet18", "--weights", str(tmp_path / "missing.pt")],
             "Expected --weights to be a checkpoint file or a name of its torchvision weights"),
            (["--model", "eva02_tiny_patch14_224", "--weights", "none"],
             "pass --num-classes N for a new classifier of N classes, --num-classes 0 to measure"),
            (["--model", "efficientnet_lite0", "--num-classes", "10"],  # it said weights=None
             "Expected 1000 or no --num-classes with the embedded ImageNet weights of "
             "'efficientnet_lite0' (their classes), but got 10; pass --weights none for random "
             "weights, or a checkpoint of that many classes."),
            # it said vector_mode='across_images'
            (["--model", "resnet18", "--weights", "none", "--vector-mode", "across_images"],
             "Expected at least two images for --vector-mode across_images, but got 1 (its vectors: "
             "pool, final); measure more images, or use --vector-mode per_image.")):
        assert main(["measure", "--transforms", "rotation:90", "--n-images", "1", "--no-progress",
                     "--out", str(tmp_path / "m")] + argv) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
        assert not any(name in err for name in ("`images`", "`num_classes`", "`weights`",
                                                 "num_classes=N", "weights=None", "vector_mode=")), err
    # measure in Python keeps its own names
    with pytest.raises(FileNotFoundError, match="Expected `weights` to be a checkpoint file"):
        import equifast as ef

        ef.measure("resnet18", torch.rand(1, 3, 32, 32), weights=str(tmp_path / "missing.pt"))


def test_a_transform_the_maps_cannot_take_names_the_spec_not_python(tmp_path, capsys):
    # measure's advice named mode='circular', rounding='down' and points=[...], which the
    # command line has not: 223 pixels round to the whole 56x56 map of the stem
    assert main(_TINY + ["--transforms", "translation:223-223:zero:nearest", "--n-images", "1",
                         "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "Point 'stem' (56x56 map at a 224x224 input) cannot take translation(223,223,zero,nearest)" in err
    assert ("use smaller shifts, shifts rounded down (no :nearest in --transforms), or circular "
            "shifts (no :zero in --transforms). Or leave the transform out, or name other points "
            "in Python (equifast.measure(..., points=[...]); the command line measures every "
            "point).\n") in err
    assert "mode=" not in err and "rounding=" not in err and "(points=" not in err


@pytest.mark.parametrize("message, want", [
    # training's clause, and a dot inside a path that ends no sentence
    ("Expected Fashion-MNIST idx files in '/d/fm.v2', but it has none, or pass download=True "
     "(--download).", "Expected Fashion-MNIST idx files in '/d/fm.v2', but it has none."),
    ("The file /data/places.v2/val.txt does not exist. You can set download=True to download it.",
     "The file /data/places.v2/val.txt does not exist."),
    # torchvision's sentence quoted inside another message
    ("It could not be read (Dataset not found. You can use download=True to download it). Pass "
     "it as `root`.", "It could not be read (Dataset not found). Pass it as `root`."),
])
def test_download_advice_is_cut_and_the_rest_kept_whole(message, want):
    from equifast._hints import without_download_advice

    assert without_download_advice(message) == want


def test_download_advice_of_a_real_torchvision_error_is_cut(tmp_path):
    import torchvision

    from equifast._hints import without_download_advice

    with pytest.raises(RuntimeError, match="download=True") as err:
        torchvision.datasets.MNIST(str(tmp_path))
    assert without_download_advice(str(err.value)) == str(err.value).split(".")[0]

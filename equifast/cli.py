"""equifast on the command line: measure the channel and layer equivariance of image models.

    equifast measure                      # the embedded default: EfficientNet-Lite0, real photos
    equifast measure --model resnet50 --data /data/imagenet/val --n-images 2000
    equifast measure --model resnet18 --weights ckpt.pt --transforms rotation --metric correlation,cosine
    equifast measure --model runs/cnn7-fmnist6/seed0 --transforms rotation   # a run of `equifast train`, on its test set
    equifast models resnet                # list model names
    equifast train / study / sweep ...    # training studies and Ray sweeps (see --help)
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from ._checks import check_integer, check_path_flags
from ._io import lies_in
from ._console import HelpFormatter, closed_pipe, interactive, show_warning, tolerant_output
from ._hints import as_flags

__all__ = ["main", "build_parser", "HelpFormatter"]


def _add_measure(sub) -> None:
    p = sub.add_parser(
        "measure", help="measure channel and layer equivariance of a model",
        description="Measure channel and layer equivariance of every representation of a model, "
                    "per point and per part (early, middle, late, pool, final). With no options: "
                    "EfficientNet-Lite0 with its real ImageNet weights on crops of real photos "
                    "(no download), diagonal shifts 1..32 and rotations.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", type=os.path.expanduser, default="efficientnet_lite0",
                   help="torchvision or timm model name, or the folder of an `equifast train` run "
                        "(measured on its recipe's test set)"),
    p.add_argument("--weights", type=os.path.expanduser, default="default",
                   help="'default' (the default: hub weights; for efficientnet_lite0 the packaged ones, "
                        "also asked for as 'embedded'), "
                        "'none' (random), a checkpoint path (torch.save or .safetensors), or "
                        "torchvision weights by name (IMAGENET1K_V1); not with a run folder")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier size of a model by name: a new head of N classes (with "
                        "--weights none or a checkpoint of N classes), or 0 for a timm model built "
                        "without one (final is then its pooled features)")
    p.add_argument("--data", type=os.path.expanduser, default=None,
                   help="folder of images (class subfolders give labels and accuracy); default: "
                        "embedded photos. With a run folder as --model: the folder of its "
                        "recipe's data set (default: where it was trained from)")
    p.add_argument("--transforms", default=None,
                   help="comma-separated: translation:1-32, translation:1-16:zero, translation:1-8:nearest, "
                        "rotation, rotation:90, flip, flip:horizontal, or the names a report's meta "
                        "lists: translation(2,5), rotation(90) (default: translation:1-32,rotation; "
                        "for a run folder its study's: rotation for the digits, translation:1-16 for CIFAR-10)")
    p.add_argument("--metric", default="correlation",
                   help="correlation, cosine, or both (correlation,cosine: adds the metric-bias analysis)")
    p.add_argument("--vector-mode", default="per_image", choices=["per_image", "across_images"],
                   help="vectors (pool, final): one score per image over its K entries (invariance), "
                        "or per channel across the images")
    p.add_argument("--n-images", type=int, default=None,
                   help="images to use (default: 192 embedded photos, a run's recipe's "
                        "measure_images (2000) of its test set, all of --data)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--loader-workers", type=int, default=None,
                   help="processes decoding the images of --data while the model runs (default: "
                        "this machine's CPUs less one, at most 8; 0: in this process)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--amp", default=None, choices=["float16", "bfloat16"], help="autocast dtype")
    p.add_argument("--no-tensor-cores", dest="tensor_cores", action="store_false",
                   help="CUDA: multiply in float32 instead of TF32/float16/bfloat16 tensor cores")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds torch, the embedded photos' crops and the subset of --data that "
                        "--n-images draws (a run folder is measured on the first images of its "
                        "test set, whatever the seed)")
    p.add_argument("--out", type=os.path.expanduser, default="runs/measure",
                   help="output folder: report.json, report.{points,parts}.{csv,parquet}, "
                        "report.meta.json, figure.png, shifts.png with several shifts, "
                        "metric_bias{,_correlation}.csv with two metrics. An earlier output there is "
                        "replaced as a whole; a folder of other files, or one inside --data, is "
                        "refused")
    p.add_argument("--no-progress", "--quiet", action="store_true",  # --quiet: train's, sweep's
                   help="no progress bar (there is none when stderr is not a terminal)")
    p.set_defaults(func=_run_measure)


def _run_measure(args) -> int:
    from .devices import resolve_device
    from ._checks import checked_seed
    from .measurement import metric_list
    from .models import _is_run_folder, check_model_args, check_model_name, given_model_args
    from .transforms import check_distinct, parse_transforms

    # Every input is checked before the model runs: a measurement can take hours.
    # "" (an unset variable) is refused by parse_transforms, not read as the default: a
    # --transforms "$T" of a few transforms measured the 35 of the default
    transforms = parse_transforms(_default_transforms(args.model) if args.transforms is None
                                  else args.transforms)
    check_distinct(transforms)
    metrics = metric_list([m.strip().lower() for m in args.metric.split(",") if m.strip()], "--metric")
    for flag, value, minimum in (("--batch-size", args.batch_size, 1), ("--n-images", args.n_images, 1),
                                 ("--loader-workers", args.loader_workers, 0),
                                 ("--num-classes", args.num_classes, 0)):
        check_integer(flag, value, minimum, allow_none=flag != "--batch-size")
    checked_seed(args.seed, "--seed")
    check_model_name(args.model)
    resolve_device(args.device)  # an unknown device, or a GPU this machine lacks
    weights = None if args.weights == "none" else args.weights
    if _is_run_folder(args.model):  # its own weights and classes
        given = [f"{_MEASURE_FLAGS[k]} {v}"
                 for k, v in given_model_args(args.weights, args.num_classes).items()]
        if given:  # load_model's refusal named `weights=None` for `--weights none`
            raise ValueError(f"Expected no --weights or --num-classes with the run folder "
                             f"{args.model!r} (it is measured with its own trained weights), but "
                             f"got {' and '.join(given)}.")
    else:  # a name, also where a folder of that name lies in the working folder (check_model_name)
        check_model_args(args.model, weights, args.num_classes)  # before --out is made
    check_path_flags([("--data", args.data), ("--out", args.out)])
    if args.data is not None and not Path(args.data).is_dir():
        # a run's --data is the root of its recipe's data set (idx or CIFAR batch files)
        what = ("the folder of the run's data set" if _is_run_folder(args.model)
                else "a folder of images")
        raise FileNotFoundError(f"Expected --data to be {what}, but {args.data!r} "
                                f"{'is a file' if Path(args.data).exists() else 'does not exist'}.")
    if args.data is not None and lies_in(args.out, args.data):
        # the figures written there would be measured as images of --data by the next run
        raise ValueError(f"Expected --out outside --data, but --out {args.out!r} lies in --data "
                         f"{args.data!r}: its figures would be read as images there; use "
                         "another --out.")
    from ._io import FolderLock

    # the folders this run makes, innermost first: --out and the parents it lacks
    made = [p for p in (Path(args.out), *Path(args.out).parents) if not p.exists()]
    out = _output_folder(args.out)
    try:
        # a second `equifast measure` into the same folder is refused: both would say "wrote",
        # and only the set committed last would be there
        with FolderLock(out, _LOCK, "`equifast measure`"):
            return _measure_into(out, args, transforms, metrics, weights)
    except BaseException:
        for folder in made:  # a failed measurement leaves no empty folder of ours behind
            try:
                folder.rmdir()
            except OSError:  # not empty (another's files meanwhile), or gone
                break
        raise


def _default_transforms(model: str) -> str:
    """``--transforms`` when not given: a run of ``equifast train`` as its study measures it
    (ImageNet's shifts up to 32 are as large as its 28- or 32-pixel images: refused), else
    shifts 1-32 and the rotations."""
    from .models import _is_run_folder

    if _is_run_folder(model):
        from equifast.training.trainer import RECIPE, read_run_recipe

        dataset = read_run_recipe(Path(model, RECIPE)).dataset
        return "translation:1-16" if dataset == "cifar10" else "rotation"
    return "translation:1-32,rotation"


def _measure_into(out: Path, args, transforms, metrics, weights) -> int:
    import pandas as pd

    from . import functional
    from .data import default_num_workers
    from .measurement import measure
    from .models import _is_run_folder

    run = _is_run_folder(args.model)  # measured on its recipe's test set
    n_images = args.n_images if args.n_images is not None else (
        192 if args.data is None and not run else None)
    images = args.data if args.data is not None else (
        "test set of the run" if run else "embedded photos")
    print(f"equifast: {args.model} ({images}), "
          f"{len(transforms)} transform{'s' if len(transforms) > 1 else ''}, metric "
          f"{','.join(metrics)}, backend {functional.backend()}",
          flush=True)
    workers = args.loader_workers
    if workers is None:
        workers = default_num_workers() if args.data is not None else 0
    report = measure(args.model, args.data, transforms=transforms, metric=metrics,
                     num_workers=workers,
                     batch_size=args.batch_size, n_images=n_images, vector_mode=args.vector_mode,
                     device=args.device, amp=args.amp, seed=args.seed,
                     progress=not args.no_progress and interactive(sys.stderr),
                     weights=weights, tensor_cores=args.tensor_cores, num_classes=args.num_classes)
    bias = report.metric_bias() if len(metrics) > 1 else None
    # every file before anything is printed: a closed pipe (`| head`) stops at the first print
    files = _write_outputs(out, report, args.model, metrics[0], bias)
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(f"\nmeasured {report.meta['n_images']} images x {len(transforms)} "
              f"transform{'s' if len(transforms) > 1 else ''} in "
              f"{report.meta['seconds']:.1f} s ({report.meta['images_per_second']:.2f} images/s)")
        for metric in metrics:  # each metric asked for (the figures draw the first)
            print(f"\nParts ({metric}; images: {report.meta['n_images']}):")
            print(report.summary(metric).to_string())
        if report.accuracy is not None:
            # over the labelled images only: 0.5 may be 1 of 2 among many measured
            labelled = report.meta.get("accuracy_images")
            over = "" if not labelled else (
                f" ({round(report.accuracy * labelled)} of {labelled} labelled "
                f"image{'s' if labelled > 1 else ''}; {report.meta['n_images']} measured)")
            print(f"\ntop-1 accuracy: {report.accuracy:.4f}{over}")
        if bias is not None:
            print("\nMetric bias (correlation of each score with the mean activation and the mean magnitude, "
                  "across the points before global pooling):")
            print(bias["correlation"].to_string(index=False))
    print("\nwrote " + ", ".join(str(f) for f in files))
    return 0


# The errors of measure's modules name its Python arguments: the command line names its flags.
_MEASURE_FLAGS = {"images": "--data", "weights": "--weights", "num_classes": "--num-classes",
                  "n_images": "--n-images", "batch_size": "--batch-size", "transforms": "--transforms",
                  "metric": "--metric", "vector_mode": "--vector-mode", "device": "--device",
                  "amp": "--amp", "num_workers": "--loader-workers"}
_AS_FLAGS = (
    # both already ("weights=None (--weights none)", "`num_classes` (--num-classes) 5"): the flag
    (re.compile(r"(?:`\w+`|\b\w+=[^\s(),]+) \((--[\w-]+(?: [\w.-]+)?)(?: on the command line)?\)"),
     r"\1"),
    # "(weights='path/to/ckpt.pt', CLI --weights PATH)"
    (re.compile(r"\(\w+='[^']*', (?:CLI )?(--[^()]+)\)"), r"(\1)"),
    (re.compile(r"mode='circular'"), "circular shifts (no :zero in --transforms)"),
    (re.compile(r"rounding='down'"), "shifts rounded down (no :nearest in --transforms)"),
    (re.compile(r"name other points \(points=\[\.\.\.\]\)"),
     "name other points in Python (equifast.measure(..., points=[...]); the command line "
     "measures every point)"),
)


def _in_flags(message: str) -> str:
    """An error of ``equifast.measure`` (``message``) with its Python arguments named as the
    flags of ``equifast measure``."""
    for pattern, replacement in _AS_FLAGS:
        message = pattern.sub(replacement, message)
    return as_flags(message, _MEASURE_FLAGS)


# what `equifast measure` may write into --out; the marker says a folder is one of its outputs,
# where the files it always writes are beside it (Report.save writes the marker too)
_MARKER = "report.meta.json"
_ALWAYS = ("report.json", "report.points.csv", "report.points.parquet", "figure.png")
_OPTIONAL = ("shifts.png", "metric_bias.csv", "metric_bias_correlation.csv")
_LOCK = ".equifast-measure.lock"  # held in --out while a measurement runs


def _write_outputs(out: Path, report, label: str, metric: str, bias) -> List[Path]:
    """Write the report, its figures and (``bias``) the metric-bias tables into ``out`` as one
    set: staged in a hidden folder, then committed (:func:`equifast._io.commit_staged`), so
    that an interruption, a kill or a full disk leaves the earlier set whole or this one
    complete, never a mix; files of an earlier set that this one has not (an optional figure
    or table) are removed. Returns the files written."""
    import shutil

    from ._io import commit_staged, stage_folder, write_csv_atomic
    from .figures import _pyplot

    plt = _pyplot()

    stage = stage_folder(out)
    try:
        written = list(dict.fromkeys(report.save(stage / "report.json") + report.save(stage / "report.csv")
                                     + report.save(stage / "report.parquet")))
        # closed once saved: pyplot keeps every figure of a process (main called again and again)
        plt.close(report.plot(stage / "figure.png", label=label, metric=metric))
        written.append(stage / "figure.png")
        if report.shifts.groupby("family")["transform"].nunique().gt(1).any():
            plt.close(report.plot_shifts(stage / "shifts.png", label=label, metric=metric))  # fig. 8
            written.append(stage / "shifts.png")
        if bias is not None:
            for name, table in (("metric_bias.csv", bias["table"]),
                                ("metric_bias_correlation.csv", bias["correlation"])):
                written.append(write_csv_atomic(stage / name, table))
        names = sorted((f.name for f in written), key=lambda n: n == _MARKER)  # the marker last
        # an earlier run's optional files would read as this report's
        commit_staged(stage, out, names, remove=_OPTIONAL)
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        # the stage is gone once renamed into the commit: from then on the new set is the one kept
        kept = ("the earlier output there, if any, is kept whole" if stage.exists() else
                "this run's output is committed there, and the next `equifast measure --out` "
                "or Report.load of it moves the rest in")
        failed = OSError(f"Could not write the output into --out {str(out)!r} "
                         f"({err.strerror or err}); {kept}.")
        failed.errno = err.errno
        raise failed from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already once committed
    return [out / name for name in names]


def _output_folder(path: str) -> Path:
    """``--out``, created, and checked to take files, before anything is measured: missing,
    empty or an earlier output of ``equifast measure`` (a user's own files are never replaced)."""
    from ._io import check_own_folder, finish_commit, json_object_with, writable_folder

    if Path(path).is_dir():  # a set a killed run had committed: moved in whole first
        finish_commit(path)
    meta = json_object_with("backend", "transforms")
    out = check_own_folder(path, [_MARKER], "an output folder of `equifast measure`", "--out",
                           {_MARKER: lambda m: meta(m) and all((m.parent / n).is_file() for n in _ALWAYS)},
                           lock=_LOCK)
    return writable_folder(out, "the --out folder")


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list model names (torchvision and timm)")
    p.add_argument("pattern", nargs="?", default="",
                   help="substring to filter by, or a wildcard pattern as timm's ('resnet5*'); any case")

    def run(args):
        import fnmatch

        from .models import available_models

        # the names are lower case; `equifast models ViT` found none
        pattern = args.pattern.lower()
        wildcard = any(c in pattern for c in "*?[")  # timm's list_models('resnet5*') found nothing
        names = [name for name in available_models()
                 if (fnmatch.fnmatchcase(name.lower(), pattern) if wildcard else pattern in name.lower())]
        if not names:
            print(f"equifast models: no torchvision or timm model name "
                  f"{'matches' if wildcard else 'contains'} {args.pattern!r}", file=sys.stderr)
            return 1
        print("\n".join(names))
        return 0

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The ``equifast`` parser: ``measure``, ``models``, and ``train``/``study``/``sweep`` where
    their modules import."""
    parser = argparse.ArgumentParser(prog="equifast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__, backend
    import torch

    # what a bug report needs: which build computes the scores
    parser.add_argument("--version", action="version", version=(
        f"equifast {__version__} (torch {torch.__version__}, backend {backend()})"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_measure(sub)
    _add_models(sub)
    for module, adders, commands in (
            ("equifast.training.cli", ("add_train_parser", "add_study_parser"), ("train", "study")),
            ("equifast.distributed.cli", ("add_sweep_parser",), ("sweep",))):
        try:
            mod = __import__(module, fromlist=list(adders))
        except ImportError as err:  # an optional dependency missing (ray, ...): say which
            for command in commands:
                _add_unavailable(sub, command, f"{type(err).__name__}: {err}")
            continue
        for name in adders:
            if hasattr(mod, name):
                getattr(mod, name)(sub)
    return parser


def _add_unavailable(sub, command: str, why: str) -> None:
    """A command whose module could not be imported: it says why, rather than 'invalid choice'."""
    p = sub.add_parser(command, help=f"(unavailable: {why})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args):
        print(f"equifast: error: `equifast {command}` is unavailable here ({why}); install "
              "the extras with `pip install --no-build-isolation -e \".[all]\"`.", file=sys.stderr)
        return 2

    p.set_defaults(func=run)


def _show_in_flags(message, category, *rest, **kw) -> None:
    """:func:`show_warning` for ``equifast measure``: its own warnings, like its errors, name
    the flags typed ("fewer than the --n-images 5 asked for")."""
    from .warning import EquifastWarning

    if issubclass(category, EquifastWarning):
        message = _in_flags(str(message))
    show_warning(message, category, *rest, **kw)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``equifast`` command."""
    tolerant_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)  # a usage error: nothing for a `> file` to keep
        return 2
    try:
        with warnings.catch_warnings():  # restores Python's own display afterwards
            warnings.showwarning = show_warning if args.func is not _run_measure else _show_in_flags
            return int(args.func(args) or 0)
    except BrokenPipeError:  # stdout's reader left (`| head`): what was written is kept
        return closed_pipe()
    except (ValueError, OSError, ModuleNotFoundError) as err:  # bad input, missing files,
        # weights not downloadable, an optional dependency not installed (ray for --workers)
        print(f"equifast: error: {_in_flags(str(err)) if args.func is _run_measure else err}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what was finished is kept (runs, sweep records): say only that
        print("equifast: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as err:
        if not isinstance(err, MemoryError) and not _out_of_memory(err):
            raise  # a bug: its traceback is what a report of it needs
        # a batch too large for the GPU (or the CPU's memory) was a torch traceback, and
        # Python's own MemoryError (decoding a large image under a memory limit) a Python one
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        advice = "; use a smaller --batch-size" if hasattr(args, "batch_size") else ""  # not sweep's
        print(f"equifast: error: out of memory ({first}){advice}.", file=sys.stderr)
        return 2


def _out_of_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is torch's failure to allocate: ``torch.OutOfMemoryError`` (CUDA), or the
    CPU allocator's plain ``RuntimeError``."""
    import torch

    return isinstance(err, torch.OutOfMemoryError) or \
        "DefaultCPUAllocator: can't allocate memory" in str(err)


if __name__ == "__main__":
    sys.exit(main())

"""Command-line entry points ``equifast train`` and ``equifast study``.

The ``equifast`` CLI adds them with :func:`add_train_parser` and :func:`add_study_parser`;
each sets ``func`` on its sub-parser (``args.func(args)`` runs it). :func:`main` runs them
on their own (for tests and ``python -m equifast.training.cli``).

Examples::

    equifast train cnn7-fmnist6 --epochs 2 --subset 2000 --out runs/quick
    equifast train resnet44-crop --data-root ~/data/cifar10 --workers 2
    equifast train --list
    equifast study objective-fashion --seeds 0 1 --epochs 10 --out runs/objective-fashion
    equifast study objective-fashion --epochs 12 --milestones 3 6   # the schedule, shortened
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import List, Optional

from equifast._checks import check_path_flags
from equifast._hints import as_flags

__all__ = ["add_train_parser", "add_study_parser", "main", "build_parser"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data folder (Fashion-MNIST has a default)")
    p.add_argument("--download", action="store_true", default=None,
                   help="let torchvision download missing data")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--milestones", type=int, nargs="*", metavar="EPOCH",
                   help="epochs after which the learning rate drops by the recipe's gamma "
                        "(default: the recipe's, which --epochs leaves in place; none given: "
                        "no drop)")
    p.add_argument("--batch-size", type=int, help="override the global batch size")
    p.add_argument("--lr", type=float, help="override the learning rate")
    p.add_argument("--subset", type=int, help="train on a random subset of N images")
    p.add_argument("--test-subset", type=int, help="test on a random subset of N images")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... to train in this process (default: "
                                    "cuda when available); Ray workers use --gpu instead")
    p.add_argument("--workers", type=int, default=1,
                   help="Ray Train data-parallel workers (1: train in this process unless --gpu)")
    p.add_argument("--gpu", action="store_true",
                   help="train with Ray Train, one GPU per worker (otherwise Ray workers use CPUs)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain and replace finished runs in the output folder")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines (one per epoch on stderr; Ray Train prints its own)")


def _overrides(args) -> dict:
    # absolute: the run's recipe.json keeps it, and `equifast measure --model RUN` reads the
    # test set there from wherever it is run
    root = os.path.abspath(os.path.expanduser(args.data_root)) if args.data_root else args.data_root
    return dict(data_root=root, download=args.download, epochs=args.epochs,
                milestones=args.milestones, batch_size=args.batch_size, lr=args.lr, train_subset=args.subset,
                test_subset=args.test_subset, device=args.device)


# The recipe fields that have a flag: a bad value's error names the flag that was typed.
_FLAGS = {"train_subset": "--subset", "test_subset": "--test-subset", "batch_size": "--batch-size",
          "epochs": "--epochs", "lr": "--lr", "milestones": "--milestones", "seed": "--seed",
          "measure_images": "--n-images"}


@contextlib.contextmanager
def _errors_name_flags(**flags):
    """Errors of recipe fields name their flags (``flags`` adds to or replaces :data:`_FLAGS`)."""
    try:
        yield
    except ValueError as err:
        message = as_flags(str(err), {**_FLAGS, **flags})
        if message == str(err):
            raise
        raise ValueError(message) from err


def _echo(args):
    """Progress lines to stderr (stdout keeps the result), or nowhere with --quiet."""
    return None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))


def _check_workers(args) -> None:
    if args.workers < 1:
        raise ValueError(f"Expected --workers >= 1 (1: train in this process), but got {args.workers}.")


def _check_named(args, what: str) -> None:
    """Options given without the recipe or study they set were ignored: the list was printed."""
    given = [f"--{dest.replace('_', '-')}" for dest, default in vars(args.unset).items()
             if dest not in (what, "list", "unset") and getattr(args, dest, default) != default]
    if given and not getattr(args, what):
        raise ValueError(f"{', '.join(given)} given without a {what}: name one (--list lists them).")


def _run_train(args) -> int:
    from .recipes import get_recipe, list_recipes
    _check_named(args, "recipe")
    if args.list or not args.recipe:
        print("\n".join(list_recipes()))
        return 0
    check_path_flags([("--out", args.out), ("--data-root", args.data_root)])
    _check_workers(args)
    with _errors_name_flags():
        recipe = get_recipe(args.recipe, seed=args.seed, **_overrides(args))
    out = args.out or os.path.join("runs", recipe.name, f"seed{recipe.seed}")
    echo = _echo(args)
    if args.workers > 1 or args.gpu:
        from .ray_train import train_ray
        with _errors_name_flags(num_workers="--workers"):
            result = train_ray(recipe, out, num_workers=args.workers, use_gpu=args.gpu,
                               overwrite=args.overwrite, say=echo)  # Ray Train reports each epoch
    else:
        from .trainer import epoch_line, train
        progress = None if echo is None else \
            (lambda epoch, row: echo(epoch_line(epoch, recipe.epochs, row)))
        result = train(recipe, out, overwrite=args.overwrite, callback=progress, say=echo)
    summary = {"out": result.out_dir, "epochs": result.epochs, "test_acc": result.test_acc,
               "test_loss": result.test_loss}
    if result.test_rot_acc is not None:
        summary["test_rot_acc"] = result.test_rot_acc
    print(json.dumps(summary))
    return 0


def _run_study(args) -> int:
    from .studies import STUDIES, get_study, run_study
    _check_named(args, "study")
    if args.list or not args.study:
        print("\n".join(STUDIES))
        return 0
    check_path_flags([("--out", args.out), ("--data-root", args.data_root)])
    study = get_study(args.study)
    _check_workers(args)
    out = args.out or os.path.join("runs", study.name)
    # --workers is train_ray's num_workers (the recipe's data-loader workers have no flag)
    with _errors_name_flags(seed="--seeds", seeds="--seeds", num_workers="--workers"):
        summary = run_study(study.name, out, seeds=args.seeds, overrides=_overrides(args),
                            workers=args.workers, use_gpu=args.gpu, measure=not args.no_measure,
                            n_images=args.n_images, device=args.device, overwrite=args.overwrite,
                            echo=_echo(args))
    if summary is not None:
        print(summary.to_string(index=False))
        figures = [os.path.join(out, f) for f in ("figure.png", "shifts.png")]
        print("figures: " + ", ".join(f for f in figures if os.path.isfile(f)))
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train RECIPE`` to an argparse sub-parser set; returns the new parser."""
    p = subparsers.add_parser("train", help="train a thesis recipe",
                              description="Train a named recipe (see --list); resumes an "
                                          "unfinished run in --out, reuses a finished one.")
    p.add_argument("recipe", nargs="?", help="recipe name, e.g. cnn7-fmnist6, resnet44-crop")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("--seed", type=int, help="training seed (default 0)")
    p.add_argument("--out", type=os.path.expanduser, help="run folder (default runs/RECIPE/seedS)")
    _add_common(p)
    p.set_defaults(func=_run_train)
    p.set_defaults(unset=p.parse_args([]))  # each option's default: see _check_named
    return p


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``study NAME`` to an argparse sub-parser set; returns the new parser."""
    p = subparsers.add_parser("study", help="rerun a thesis study (train, measure, draw)",
                              description="Train every setting and seed of a study, measure "
                                          "the models with equifast.measure, write runs.csv, "
                                          "summary.csv and figure.png (and for translations "
                                          "shift_runs.csv, shift_summary.csv and shifts.png: "
                                          "each shift, thesis figure 8).")
    p.add_argument("study", nargs="?", help="objective, objective-fashion, augmentation, capacity, capacity-wrn40")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    p.add_argument("--out", type=os.path.expanduser, help="study folder (default runs/STUDY)")
    p.add_argument("--n-images", type=int, help="validation images to measure (default 2000)")
    p.add_argument("--no-measure", action="store_true", help="train only")
    _add_common(p)
    p.set_defaults(func=_run_study)
    p.set_defaults(unset=p.parse_args([]))  # each option's default: see _check_named
    return p


def build_parser() -> argparse.ArgumentParser:
    """A parser with just the ``train`` and ``study`` commands."""
    parser = argparse.ArgumentParser(prog="equifast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_study_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``train`` or ``study`` from ``argv``; returns the exit code.

    Example:
        >>> main(["train", "--list"])  # doctest: +ELLIPSIS
        cnn7-mnist6
        ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"equifast {args.command}: error: {err}\n")


if __name__ == "__main__":  # as the `equifast` command: its handling of Ctrl-C and OSError
    from equifast.cli import main as equifast_main

    raise SystemExit(equifast_main())

"""``equifast sweep``: run a sweep, watch it, and draw its figures.

    equifast sweep run distributed/examples/small.yaml --out runs/sweep-small
    equifast sweep run seminal.yaml --address auto          # on a running Ray cluster
    equifast sweep status --out runs/sweep-small            # from another shell, any time
    equifast sweep report --out runs/sweep-small            # figures 8, 11-13 and their tables

``add_sweep_parser(subparsers)`` adds the ``sweep`` command to ``equifast``'s parser;
``main(argv)`` runs it alone (``main(["run", "spec.yaml"])``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from equifast._checks import check_path_flags
from equifast._io import writable_folder
from equifast._console import HelpFormatter, closed_pipe, tolerant_output
from equifast._hints import as_flags

__all__ = ["add_sweep_parser", "main"]


def _out(args, spec=None) -> Path:
    from .sweep import DEFAULT_OUT

    folder = getattr(args, "folder", None)  # `sweep status runs/x`: the folder, as --out
    # one folder however spelled: `runs/x --out $PWD/runs/x` was refused as two
    if folder is not None and args.out is not None and (
            os.path.realpath(folder) != os.path.realpath(args.out)):
        raise ValueError(f"Expected one results folder, but got {folder!r} and --out {args.out!r}; "
                         "give one of them.")
    args.out = args.out if args.out is not None else folder
    check_path_flags([("--out", args.out)])
    if args.out:
        return Path(args.out)
    if spec is not None and spec.out:
        return Path(spec.out)
    return Path(DEFAULT_OUT)


def _run(args) -> int:
    from .spec import load_spec
    from .sweep import run_sweep

    if args.num_cpus is not None and args.num_cpus < 1:
        raise ValueError(f"Expected --num-cpus >= 1, but got {args.num_cpus}.")
    joins = ("--address" if args.address else
             "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") and not args.dry_run else None)
    if args.num_cpus is not None and joins:  # it sizes a Ray this command starts: ignored there
        raise ValueError(f"Expected --num-cpus only for the local Ray `sweep run` starts, but "
                         f"{joins} joins a running cluster, whose CPUs are its own; leave "
                         "--num-cpus out (or lower the spec's resources: num_cpus).")
    spec = load_spec(args.spec)
    out = _out(args, spec)
    if args.dry_run:
        from .spec import Folders
        from .store import ResultStore
        from .sweep import _damaged, _moved, _previous_records

        folders = Folders()  # each folder listed once, as a run does
        jobs = spec.jobs(folders)
        store = ResultStore(out)
        spec.check_out(out)
        store.check_folder()  # as the run would: a folder of the user's files is no --out
        writable_folder(out, "the results folder (--out)", keep=False)  # as the run would
        before = _previous_records(store, jobs)  # what the run reads of them: not their tables
        states = {jid: rec.get("status") for jid, rec in before.items() if rec}
        # finished, but on other images: moved, changed or unstamped (measured again)
        states.update(_moved(before, jobs, folders))
        states.update((j.id, "damaged") for j in _damaged(store, jobs, before))  # measured again
        kept = store.shard_files()  # by name: the run checks that they still fit
        print(f"{spec.name}: {len(jobs)} jobs -> {out}")
        for job in jobs:
            n = _kept(kept, job.id, job.shards)
            print(f"  {job.id}  {states.get(job.id, 'pending'):9s}  {job.title}  "
                  f"(shards {job.shards}{f', {n} kept' if n else ''}, cpus {job.num_cpus:g}, "
                  f"gpus {job.num_gpus:g})")
        return 0
    result = run_sweep(spec, out=out, address=args.address, retry_failed=not args.no_retry_failed,
                       num_cpus=args.num_cpus, progress=not args.quiet,
                       echo=lambda line: print(line, file=sys.stderr, flush=True))  # stdout: results
    if result.failures:
        print(f"{len(result.failures)} job(s) failed; their errors are in {out}/records and "
              f"{out}/jobs.csv. Rerun the same command to retry them.", file=sys.stderr)
    return 0 if result.complete else 1


def _kept(kept: dict, job_id: str, shards) -> int:
    """How many shards of ``job_id``'s number of ``shards`` ``ResultStore.shard_files`` lists."""
    return sum(1 for _, k, _ in kept.get(job_id, []) if k == shards)


def _sweep_store(args):
    """The :class:`ResultStore` of ``--out``; ``FileNotFoundError`` where the folder is no
    sweep's (a user's folder was a sweep of 0 jobs, "unknown", or one with none finished)."""
    from .store import ResultStore

    store = ResultStore(_out(args))
    if not store.is_store():
        what = ("holds no sweep's files (spec.json, status.json, records/)" if store.root.is_dir()
                else "is a file, not a folder" if store.root.exists() else "does not exist")
        raise FileNotFoundError(f"Expected a sweep results folder, but {str(store.root)!r} {what}; "
                                "pass the sweep's --out.")
    return store


def _status(args) -> int:
    store = _sweep_store(args)
    states = store.states()  # each record's head read once for the counts and the damaged ones
    counts = store.counts(states=states)
    live = store.read_status() or {}
    total = sum(counts.values())
    state = store.state()
    unreadable = store.unreadable(states)
    if args.json:
        print(json.dumps({"out": str(store.root), "total": total, **counts, "state": state,
                          "unreadable": [p.name for p in unreadable]}))
        return 0
    if state == "stopped":
        state = (f"stopped (its driver, pid {live.get('pid')} on {live.get('host')}, is gone; "
                 "rerun the sweep to go on)")
    print(f"{live.get('sweep', store.root.name)} ({store.root}): {state or 'unknown'}")
    print(f"  finished {counts['finished']}/{total}, running {counts['running']}, "
          f"failed {counts['failed']}, pending {counts['pending']}")
    if unreadable:  # said nowhere: a damaged record's job was simply pending
        names = ", ".join(p.name for p in unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        print(f"  {len(unreadable)} record file(s) in {store.records_dir} cannot be read (damaged?): "
              f"{names}; their jobs count as pending, and the next run measures them again")
    saved = store.read_spec()
    ours = set(saved["jobs"]) if saved else None  # an earlier spec's failures are not counted
    running, retried = store.live_ids(states)  # being run again: not failed (yet)
    kept = store.shard_files()
    # a failed record has no tables: its head (read for the counts) is all of it
    for rec in (store.head_of(jid) for jid in sorted(states) if states[jid] == "failed"):
        if rec is None or (ours is not None and rec["id"] not in ours) or rec["id"] in running | retried:
            continue
        job = rec.get("job", {})
        n = _kept(kept, rec["id"], job.get("shards"))
        print(f"  failed {rec['id']} {job.get('model', {}).get('label')} / "
              f"{job.get('dataset', {}).get('label')} / {job.get('family')} / seed {job.get('seed')}: "
              f"{rec.get('error')}"
              + (f" ({n} of {job.get('shards')} shards kept for the rerun)" if n else ""))
    return 0


_REPORT_FLAGS = {"metric": "--metric", "accuracy": "--accuracy", "min_models": "--min-models"}


def _report(args) -> int:
    import pandas as pd

    from .analysis import sweep_figures

    if args.min_models < 2:  # said as the flag, not as sweep_figures' argument
        raise ValueError(f"Expected --min-models to be an integer >= 2 (Spearman's correlation "
                         f"needs two models at least), but got {args.min_models}.")
    out = _sweep_store(args).root
    check_path_flags([("--figures", args.figures)])
    figures = Path(args.figures) if args.figures else out / "figures"
    with warnings.catch_warnings(record=True) as caught:  # one line each, not Python's format
        warnings.simplefilter("always", UserWarning)
        try:
            files = sweep_figures(out, figures, metric=args.metric, accuracy=args.accuracy,
                                  min_models=args.min_models)
        except ValueError as err:  # said as the flags, not as sweep_figures' arguments
            raise ValueError(as_flags(str(err), _REPORT_FLAGS)) from err
    with pd.option_context("display.width", 160, "display.precision", 3):
        for table, what in ((files["tables"][1], "top-1 accuracy"),
                            (files["tables"][2], "the final part's score (invariance)")):
            # a row per transform set and metric, as the file has them (pivot_table averaged
            # what its index left out, or made rows of combinations that do not exist)
            keys = ["dataset", "metric", "transforms", "family", "score"]
            # the names as the file has them: read_csv made a dataset 'NA' or a family 'None'
            # NaN, and a column of names '1' beside them floats ('1.0')
            rows = pd.read_csv(table, dtype={k: str for k in keys + ["part"]},
                               keep_default_na=False, na_values={"spearman": [""]})
            wide = (rows.set_index(keys + ["part"])["spearman"].unstack("part")
                    .reindex(pd.MultiIndex.from_frame(rows[keys].drop_duplicates())))
            wide = wide[[p for p in ("early", "middle", "late", "pool", "final") if p in wide.columns]]
            print(f"Spearman rank correlation of part scores with {what}, across models:")
            print(wide.to_string())
    print("wrote " + ", ".join(str(p) for p in files["tables"] + files["figures"]))
    for w in dict.fromkeys(str(w.message) for w in caught):  # last, where they are seen
        print(f"equifast sweep: warning: {w}", file=sys.stderr)
    return 0


def add_sweep_parser(subparsers, run_prog: Optional[str] = None) -> argparse.ArgumentParser:
    """Add ``sweep run | status | report`` to an argparse subparsers object.

    ``run_prog`` names ``run`` in its usage line where it is reached another way (a Ray job's
    entry point).
    """
    p = subparsers.add_parser(
        "sweep", help="measure many models on Ray (run, status, report)",
        description="Sweeps over models, datasets, transform families and seeds, on a laptop or a "
                    "Ray cluster; every job's result is stored once, and a rerun skips finished jobs.")
    sub = p.add_subparsers(dest="sweep_command", metavar="SWEEP_COMMAND")
    run = sub.add_parser("run", prog=run_prog, help="run every unfinished job of a spec",
                         description="Validate a sweep spec, then run every job without a "
                                     "finished record on Ray; results go to --out, and a rerun "
                                     "skips finished jobs.", formatter_class=HelpFormatter,
                         epilog="exit status: 0 every job finished; 1 some jobs failed (their "
                                "errors are in `sweep status`; a rerun retries them); 2 a bad "
                                "spec or option; 130 interrupted (finished jobs are kept).")
    run.add_argument("spec", type=os.path.expanduser, help="sweep spec (YAML, or JSON in a .json file); see distributed/examples/")
    run.add_argument("--out", type=os.path.expanduser, default=None, help="results folder (default: the spec's 'out', else runs/sweep)")
    run.add_argument("--address", default=None,
                     help="Ray cluster address ('auto', 'ray://head:10001', 'host:6379') "
                          "(default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    run.add_argument("--no-retry-failed", action="store_true", help="leave jobs that failed before alone")
    run.add_argument("--dry-run", action="store_true", help="validate and list the jobs, run nothing")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(func=_run)
    status = sub.add_parser("status", help="counts of finished, running, failed and pending jobs",
                            description="Count a sweep's finished, running, failed and pending "
                                        "jobs (while it runs, or after) and list the failed ones "
                                        "with their errors.", formatter_class=HelpFormatter)
    status.add_argument("folder", nargs="?", type=os.path.expanduser, default=None, metavar="OUT",
                        help="results folder, as --out")
    status.add_argument("--out", type=os.path.expanduser, default=None, help="results folder (default: runs/sweep)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)
    report = sub.add_parser("report", help="figures 8, 11-13 (parts per model and shift; Spearman with accuracy)",
                            description="Draw figures 8 and 11-13 of a sweep's finished jobs "
                                        "(scores per part and model, and per shift; their "
                                        "Spearman correlation with top-1 accuracy) and write "
                                        "their tables.",
                            formatter_class=HelpFormatter)
    report.add_argument("folder", nargs="?", type=os.path.expanduser, default=None, metavar="OUT",
                        help="results folder, as --out")
    report.add_argument("--out", type=os.path.expanduser, default=None, help="results folder (default: runs/sweep)")
    report.add_argument("--figures", type=os.path.expanduser, default=None, help="where figures go (default: OUT/figures)")
    report.add_argument("--metric", default="auto",
                        help="the equivariance metric whose scores are drawn (default auto: "
                             "correlation, or the one metric the sweep measured)")
    report.add_argument("--accuracy", default="auto", choices=["auto", "known", "measured"],
                        help="measured: top-1 on the data's labels; known: the spec's accuracy; "
                             "auto: measured when the data had labels, else known")
    report.add_argument("--min-models", type=int, default=3,
                        help="fewer models with an accuracy give NaN (at least 2)")
    report.set_defaults(func=_report)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1], _sweep_parser=p)
    return p


def main(argv: Optional[List[str]] = None, run_prog: Optional[str] = None) -> int:
    """Run ``equifast sweep`` with ``argv`` (``["run", "spec.yaml", "--out", "runs/x"]``).

    Returns the exit status: 0 success, 1 some jobs failed, 2 a usage or spec error.
    """
    tolerant_output()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="equifast")
    add_sweep_parser(parser.add_subparsers(dest="command"), run_prog=run_prog)
    args = parser.parse_args(["sweep"] + argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # stdout's reader left (`| head`): what was written is kept
        return closed_pipe()
    except (ValueError, OSError, RuntimeError, ModuleNotFoundError) as err:  # OSError: --out a
        # file, unwritable, ...; ModuleNotFoundError: Ray not installed
        print(f"equifast sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the finished jobs' records are kept: a rerun skips them
        print("equifast sweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

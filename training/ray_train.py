"""Train a recipe data-parallel with Ray Train (``ray.train.torch.TorchTrainer``).

Every worker runs the same loop as :func:`equifast.training.train` under
``torch.distributed`` (gloo on CPU, NCCL on GPUs) set up by Ray:

- the model is wrapped in ``DistributedDataParallel`` (plain per-worker batch norm);
- a ``DistributedSampler`` (seeded with the recipe seed, ``set_epoch`` each epoch) gives
  each worker its share; the per-worker batch is ``batch_size // num_workers``, so the
  global batch stays the recipe's, and so does the learning rate. The sampler pads the
  permutation to a multiple of the workers with copies of its first images: the copies weigh
  0 in the loss and the metrics, and each step's images are weighed so that DDP's mean of
  the workers' gradients is the mean over the global batch's images (as in one process), so
  every image counts once an epoch;
- test metrics are summed over workers' disjoint shares, so they cover the test set once;
  they are computed with rank 0's batch-norm statistics (those saved), on the plain model;
- one worker trains as :func:`~equifast.training.train` does, bitwise so when that process
  uses one thread (``torch.set_num_threads(1)``: Ray gives a 1-CPU worker one thread);
- rank 0 writes ``checkpoint.pt``, ``metrics.csv``, ``tb/``, ``model.pt`` and
  ``result.json`` in ``out_dir``, in the same format as a single-process run (the
  checkpoint holds every worker's RNG states and devices, so a run resumes with the same
  number of workers exactly; on another number, or another kind of device, the driver warns
  that it will not be bitwise), and each epoch's row is also passed to ``ray.train.report``;
- Ctrl-C stops the workers (Ray Train's handler) and raises ``KeyboardInterrupt``; a worker
  that dies (killed, out of memory) ends the run with Ray Train's error. Either way the folder
  keeps the last finished epoch's checkpoint, from which a rerun resumes.

``out_dir`` must be reachable by every worker (a local folder on one machine, a shared
file system on a cluster).
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Dict, Optional

import torch

from equifast._hints import import_optional
from equifast.warning import warn

from .recipes import Recipe
from .trainer import (CHECKPOINT, TrainResult, _datasets, _fit, _load_checkpoint,
                      _device_record, _result_from_dir, _will_train, prepare_out_dir,
                      _warn_if_resumed_otherwise, run_lock)

__all__ = ["train_ray"]


def _worker_loop(config: Dict) -> None:
    import ray.train
    import ray.train.torch

    recipe = Recipe.from_dict(config["recipe"])
    device = ray.train.torch.get_device() if config["use_gpu"] else None
    if device is None:
        device = torch.device("cpu")

    fail = config.get("fail_after_epoch")  # tests: a worker dying after an epoch

    def report(epoch: int, row: Dict) -> None:
        ray.train.report({k: v for k, v in row.items()})
        if epoch == fail and ray.train.get_context().get_world_rank() == config.get("fail_rank", 0):
            if config.get("fail_with") == "exit":  # killed (the OOM killer): no Python error
                os._exit(1)
            error = OSError if config.get("fail_with") == "OSError" else RuntimeError
            raise error(f"injected failure after epoch {epoch}")

    _fit(recipe, config["out_dir"], callback=report, device=device)


def train_ray(recipe: Recipe, out_dir: str, num_workers: int = 2, use_gpu: bool = False,
              resume: bool = True, overwrite: bool = False,
              resources_per_worker: Optional[Dict[str, float]] = None,
              storage_path: Optional[str] = None, _fail: Optional[Dict] = None) -> TrainResult:
    """Train ``recipe`` on ``num_workers`` Ray Train workers; files as in :func:`train`.

    Uses the Ray this process is connected to, else the cluster ``RAY_ADDRESS`` names (as
    under ``ray job submit``; ``RAY_ADDRESS=auto`` joins a ``ray start`` cluster on this
    machine), else starts a local Ray of its own with this machine's CPUs and GPUs.

    Args:
        recipe: what to train.
        out_dir: run folder, shared by all workers.
        num_workers: data-parallel workers (``ScalingConfig(num_workers=...)``).
        use_gpu: one GPU per worker (NCCL); otherwise CPU with gloo. A recipe's ``device``, if
            set, must agree (``cuda`` with ``use_gpu``, ``cpu`` without).
        resume: continue an unfinished run in ``out_dir``.
        overwrite: delete a previous run in ``out_dir`` first.
        resources_per_worker: e.g. ``{"CPU": 1}`` (Ray's default when ``None``).
        storage_path: Ray Train's own run storage (default: ``out_dir/ray``).
        _fail: tests only: ``{"fail_after_epoch": e, "fail_rank": r}`` makes worker ``r``
            raise a RuntimeError (an OSError with ``"fail_with": "OSError"``, or exit at once
            with ``"exit"``) after epoch ``e``'s checkpoint.

    Returns:
        The :class:`~equifast.training.trainer.TrainResult` read back from ``out_dir``.

    Raises:
        ValueError: ``recipe.device`` disagrees with ``use_gpu``; or the local cluster it
            would start has fewer CPUs or GPUs than the workers need (checked before anything
            starts: Ray Train would wait for them for ever); for a running cluster, which may
            autoscale, this is a warning.
        Exception: a worker's own error (an ``OSError`` of a full disk, ...) when the workers
            failed alike, its cause Ray Train's ``TrainingFailedError``, which is raised
            itself otherwise.
        KeyboardInterrupt: Ctrl-C, once Ray Train has stopped the workers (the checkpoint of
            the last finished epoch is kept; a rerun resumes from it). Ray Train's own handler
            of Ctrl-C is removed when this returns.

    Example:
        >>> import ray
        >>> from equifast.training import get_recipe, train_ray
        >>> ray.init(num_cpus=2)  # doctest: +SKIP
        >>> recipe = get_recipe("cnn7-fmnist6", epochs=1)
        >>> train_ray(recipe, "runs/ddp", num_workers=2).test_acc  # doctest: +SKIP
    """
    check_workers(recipe, num_workers, use_gpu)
    import_optional("ray.train.torch", "distributed", "Training on Ray Train workers (--workers N, --gpu)")
    import ray
    from ray.train import RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = _scaling(int(num_workers), use_gpu, resources_per_worker)
    if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
        ray.init()  # the cluster RAY_ADDRESS names (as under `ray job submit`)
    local = None if ray.is_initialized() else _local_resources()
    # before the run folder is touched (--overwrite deletes): Ray Train waits forever, retrying
    # the worker group, for resources the cluster does not have. A running cluster may grow
    # (distributed/cluster.yaml autoscales from 0 workers): there it is a warning.
    _check_resources(scaling, ray.cluster_resources() if local is None else local,
                     can_grow=local is None)
    out_dir = os.path.abspath(out_dir)
    # Workers run elsewhere: they need absolute data paths.
    if recipe.data_root:
        recipe = recipe.replace(data_root=os.path.abspath(os.path.expanduser(recipe.data_root)))
    if local is not None and _will_train(out_dir, overwrite):
        # A local cluster shares this machine's files: the data is found (or fetched) here
        # first, so a missing root fails with its own message before workers start, not wrapped
        # in a Ray Train worker error, and before --overwrite deletes the old run. (On a
        # cluster the data may be on the workers only.)
        _datasets(recipe)
    with run_lock(out_dir):  # the driver's: the workers write into the folder it holds
        done = prepare_out_dir(recipe, out_dir, resume=resume, overwrite=overwrite)
        if done is not None:
            return done
        if local is not None:
            # address="local": a `ray start` cluster on this machine is not joined (it refuses
            # num_cpus), as documented for sweeps
            ray.init(address="local", num_cpus=int(local["CPU"]), num_gpus=int(local["GPU"]))
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"recipe": recipe.to_dict(), "out_dir": out_dir, "use_gpu": use_gpu,
                               **(_fail or {})},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=scaling,
            run_config=RunConfig(name=f"equifast-{recipe.name}",
                                 storage_path=storage_path or os.path.join(out_dir, "ray")),
        )
        ckpt, start = Path(out_dir, CHECKPOINT), 0
        if ckpt.is_file():
            state = _load_checkpoint(ckpt, recipe=recipe)
            start = state["epoch"]
            # the workers' GPUs are not known here: their kind only
            device = {"device": "cuda", "name": None} if use_gpu else _device_record(torch.device("cpu"))
            _warn_if_resumed_otherwise(Path(out_dir), state, [device] * int(num_workers),
                                      int(num_workers), recipe)
            del state
        main = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main else None
        try:
            trainer.fit()
        except SystemExit:
            # Ray Train's Ctrl-C handler aborts the workers, then calls sys.exit(0): the command
            # ended without a word (status 1, or 0 as if finished). It stops as interrupted runs do.
            raise KeyboardInterrupt(f"training {out_dir!r} on Ray Train was interrupted") from None
        except Exception as err:  # Ray Train's TrainingFailedError (its module moved across versions)
            cause = _worker_error(err)
            if cause is None:
                raise
            raise cause from err  # Ray's report of every worker, tracebacks and all, is its cause
        finally:
            # Ray Train leaves its handler: a later Ctrl-C (a study measuring) called sys.exit(0)
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
        return _result_from_dir(Path(out_dir), resumed_from=start)


def check_workers(recipe: Recipe, num_workers: int, use_gpu: bool = False) -> None:
    """Raise ``ValueError`` unless ``num_workers`` (>= 1) Ray Train workers can share the
    recipe's batch equally, and the recipe's ``device``, if set, agrees with ``use_gpu``
    (checked by :func:`train_ray`, and by a study for all its runs before it starts any)."""
    if int(num_workers) < 1:
        raise ValueError(f"Expected `num_workers` to be >= 1, but got {num_workers!r}.")
    if recipe.batch_size % int(num_workers):
        raise ValueError(f"Expected the recipe's batch size ({recipe.batch_size}) to be divisible "
                         f"by `num_workers` ({num_workers}): each worker trains on an equal share "
                         f"of it. Use {_divisors(recipe.batch_size, int(num_workers))} workers.")
    if recipe.device is not None:  # Ray places the workers: use_gpu says where, not the recipe
        kind = torch.device(recipe.device).type
        if (kind == "cuda") != bool(use_gpu):
            raise ValueError(
                f"Expected use_gpu={kind == 'cuda'} (--gpu {'given' if kind == 'cuda' else 'left out'}) "
                f"for the recipe's device {recipe.device!r}: Ray workers train on "
                f"{'a GPU each' if use_gpu else 'CPUs'} with use_gpu={bool(use_gpu)}. Leave the "
                "device unset (--device) to let use_gpu decide.")


def _worker_error(err) -> Optional[BaseException]:
    """The error the workers raised, as a single-process run would have raised it (the
    ``equifast`` command then prints a full disk or bad data in one line, as without Ray): the
    one failure, or the same one on every failed worker, or the first bad input or OS error
    (the others then are its consequences: a peer gone from an all-reduce); ``None`` when
    Ray's own error says more (several different failures, or a controller error)."""
    failures = [e for _, e in sorted(getattr(err, "worker_failures", {}).items())]
    if not failures:
        return None
    if len({(type(e), str(e)) for e in failures}) == 1:
        return failures[0]
    return next((e for e in failures if isinstance(e, (ValueError, OSError))), None)


def _local_resources() -> Dict[str, float]:
    """The CPUs and GPUs of a local Ray cluster started by :func:`train_ray`."""
    from equifast.data import usable_cpus

    return {"CPU": float(usable_cpus()), "GPU": float(torch.cuda.device_count())}


def _scaling(num_workers: int, use_gpu: bool = False, resources_per_worker=None):
    """Ray Train's ``ScalingConfig`` of ``num_workers`` workers, with nothing reserved beside
    them: Ray Train before its V2 (2.50 still) reserves a CPU for its driver actor, which only
    coordinates, so n workers did not fit n CPUs; V2 reserves none (and deprecates the option)."""
    from ray.train import ScalingConfig

    scaling = ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                            resources_per_worker=resources_per_worker)
    per = scaling._resources_per_worker_not_none  # Ray Train's own default (CPU 1 or GPU 1)
    if scaling.total_resources != {k: num_workers * v for k, v in per.items() if v}:
        scaling = ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                resources_per_worker=resources_per_worker,
                                trainer_resources={"CPU": 0})
    return scaling


def _check_resources(scaling, available: Dict[str, float], can_grow: bool = False) -> None:
    """Raise ValueError when the Ray cluster (``available``: its total resources) cannot hold
    the trainer and all workers of ``scaling`` (a ``ray.train.ScalingConfig``) at once; only
    warn when the cluster ``can_grow`` (a running cluster may autoscale)."""
    need = scaling.total_resources
    short = {k: v for k, v in need.items() if v > available.get(k, 0) + 1e-9}
    if short:
        per = scaling._resources_per_worker_not_none  # Ray Train's own default (CPU 1 or GPU 1)
        have = ", ".join(f"{available.get(k, 0):g} {k}" for k in short)
        what = (f"the Ray cluster to have the resources of {scaling.num_workers} workers "
                f"({', '.join(f'{v:g} {k}' for k, v in per.items())} each: "
                f"{', '.join(f'{need[k]:g} {k}' for k in short)} in all), but it has {have}")
        if not can_grow:
            raise ValueError(f"Expected {what}; use fewer workers (--workers) or a larger cluster.")
        warn(f"Expected {what} now; Ray Train waits until an autoscaling cluster adds "
                      "them (stop it otherwise: it waits for ever).")


def _divisors(n: int, near: int) -> str:
    """Worker counts that divide ``n``, the two closest to ``near``."""
    ds = sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - near), d))
    return " or ".join(map(str, sorted(ds[:2])))

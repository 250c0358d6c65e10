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
  that dies (killed, out of memory) ends the run with :class:`WorkerDiedError`, which names
  the worker and the last epoch saved. Either way the folder keeps the last finished epoch's
  checkpoint, from which a rerun resumes. Ray Train's controller's output and a worker's
  traceback of its error are left out of the driver's stderr (Ray's session logs keep them):
  a failure printed about a hundred lines of them before the run's one-line error.

``out_dir`` must be reachable by every worker (a local folder on one machine, a shared
file system on a cluster).
"""
from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from equifast._checks import check_integer
from equifast._hints import import_optional
from equifast.warning import warn

from .recipes import Recipe
from .trainer import (CHECKPOINT, TrainResult, _damaged, _datasets, _fit, _load_checkpoint,
                      _device_record, _result_from_dir, _will_train, check_run_args,
                      prepare_out_dir, _warn_if_resumed_otherwise, run_lock, start_lines)

__all__ = ["train_ray", "WorkerDiedError"]

# The local Ray that train_ray started in this process: {"node": its GCS address and node id (a
# Ray started again may take the same port), "resources": what it was given}. A later run (a
# study's next one) uses it as its own, not as a cluster it joined, which may autoscale.
_OWN_RAY: Dict[str, object] = {}


class WorkerDiedError(ChildProcessError):
    """A Ray Train worker's process died (killed by a signal, the out-of-memory killer, a
    crash), so the run stopped; the run folder keeps the last epoch saved, from which the same
    call (command) resumes. An ``OSError``: the ``equifast`` command prints it in one line.

    Attributes:
        ranks: the ranks of the workers that died (empty when Ray Train reported only the
            others, which lost their connection to it).
        epoch: the last epoch saved (0: none).
    """

    def __init__(self, message: str, ranks: Tuple[int, ...] = (), epoch: int = 0):
        super().__init__(message)
        self.ranks, self.epoch = tuple(ranks), epoch

    def __reduce__(self):
        return type(self), (str(self), self.ranks, self.epoch)


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

    _quiet_worker_errors()
    _fit(recipe, config["out_dir"], callback=report, device=device)


# What Ray Train's loggers say of a failed run on stderr that the run's error says itself
_TRAIN_FUNCTION_ERROR = "Error in training function"


class _DropTrainFunctionError:
    """A logging filter of Ray Train's worker console handler: the traceback Ray Train logs
    of the worker's error (dozens of lines on the driver's stderr, beside a dead peer's gloo
    error) is the run's error or its cause; Ray's log files keep it."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(_TRAIN_FUNCTION_ERROR)


def _quiet_worker_errors() -> None:
    """Filter Ray Train's console logging of this worker's error (see above); its reports of
    each epoch (INFO) are kept. Called in the worker, once Ray Train configured its logging."""
    import logging

    for handler in logging.getLogger("ray.train").handlers:
        if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                and not any(isinstance(f, _DropTrainFunctionError) for f in handler.filters)):
            handler.addFilter(_DropTrainFunctionError())


# Ray's driver prints what its workers and actors write through this handler of its dispatcher
_PRINT_LOGS = "ray_print_logs"


def _without_controller_output() -> None:
    """Leave out of this process's stderr what Ray Train's controller actor writes: setting up
    the worker group, and on a failure its report of every worker's error, tracebacks and all,
    then the same again of its shutdown (about 140 lines before the run's one-line error, which
    holds it as its cause); Ray's session logs keep it. The workers' lines (each epoch's
    report) are printed as before. For the rest of the process (the controller's last lines
    come after the run ended); again after a new ``ray.init``, which adds Ray's handler anew.
    Nothing where Ray's driver does not print its workers' output this way."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    handler = next((h for name, h in list(getattr(dispatcher, "handlers", ()))
                    if name == _PRINT_LOGS), None)
    if handler is None or getattr(handler, "_equifast_quiet", False):
        return

    def printed(data) -> None:
        if data.get("actor_name") != "TrainController":
            handler(data)

    printed._equifast_quiet = True
    if not (callable(getattr(dispatcher, "remove_handler", None))
            and callable(getattr(dispatcher, "add_handler", None))):
        return  # Ray's private API changed in another version: its output stays as it is
    dispatcher.remove_handler(_PRINT_LOGS)
    dispatcher.add_handler(_PRINT_LOGS, printed)


def train_ray(recipe: Recipe, out_dir: str, num_workers: int = 2, use_gpu: bool = False,
              resume: bool = True, overwrite: bool = False,
              resources_per_worker: Optional[Dict[str, float]] = None,
              storage_path: Optional[str] = None, _fail: Optional[Dict] = None,
              say: Optional[Callable[[str], None]] = None,
              on_overwrite: Optional[Callable[[], None]] = None) -> TrainResult:
    """Train ``recipe`` on ``num_workers`` Ray Train workers; files as in :func:`train`.

    Uses the Ray this process is connected to, else the cluster ``RAY_ADDRESS`` names (as
    under ``ray job submit``; ``RAY_ADDRESS=auto`` joins a ``ray start`` cluster on this
    machine), else starts a local Ray of its own with this machine's CPUs and GPUs, which the
    later runs of this process (a study's) use as their own too.

    Args:
        recipe: what to train.
        out_dir: run folder, shared by all workers.
        num_workers: data-parallel workers (``ScalingConfig(num_workers=...)``).
        use_gpu: one GPU per worker (NCCL); otherwise CPU with gloo. A recipe's ``device``, if
            set, must agree (``cuda`` with ``use_gpu``, ``cpu`` without).
        resume: continue an unfinished run in ``out_dir``.
        overwrite: delete a previous run in ``out_dir`` first.
        resources_per_worker: e.g. ``{"CPU": 1}`` (Ray's default when ``None``).
        storage_path: Ray Train's own run storage (default: ``out_dir/ray``): a URI
            (``s3://...``) or a folder, relative to the working directory as ``out_dir``.
        say: where the lines of :func:`~equifast.training.trainer.start_lines` go, once the
            workers' resources (and, on a local Ray, the data) are found.
        on_overwrite: with ``overwrite``, called once those are found and the run is locked,
            just before the old run is deleted (as :func:`~equifast.training.trainer.train`).
        _fail: tests only: ``{"fail_after_epoch": e, "fail_rank": r}`` makes worker ``r``
            raise a RuntimeError (an OSError with ``"fail_with": "OSError"``, or exit at once
            with ``"exit"``) after epoch ``e``'s checkpoint.

    Returns:
        The :class:`~equifast.training.trainer.TrainResult` read back from ``out_dir``.

    Raises:
        TypeError: ``recipe`` is no :class:`Recipe` (a name), or ``out_dir`` no path (as
            :func:`train`).
        ValueError: ``recipe.device`` disagrees with ``use_gpu``; or the local cluster it
            would start (or started for an earlier run), or the one this process started
            itself (``ray.init()``), has fewer CPUs or GPUs than the workers need (checked
            before anything starts: Ray Train would wait for them for ever); for a running
            cluster joined, which may autoscale, this is a warning.
        WorkerDiedError: a worker's process died (killed, out of memory); its message names
            the worker and the last epoch saved, its cause is Ray Train's error.
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
    # as train's: a recipe's name failed in check_workers with an AttributeError, and "" was
    # made absolute to the working directory, which the workers then trained into
    check_run_args(recipe, out_dir)
    check_workers(recipe, num_workers, use_gpu)
    # before the run folder is touched (--overwrite deletes)
    scaling, local, here = check_cluster(int(num_workers), use_gpu, resources_per_worker)
    import ray
    from ray.train import RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers run elsewhere: they need absolute paths (what is said and returned keeps the
    # user's own, as train's).
    given, out_dir = out_dir, os.path.abspath(out_dir)
    storage_path = _storage(storage_path, out_dir)
    if recipe.data_root:
        recipe = recipe.replace(data_root=os.path.abspath(os.path.expanduser(recipe.data_root)))
    if here and _will_train(out_dir, overwrite):
        # A local cluster (its own, or one the caller started) shares this machine's files: the
        # data is found (or fetched) here first, so a missing root fails with its own message
        # before workers start, not wrapped in a Ray Train worker error, and before --overwrite
        # deletes the old run. (On a cluster joined the data may be on the workers only.)
        _datasets(recipe)
    for line in start_lines(recipe, given, overwrite, resume) if say is not None else ():
        say(line)
    with run_lock(out_dir):  # the driver's: the workers write into the folder it holds
        if overwrite and on_overwrite is not None:
            on_overwrite()
        done = prepare_out_dir(recipe, given, resume=resume, overwrite=overwrite)
        if done is not None:
            return done
        if local is not None and not ray.is_initialized():
            # address="local": a `ray start` cluster on this machine is not joined (it refuses
            # num_cpus), as documented for sweeps
            ray.init(address="local", num_cpus=int(local["CPU"]), num_gpus=int(local["GPU"]))
            _OWN_RAY.update(node=_ray_node(), resources=local)
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"recipe": recipe.to_dict(), "out_dir": out_dir, "use_gpu": use_gpu,
                               **(_fail or {})},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=scaling,
            run_config=RunConfig(name=f"equifast-{recipe.name}",
                                 storage_path=storage_path),
        )
        start = _resume_check(Path(given), recipe, int(num_workers), use_gpu)
        _without_controller_output()
        main = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main else None
        try:
            trainer.fit()
        except SystemExit:
            # Ray Train's Ctrl-C handler aborts the workers, then calls sys.exit(0): the command
            # ended without a word (status 1, or 0 as if finished). It stops as interrupted runs do.
            raise KeyboardInterrupt(f"training {given!r} on Ray Train was interrupted") from None
        except Exception as err:  # Ray Train's TrainingFailedError (its module moved across versions)
            cause = _worker_error(err, Path(given), recipe, int(num_workers))
            if cause is None:
                raise
            raise cause from err  # Ray's report of every worker, tracebacks and all, is its cause
        finally:
            # Ray Train leaves its handler: a later Ctrl-C (a study measuring) called sys.exit(0)
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
        return _result_from_dir(Path(given), resumed_from=start)


def check_workers(recipe: Recipe, num_workers: int, use_gpu: bool = False) -> None:
    """Raise ``ValueError`` unless ``num_workers`` (>= 1) Ray Train workers can share the
    recipe's batch equally, and the recipe's ``device``, if set, agrees with ``use_gpu``
    (checked by :func:`train_ray`, and by a study for all its runs before it starts any)."""
    # int() took 2.5 as 2 workers and True as 1 without a word
    num_workers = check_integer("`num_workers`", num_workers, 1)
    if recipe.batch_size % num_workers:
        raise ValueError(f"Expected the recipe's batch size ({recipe.batch_size}) to be divisible "
                         f"by `num_workers` ({num_workers}): each worker trains on an equal share "
                         f"of it. Use {_divisors(recipe.batch_size, num_workers)} workers.")
    if recipe.device is not None:  # Ray places the workers: use_gpu says where, not the recipe
        kind = torch.device(recipe.device).type
        if (kind == "cuda") != bool(use_gpu):
            raise ValueError(
                f"Expected use_gpu={kind == 'cuda'} (--gpu {'given' if kind == 'cuda' else 'left out'}) "
                f"for the recipe's device {recipe.device!r}: Ray workers train on "
                f"{'a GPU each' if use_gpu else 'CPUs'} with use_gpu={bool(use_gpu)}. Leave the "
                "device unset (--device) to let use_gpu decide.")


def check_cluster(num_workers: int, use_gpu: bool = False,
                  resources_per_worker: Optional[Dict[str, float]] = None):
    """Raise ``ValueError`` when the Ray :func:`train_ray` would use cannot hold
    ``num_workers`` workers (only warn for a running cluster, which may autoscale): Ray Train
    waits for ever, retrying the worker group, for resources the cluster does not have.
    Checked by :func:`train_ray`, and by a study before it claims its folder.

    Returns:
        ``(scaling, local, here)``: the ``ScalingConfig``, the resources of the local Ray
        :func:`train_ray` starts or started (``None`` for another), and whether the Ray is this
        machine's alone, of a fixed size.
    """
    import_optional("ray.train.torch", "distributed", "Training on Ray Train workers (--workers N, --gpu)")
    import ray

    scaling = _scaling(num_workers, use_gpu, resources_per_worker)
    if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
        ray.init()  # the cluster RAY_ADDRESS names (as under `ray job submit`)
    # the local Ray an earlier run started (a study's first) is this machine's, as before
    local = _own_ray_resources() if ray.is_initialized() else _local_resources()
    # this machine's alone, of a fixed size: that one, or one the caller started (ray.init())
    here = local is not None or _started_here()
    # distributed/cluster.yaml autoscales from 0 workers: there too few is a warning
    _check_resources(scaling, ray.cluster_resources() if local is None else local,
                     can_grow=not here)
    return scaling, local, here


def _resume_check(out: Path, recipe: Recipe, num_workers: int, use_gpu: bool) -> int:
    """The epochs ``out``'s checkpoint holds (0: none), warning when the workers resume it
    otherwise than it was trained. Its tensors are mapped, not read: the driver needs a few
    small fields, not the model and optimiser state (gigabytes for a large model)."""
    ckpt = out / CHECKPOINT
    if not ckpt.is_file():
        return 0
    state = _load_checkpoint(ckpt, recipe=recipe, mmap=True)
    # the workers' GPUs are not known here: their kind only
    device = {"device": "cuda", "name": None} if use_gpu else _device_record(torch.device("cpu"))
    _warn_if_resumed_otherwise(out, state, [device] * num_workers, num_workers, recipe)
    return int(state["epoch"])


def _own_ray_resources() -> Optional[Dict[str, float]]:
    """The resources of the Ray this process is connected to when :func:`train_ray` started
    it (a local Ray of its own); ``None`` for any other (joined, or started by the caller)."""
    if _OWN_RAY and _ray_node() == _OWN_RAY["node"]:
        return dict(_OWN_RAY["resources"])
    return None


def _started_here() -> bool:
    """Whether the Ray this process is connected to is one it started (``ray.init()`` without
    a cluster's address, as in :func:`train_ray`'s example): a local instance of the size it was
    given, which no autoscaler grows (a cluster joined, or Ray Client, is not)."""
    try:
        from ray._private import worker
    except ImportError:  # Ray's private API changed in another version: taken as a cluster
        return False
    return getattr(getattr(worker, "_global_node", None), "head", False) is True


def _ray_node() -> Tuple[str, str]:
    """The GCS address and node id of the Ray this process is connected to."""
    import ray

    context = ray.get_runtime_context()
    return context.gcs_address, context.get_node_id()


def _died(error: BaseException) -> Optional[str]:
    """How a worker's failure says its process died (``"out of memory"``, ``"killed"``), or
    ``None`` when it is an error of its own (Python's, or a consequence: a peer gone)."""
    import ray.exceptions as rex

    seen = set()
    while error is not None and id(error) not in seen:  # Ray Train wraps Ray's error
        seen.add(id(error))
        if isinstance(error, rex.OutOfMemoryError):
            return "out of memory: Ray's memory monitor killed it"
        if isinstance(error, rex.RayActorError) and getattr(error, "actor_init_failed", False):
            # its constructor raised (Ray Train's controller refusing a storage_path it cannot
            # open): a Python error, which Ray's names, not a process killed
            return None
        if isinstance(error, (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError)):
            return "killed by a signal, or out of memory?"
        error = getattr(error, "health_check_failure", None) or error.__cause__
    return None


def _worker_error(err, out: Optional[Path] = None, recipe: Optional[Recipe] = None,
                  workers: Optional[int] = None) -> Optional[BaseException]:
    """The error the workers raised, as a single-process run would have raised it (the
    ``equifast`` command then prints a full disk or bad data in one line, as without Ray): a
    :class:`WorkerDiedError` when a worker's process died (the others' errors are then its
    consequences; or only the others' gloo errors of a peer gone are reported), else the one
    failure, or the same one on every failed worker, or the first bad input or OS error (the
    others then are its consequences: a peer gone from an all-reduce); ``None`` when Ray's own
    error says more (several different failures, or a controller error). ``out``, ``recipe`` and ``workers`` (the run's) name the last epoch
    saved and the workers (Ray Train reports the failed ones only)."""
    ranked = sorted(getattr(err, "worker_failures", {}).items())
    dead = {rank: how for rank, how in ((r, _died(e)) for r, e in ranked) if how}
    if not ranked and _died(err):  # Ray Train before V2: the actor's error, no ranks
        dead = {None: _died(err)}
    if dead:
        return _died_error(dead, out, recipe, workers)
    if ranked and all(_PEER_LOST.search(str(e)) for _, e in ranked):
        # Ray Train saw the survivors' gloo error before the health check of the dead worker
        return _died_error({}, out, recipe, workers, lost=[r for r, _ in ranked])
    failures = [e for _, e in ranked]
    if not failures:
        return None
    if len({(type(e), str(e)) for e in failures}) == 1:
        return failures[0]
    return next((e for e in failures if isinstance(e, (ValueError, OSError))), None)


# gloo's error in a worker whose peer's process is gone (a CPU run's all-reduce or broadcast)
_PEER_LOST = re.compile(r"gloo.*Connection (closed|reset) by peer", re.S)


def _died_error(dead: Dict[Optional[int], str], out: Optional[Path], recipe: Optional[Recipe],
                world: Optional[int], lost: Sequence[int] = ()) -> WorkerDiedError:
    """:class:`WorkerDiedError` for the workers ``dead`` (rank: how) of a run of ``world``; or,
    with no ``dead``, for a worker the workers ``lost`` (ranks) lost their connection to."""
    epoch, unread = 0, None
    try:  # a checkpoint that cannot be read must not hide why the run stopped
        if out is not None and (out / CHECKPOINT).is_file():
            epoch = int(_load_checkpoint(out / CHECKPOINT, mmap=True)["epoch"])
    except (ValueError, OSError) as err:  # damaged (read_run_file's ValueError), unreadable
        unread = str(err)
    except (KeyError, TypeError) as err:  # read, but no epoch in it
        unread = str(_damaged(out / CHECKPOINT, err))
    of = f" (of {world})" if world else ""

    def workers(ranks):
        return (f"Ray Train workers {', '.join(map(str, ranks))}{of}" if len(ranks) > 1 else
                f"Ray Train worker {ranks[0]}{of}")

    ranks = sorted(r for r in dead if r is not None)
    if dead:
        what = (f"{workers(ranks) if ranks else 'A Ray Train worker'} died "
                f"({'; '.join(dict.fromkeys(dead.values()))})")
    else:
        what = (f"{workers(sorted(lost))} lost {'their' if len(lost) > 1 else 'its'} connection "
                "to another worker, whose process died (killed by a signal, or out of memory?) or "
                "failed")
    total = f" of {recipe.epochs}" if recipe is not None else ""
    kept = (f"the run folder keeps epoch {epoch}{total}: rerun the same command to resume from it"
            if epoch else "no epoch was saved: rerun the same command to start it again")
    if unread is not None:
        kept = f"no epoch saved that could be read: {unread.rstrip('.')}"
    return WorkerDiedError(f"{what}, so the run stopped; {kept}.", ranks, epoch)


def _storage(storage_path, out_dir: str) -> str:
    """Ray Train's ``storage_path`` for a run in ``out_dir`` (absolute): a URI as it is, a
    folder made absolute, as ``out_dir`` is. Ray Train reads a path through pyarrow, which
    refuses a relative one ("URI has empty scheme") in the controller: the run ended in a
    :class:`WorkerDiedError` that blamed a worker killed or out of memory."""
    if not storage_path:
        return os.path.join(out_dir, "ray")
    storage_path = os.fspath(storage_path)
    return storage_path if "://" in storage_path else os.path.abspath(os.path.expanduser(storage_path))


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

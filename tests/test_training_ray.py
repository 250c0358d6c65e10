"""Ray Train data-parallel training on CPU (two gloo workers in a local Ray instance).

About 35 s on 2 cores, most of it starting Ray and the worker group: the one real
distributed training run of the suite, so it stays in CI.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.train.torch")

from equifast.training import get_recipe  # noqa: E402
from equifast.training.data import FASHION_MNIST_ROOT  # noqa: E402
from equifast.training.ray_train import train_ray  # noqa: E402
from equifast.training.trainer import start_lines  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION_MNIST_ROOT,
                                                       "train-images-idx3-ubyte.gz")),
                       reason="Fashion-MNIST idx files not found"),
]


def test_nothing_is_reserved_beside_the_workers():
    # Ray Train before V2 (2.50 too) reserved a CPU for its driver actor: n workers did not fit
    # n CPUs; on every version the workers' own resources are the whole request
    from equifast.training.ray_train import _scaling
    assert _scaling(3).total_resources == {"CPU": 3}
    assert _scaling(2, resources_per_worker={"CPU": 2}).total_resources == {"CPU": 4}


def test_too_many_workers_for_a_local_cluster_fail_before_ray_starts(tmp_path, monkeypatch):
    # Ray Train would retry starting the worker group forever (WorkerGroupStartupTimeoutError)
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the local-cluster path is not taken")
    from equifast.training import ray_train
    monkeypatch.setattr(ray_train, "_local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    said = []  # a line on the schedule of a run that never started came before the error
    with pytest.raises(ValueError, match=r"4 workers \(1 CPU each: 4 CPU in all\), but it has 2 CPU;"):
        train_ray(recipe, str(tmp_path / "run"), num_workers=4, say=said.append)
    assert said == []
    with pytest.raises(ValueError, match=r"2 workers \(1 GPU each: 2 GPU in all\), but it has 0 GPU;"):
        train_ray(get_recipe("cnn7-fmnist6", epochs=1), str(tmp_path / "run"), num_workers=2,
                  use_gpu=True)
    assert not ray.is_initialized() and not (tmp_path / "run").exists()  # nothing started or made


def test_a_study_with_too_many_workers_fails_before_it_claims_its_folder(tmp_path, monkeypatch):
    # the check ran in the first run's train_ray: study.json was written by then, and the
    # folder, now another study's, refused the rerun with another study name
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the local-cluster path is not taken")
    from equifast.training import ray_train, run_study
    monkeypatch.setattr(ray_train, "_local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    out = tmp_path / "study"
    with pytest.raises(ValueError, match=r"4 workers \(1 CPU each: 4 CPU in all\), but it has 2 CPU;"):
        run_study("objective-fashion", str(out), seeds=[0], workers=4,
                  overrides={"epochs": 1, "device": None})
    assert not out.exists() and not ray.is_initialized()


def test_overwrite_keeps_the_old_run_when_the_data_is_missing(tmp_path, monkeypatch):
    # the local data check came after --overwrite had deleted the finished run
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the local-cluster path is not taken")
    from test_training import _finished_run
    from equifast.training import ray_train
    monkeypatch.setattr(ray_train, "_local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    before = _finished_run(tmp_path / "run", recipe)
    with pytest.raises(FileNotFoundError):
        train_ray(recipe.replace(data_root=str(tmp_path / "missing")), str(tmp_path / "run"),
                  num_workers=2, overwrite=True)
    assert {p.name: p.read_text() for p in (tmp_path / "run").iterdir()} == before
    assert not ray.is_initialized()


def test_the_recipes_device_must_agree_with_use_gpu(tmp_path):
    # the workers trained on CPUs while recipe.json said cuda
    for device, use_gpu in (("cuda", False), ("cuda:1", False), ("cpu", True)):
        with pytest.raises(ValueError, match=rf"use_gpu={not use_gpu} .*device {device!r}"):
            train_ray(get_recipe("cnn7-fmnist6", device=device), str(tmp_path / "run"),
                      use_gpu=use_gpu)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [2.5, True, 0, "2"])
def test_a_worker_count_that_is_no_integer_is_refused(tmp_path, workers):
    # int() took 2.5 as 2 workers and True as 1, without a word
    with pytest.raises(ValueError, match=rf"^Expected `num_workers` to be an integer >= 1, but got "
                                         rf"{re.escape(repr(workers))}\.$"):
        # no data: the old code, which took 2.5 as 2 workers, stopped there, not training
        train_ray(get_recipe("cnn7-fmnist6", data_root=str(tmp_path / "no-data")),
                  str(tmp_path / "run"), num_workers=workers)
    assert not (tmp_path / "run").exists()
    # a NumPy count is a count: the batch's divisors are still named from it
    with pytest.raises(ValueError, match=r"divisible by `num_workers` \(3\).*Use 2 or 4 workers"):
        train_ray(get_recipe("cnn7-fmnist6"), str(tmp_path / "run"), num_workers=np.int64(3))


def test_train_ray_says_what_it_takes_as_train_does(tmp_path, monkeypatch):
    # a recipe's name: "'str' object has no attribute 'batch_size'"; "" was made absolute to
    # the working directory, which the workers then trained into (train refuses both)
    from equifast.training import ray_train, train
    monkeypatch.setattr(ray_train, "_local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    monkeypatch.chdir(tmp_path)
    for recipe, out in (("cnn7-fmnist6", "run"),
                        # no data: the old code stopped there, before training into tmp_path
                        (get_recipe("cnn7-fmnist6", data_root=str(tmp_path / "no-data")), "")):
        with pytest.raises(TypeError) as single:
            train(recipe, out)
        with pytest.raises(TypeError) as workers:
            train_ray(recipe, out, num_workers=2)
        assert str(workers.value) == str(single.value)
    assert list(tmp_path.iterdir()) == []


def test_study_gpu_flag_reaches_ray_train(tmp_path, monkeypatch):
    # `equifast study --gpu` trained every run without use_gpu
    from equifast.training import cli, ray_train

    class Asked(Exception):
        pass

    def fake(recipe, out, **kwargs):
        raise Asked(kwargs)

    monkeypatch.setattr(ray_train, "train_ray", fake)
    # no GPU here: the study's check of the cluster is another test's
    monkeypatch.setattr(ray_train, "check_cluster", lambda *args, **kwargs: None)
    for extra in ([], ["--workers", "2"]):
        with pytest.raises(Asked) as asked:
            cli.main(["study", "objective-fashion", "--out", str(tmp_path / "s"), "--gpu", *extra])
        assert asked.value.args[0]["use_gpu"] is True


def test_a_local_ray_is_the_runs_own_even_beside_a_running_cluster(tmp_path, monkeypatch):
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the local-cluster path is not taken")
    from equifast.training import ray_train

    class Started(Exception):
        pass

    def init(**kwargs):  # what train_ray asks of Ray, and no further
        raise Started(kwargs)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_train, "_local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    with pytest.raises(Started) as started:
        train_ray(get_recipe("cnn7-fmnist6", epochs=1, device="cpu"), str(tmp_path / "run"),
                  num_workers=2)
    # address=None would join a `ray start` cluster on the machine, which refuses num_cpus
    assert started.value.args[0] == {"address": "local", "num_cpus": 2, "num_gpus": 0}


@pytest.mark.slow  # about 30 s: starts Ray for a run of one worker
def test_a_later_run_uses_the_local_ray_an_earlier_one_started_as_its_own(tmp_path, monkeypatch):
    # a study's second --workers run took the Ray its first had started for a running cluster,
    # which may autoscale: too many workers were a warning, then Ray Train waited for ever
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the local-cluster path is not taken")
    from equifast.training import ray_train
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_train, "_local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=8, device="cpu")
    try:
        said = []
        assert train_ray(recipe, str(tmp_path / "first"), num_workers=1, say=said.append).epochs == 1
        assert said == ["the learning rate stays at 0.01: milestones [25, 50] lie past the last "
                        "epoch (1); --milestones shortens the schedule"]
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"4 workers \(1 CPU each: 4 CPU in all\), but it "
                                                 r"has 2 CPU; use fewer workers"):
                train_ray(recipe.replace(seed=1), str(tmp_path / "second"), num_workers=4)
        assert not (tmp_path / "second").exists()
        # a Ray the caller started is not the runs' own, even when it is local
        ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        assert ray_train._own_ray_resources() is None
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_overwrite_keeps_the_old_run_when_the_data_is_missing_on_a_ray_the_caller_started(
        tmp_path, local_ray):
    # ray.init(num_cpus=2) (train_ray's example) runs the workers on this machine too, but the
    # data was only looked for by the workers: after --overwrite had deleted the finished run
    from test_training import _finished_run
    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    before = _finished_run(tmp_path / "run", recipe)
    with pytest.raises(FileNotFoundError):
        train_ray(recipe.replace(data_root=str(tmp_path / "missing")), str(tmp_path / "run"),
                  num_workers=2, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(before)
    assert {p.name: p.read_text() for p in (tmp_path / "run").iterdir()} == before


def test_two_worker_run_writes_single_process_format(tmp_path, local_ray, monkeypatch):
    # 999 images: DistributedSampler pads each worker's share with a copy of an image, which
    # was trained on and counted twice (the accuracy was a count over 1000)
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=999, test_subset=500,
                        device="cpu")
    sigint = signal.getsignal(signal.SIGINT)
    result = train_ray(recipe, str(tmp_path), num_workers=2)
    # Ray Train's Ctrl-C handler outlived the run: a later Ctrl-C (measuring) called sys.exit(0)
    assert signal.getsignal(signal.SIGINT) is sigint
    # the run's files, Ray Train's storage, and nothing half written
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt", "metrics.csv", "model.pt", "ray", "recipe.json", "result.json", "tb"]
    acc = result.metrics[0]["train_acc"] * 999
    assert abs(acc - round(acc)) < 1e-6, acc
    for name in ("checkpoint.pt", "metrics.csv", "model.pt", "result.json", "recipe.json"):
        assert (tmp_path / name).is_file(), name
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc",
                                     "lr", "seconds"]
    assert metrics["epoch"].tolist() == [1]
    assert result.epochs == 1 and result.test_acc > 1 / 6  # above chance after one epoch
    assert json.loads((tmp_path / "result.json").read_text())["test_acc"] == result.test_acc
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2 and ckpt["epoch"] == 1
    assert ckpt["devices"] == [{"device": "cpu", "name": "cpu"}] * 2
    # the weights load into the plain model (no DDP "module." prefix)
    from equifast.training.trainer import load_model
    load_model(str(tmp_path))
    # a finished run is reused without starting workers, and said by the path given (as
    # train's; its workers alone need it absolute)
    monkeypatch.chdir(tmp_path.parent)
    said = []
    again = train_ray(recipe, tmp_path.name, num_workers=2, say=said.append)
    assert again.test_acc == result.test_acc and again.out_dir == tmp_path.name
    assert said == start_lines(recipe, tmp_path.name) and repr(tmp_path.name) in said[0]


def test_a_workers_error_reaches_the_command_as_itself(tmp_path, local_ray):
    # a full disk on a worker reached `equifast train --workers N` as Ray's multi-line
    # TrainingFailedError (a traceback, not an error line); now as the OSError it is

    recipe = get_recipe("cnn7-fmnist6", epochs=2, train_subset=32, test_subset=8, device="cpu")
    with pytest.raises(OSError, match="^injected failure after epoch 1$") as raised:
        train_ray(recipe, str(tmp_path / "run"), num_workers=1,
                  _fail={"fail_after_epoch": 1, "fail_with": "OSError"})
    assert "Training failed due to worker errors" in str(raised.value.__cause__)


def test_a_relative_storage_path_is_taken_from_the_working_directory(tmp_path, local_ray,
                                                                     monkeypatch):
    # Ray Train's controller refused it ("URI has empty scheme"), and the run ended in a
    # WorkerDiedError that blamed a worker killed or out of memory
    monkeypatch.chdir(tmp_path)
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=8, device="cpu")
    result = train_ray(recipe, "run", num_workers=1, storage_path="store")
    assert result.epochs == 1 and (tmp_path / "run" / "result.json").is_file()
    # Ray Train's records where the path names, none beside the run
    assert (tmp_path / "store" / f"equifast-{recipe.name}").is_dir()
    assert not (tmp_path / "run" / "ray").exists()


def test_a_controller_that_fails_to_start_is_not_said_to_be_a_dead_worker(tmp_path, local_ray):
    # Ray Train's controller refused the storage (its constructor raised): the run ended in a
    # WorkerDiedError that blamed a worker killed or out of memory, and a rerun failed alike
    from equifast.training.ray_train import WorkerDiedError
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=8, device="cpu")
    with pytest.raises(Exception) as raised:
        train_ray(recipe, str(tmp_path / "run"), num_workers=1, storage_path="nosuch://store")
    assert not isinstance(raised.value, WorkerDiedError)
    assert "nosuch" in str(raised.value)  # Ray's error names pyarrow's


def test_the_workers_error_chosen_is_the_cause_not_its_consequences():
    from equifast.training.ray_train import _worker_error

    class Failed(Exception):  # Ray Train's WorkerGroupError carries each rank's error like this
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors: ...")
            self.worker_failures = failures

    peer, disk = RuntimeError("Connection closed by peer"), OSError(28, "No space left on device")
    assert _worker_error(Failed({1: disk, 0: peer})) is disk  # rank 0 lost its peer
    same = [RuntimeError("CUDA out of memory"), RuntimeError("CUDA out of memory")]
    assert _worker_error(Failed(dict(enumerate(same)))) is same[0]
    assert _worker_error(Failed({0: peer, 1: RuntimeError("another")})) is None  # Ray's says more
    assert _worker_error(RuntimeError("controller")) is None


def _actor_death() -> BaseException:
    """Ray's own error for an actor whose process exited (as a killed worker's)."""
    @ray.remote(num_cpus=0)
    class Worker:
        def die(self):
            os._exit(1)

    with pytest.raises(ray.exceptions.RayActorError) as died:
        ray.get(Worker.remote().die.remote())
    return died.value


def test_a_dead_worker_is_said_in_one_line_with_the_epoch_kept(tmp_path, local_ray):
    # a worker's process killed (the OOM killer) reached `equifast train --workers N` as Ray
    # Train's WorkerGroupError: every worker's report, tracebacks and all, and no word of
    # what was kept. The errors here are Ray's own: an actor whose process exits
    from ray.train import WorkerGroupError
    health = pytest.importorskip("ray.train.v2._internal.exceptions")
    from equifast.training.ray_train import WorkerDiedError, _worker_error
    from equifast.training.trainer import train

    died = _actor_death()
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=8, device="cpu")
    train(recipe, str(tmp_path / "run"))  # a checkpoint of epoch 1 (of 3, below)
    recipe = recipe.replace(epochs=3)
    peer = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")
    err = WorkerGroupError("[Rank 0 Error Snippet]: ...", {
        0: peer, 1: health.WorkerHealthCheckFailedError("A worker health check failed.",
                                                         failure=died)})
    said = _worker_error(err, tmp_path / "run", recipe, 2)
    assert isinstance(said, WorkerDiedError) and isinstance(said, OSError)  # the command: a line
    assert str(said) == ("Ray Train worker 1 (of 2) died (killed by a signal, or out of memory?), "
                         "so the run stopped; the run folder keeps epoch 1 of 3: rerun the same "
                         "command to resume from it.")
    assert said.ranks == (1,) and said.epoch == 1
    # Ray Train reports the failed workers only: of 3, two died
    err = WorkerGroupError("...", {0: died, 2: died})
    assert str(_worker_error(err, tmp_path / "none", recipe, 3)) == (
        "Ray Train workers 0, 2 (of 3) died (killed by a signal, or out of memory?), so the run "
        "stopped; no epoch was saved: rerun the same command to start it again.")
    # Ray Train may see the survivors' gloo errors before the dead worker's health check: as
    # gloo words them (from real runs), they were a RuntimeError's traceback at the command
    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:{}] {} by peer. "
            "This is typically caused by a remote worker crashing. Check the logs of the remote "
            "worker before reporting an error. GLHF!")
    for line, text in ((561, "Connection closed"), (545, "Read error [127.0.0.1]:18854: "
                                                         "Connection reset")):
        err = WorkerGroupError("...", {0: RuntimeError(gloo.format(line, text))})
        said = _worker_error(err, tmp_path / "run", recipe, 2)
        assert isinstance(said, WorkerDiedError) and str(said) == (
            "Ray Train worker 0 (of 2) lost its connection to another worker, whose process died "
            "(killed by a signal, or out of memory?) or failed, so the run stopped; the run folder "
            "keeps epoch 1 of 3: rerun the same command to resume from it.")
        assert said.ranks == () and said.epoch == 1
    # the workers' own errors are still themselves
    disk = OSError(28, "No space left on device")  # rank 0's; rank 1 then lost its peer
    assert _worker_error(WorkerGroupError("...", {0: disk, 1: peer}), tmp_path / "run", recipe,
                         2) is disk


def test_a_dead_worker_is_said_so_beside_a_checkpoint_that_cannot_be_read(tmp_path, local_ray):
    # reading the epoch kept for the message raised "run file damaged" in place of the
    # WorkerDiedError: why the run stopped was lost
    from ray.train import WorkerGroupError
    from equifast.training.ray_train import WorkerDiedError, _worker_error
    from equifast.training.trainer import CHECKPOINT

    died = _actor_death()
    err = WorkerGroupError("[Rank 1 Error Snippet]: ...", {1: died})
    recipe, run = get_recipe("cnn7-fmnist6", epochs=3), tmp_path / "run"
    run.mkdir()
    torch.save({"epoch": 2, "model": {"w": torch.zeros(1000)}}, run / CHECKPOINT)
    said = _worker_error(err, run, recipe, 2)  # the intact file: its epoch
    assert isinstance(said, WorkerDiedError) and said.epoch == 2 and "keeps epoch 2 of 3" in str(said)
    head = ("Ray Train worker 1 (of 2) died (killed by a signal, or out of memory?), so the run "
            "stopped; no epoch saved that could be read: Could not read the run file "
            f"{str(run / CHECKPOINT)!r} (")
    (run / CHECKPOINT).write_bytes((run / CHECKPOINT).read_bytes()[:300])  # a cut copy
    said = _worker_error(err, run, recipe, 2)
    assert isinstance(said, WorkerDiedError) and said.ranks == (1,) and said.epoch == 0
    assert str(said).startswith(head) and str(said).endswith(
        "): it is damaged. Restore it, or train the run again with --overwrite (overwrite=True).")
    torch.save({"model": {}}, run / CHECKPOINT)  # read, but holds no epoch
    said = _worker_error(err, run, recipe, 2)
    assert isinstance(said, WorkerDiedError) and said.epoch == 0
    assert str(said).startswith(head + "KeyError: 'epoch'): it is damaged.")


def test_the_driver_maps_the_checkpoint_rather_than_reading_it(tmp_path):
    # the driver read the whole checkpoint (weights and optimiser state: gigabytes for a large
    # model) for its epoch and a few small fields; measured by the peak resident memory
    import re
    from equifast.training.ray_train import _resume_check
    from equifast.training.trainer import CHECKPOINT, train

    def peak_mib():
        return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) // 1024

    try:
        with open("/proc/self/clear_refs", "w") as f:  # resets the peak (Linux 4.0 on)
            f.write("5")
    except OSError:
        pytest.skip("the peak resident memory cannot be reset here")
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=8, device="cpu")
    run = tmp_path / "run"
    train(recipe, str(run))
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    ckpt["optimizer"]["state"][0]["exp_avg"] = torch.ones(32 * 2**20)  # 128 MiB
    torch.save(ckpt, run / CHECKPOINT)
    del ckpt
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = peak_mib()
    with pytest.warns(UserWarning, match=r"on 2 worker\(s\), its epochs so far on 1"):
        assert _resume_check(run, recipe, 2, False) == 1
    assert peak_mib() - before < 32, peak_mib() - before  # of a 128 MiB optimiser state


def test_too_many_workers_for_a_ray_this_process_started_fail_before_anything(tmp_path,
                                                                           local_ray):
    # ray.init(num_cpus=2) (train_ray's example) was taken for a cluster that may autoscale:
    # a warning, then Ray Train waited for the workers for ever
    cpus = ray.cluster_resources()["CPU"]
    workers = int(cpus) * 2
    recipe = get_recipe("cnn7-fmnist6", epochs=1, batch_size=8 * workers, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old warning ends the test rather than the wait
        with pytest.raises(ValueError, match=rf"{workers} workers \(1 CPU each: {workers} CPU in "
                                             rf"all\), but it has {cpus:g} CPU; use fewer"):
            train_ray(recipe, str(tmp_path / "run"), num_workers=workers)
    assert not (tmp_path / "run").exists()


def test_too_many_workers_for_a_running_cluster_is_a_warning(local_ray):
    # a running cluster may autoscale (distributed/cluster.yaml starts with 0 workers), so what
    # it lacks now is said, not refused; the check reads the real cluster's resources
    from equifast.training.ray_train import _check_resources, _scaling
    cpus = ray.cluster_resources()["CPU"]
    workers = int(cpus) + 2
    with pytest.warns(UserWarning, match=rf"{workers} workers \(1 CPU each: {workers} CPU in all\), "
                                         rf"but it has {cpus:g} CPU now; Ray Train waits"):
        _check_resources(_scaling(workers), ray.cluster_resources(), can_grow=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_resources(_scaling(int(cpus)), ray.cluster_resources(), can_grow=True)


@pytest.mark.slow  # about 70 s: three Ray runs
def test_an_interrupted_ray_run_resumes_to_the_uninterrupted_one(tmp_path, local_ray, same_run):
    # a worker dies after epoch 1 (here rank 1: rank 0 waits in the next epoch's all-reduce
    # until Ray stops the group); one test image for two workers: rank 1 scores none, and
    # DDP's forward, which broadcasts rank 0's buffers, left both ranks waiting for ever
    recipe = get_recipe("cnn7-fmnist6-rot-eq", epochs=2, train_subset=257, test_subset=1,
                        device="cpu")
    straight = train_ray(recipe, str(tmp_path / "straight"), num_workers=2)
    with pytest.raises(RuntimeError, match="^injected failure after epoch 1$"):
        train_ray(recipe, str(tmp_path / "crashed"), num_workers=2,
                  _fail={"fail_after_epoch": 1, "fail_rank": 1})
    assert not (tmp_path / "crashed" / "result.json").exists()
    resumed = train_ray(recipe, str(tmp_path / "crashed"), num_workers=2)
    assert resumed.resumed_from == 1 and resumed.epochs == 2
    same_run(tmp_path / "straight", tmp_path / "crashed")
    for row in straight.metrics:  # 257 images counted once each, the one test image once
        for k in ("train_acc", "train_rot_acc"):
            assert abs(row[k] * 257 - round(row[k] * 257)) < 1e-6, (k, row)
        assert row["test_acc"] in (0.0, 1.0) and row["test_rot_acc"] in (0.0, 1.0)


@pytest.mark.slow  # about 20 s: a Ray run of two workers
def test_a_diverging_ray_run_stops_on_every_worker_with_the_error_itself(tmp_path, local_ray):
    # every worker sees the ranks' first non-finite step (all-reduced) and the same weights,
    # so all stop at the same step of the same epoch, in its first steps (a rank stopping alone
    # would leave the other waiting in DDP's all-reduce); the driver gets the error as a single
    # process does, with its epoch and step
    from equifast.training import TrainingDivergedError

    recipe = get_recipe("cnn7-fmnist6", optimizer="sgd", lr=1e8, momentum=0.9, epochs=2,
                        train_subset=1024, test_subset=64, batch_size=16, device="cpu")
    with pytest.raises(TrainingDivergedError, match="^Training diverged in epoch 1 of 2") as err:
        train_ray(recipe, str(tmp_path / "run"), num_workers=2)
    assert err.value.epoch == 1 and 1 <= err.value.step <= 10  # of 64 steps (8 images a worker)
    assert f"from step {err.value.step} of 64; stopped at step {err.value.step})" in str(err.value)
    failures = err.value.__cause__.worker_failures  # Ray's error, the cause
    assert len(failures) == 2 and len({str(e) for e in failures.values()}) == 1
    assert not any((tmp_path / "run" / n).exists() for n in ("checkpoint.pt", "model.pt",
                                                              "result.json"))


@pytest.mark.slow  # about 40 s: a Ray run of two workers, one killed, resumed on one
def test_a_killed_worker_stops_the_run_which_resumes_on_other_workers_with_a_warning(
        tmp_path, local_ray):
    # a worker process gone (the OOM killer) while the other waits in the next epoch's
    # all-reduce: Ray Train stops the group (no hang) and the folder keeps epoch 1, which the
    # error says in one line (it was Ray Train's report of every worker, tracebacks and all)
    from equifast.training.ray_train import WorkerDiedError
    from equifast.training.trainer import CHECKPOINT
    recipe = get_recipe("cnn7-fmnist6", epochs=2, train_subset=96, test_subset=32, batch_size=32,
                        device="cpu")
    run = tmp_path / "run"
    with pytest.raises(WorkerDiedError) as died:
        train_ray(recipe, str(run), num_workers=2,
                  _fail={"fail_after_epoch": 1, "fail_rank": 1, "fail_with": "exit"})
    assert str(died.value) == ("Ray Train worker 1 (of 2) died (killed by a signal, or out of "
                               "memory?), so the run stopped; the run folder keeps epoch 1 of 2: "
                               "rerun the same command to resume from it.")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.csv", "ray",
                                                     "recipe.json", "tb"]
    assert torch.load(run / CHECKPOINT, weights_only=True)["epoch"] == 1
    # the warning was a worker's, in its log only; the driver says it now
    with pytest.warns(UserWarning, match=r"on 1 worker\(s\), its epochs so far on 2 \(resume "
                                         r"with 2 for an exact continuation\)"):
        resumed = train_ray(recipe, str(run), num_workers=1)
    assert resumed.resumed_from == 1 and resumed.epochs == 2


@pytest.mark.slow  # about 60 s: `equifast train --workers 2` started, interrupted
def test_ctrl_c_of_a_ray_run_exits_130_and_keeps_its_last_epoch(tmp_path):
    # Ray Train's Ctrl-C handler stops the workers, then calls sys.exit(0): the command ended
    # with status 1 and no word, not as an interrupted command (130, "equifast: interrupted")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "equifast", "train", "cnn7-fmnist6", "--workers", "2",
         "--epochs", "50", "--subset", "512", "--test-subset", "32", "--batch-size", "32",
         "--device", "cpu", "--out", str(run)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoint.pt").is_file() and proc.poll() is None:
            assert time.monotonic() < deadline, "no epoch finished in 300 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "equifast: interrupted" in err
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoint.pt", "metrics.csv", "ray", "recipe.json", "tb"], names
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert 1 <= ckpt["epoch"] < 50
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(1, ckpt["epoch"] + 1))


_DYING_RUN = """
import sys
from equifast.training import get_recipe
from equifast.training.ray_train import WorkerDiedError, train_ray
recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=64, test_subset=16, device="cpu")
try:
    train_ray(recipe, sys.argv[1], num_workers=2,
              _fail={"fail_after_epoch": 1, "fail_rank": 1, "fail_with": "exit"})
except WorkerDiedError as err:
    print("equifast:", err, file=sys.stderr)
"""


def test_a_dying_ray_run_prints_its_epochs_and_its_error_not_ray_trains_report(tmp_path):
    # about 25 s: a Ray run of two workers, one killed after its first epoch. Its stderr was
    # about 105 lines, Ray Train's controller's report of the failure (twice, tracebacks and
    # all) and the survivor's traceback of its lost peer, about the one-line error
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-c", _DYING_RUN, str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300)
    # Ray Train's PlacementGroupCleaner logs a traceback where two Ray instances run on one
    # machine (this run's beside the module's local_ray): Ray's own error, not this report
    lines = [line for line in proc.stderr.splitlines() if "PlacementGroupCleaner" not in line]
    said = [line for line in lines if line.startswith("equifast: ")]
    assert len(said) == 1 and said[0].startswith("equifast: Ray Train worker 1 (of 2) died "), lines
    # what the README says a Ray run prints: Ray Train's report of each epoch, by its worker
    assert any("RayTrainWorker" in line and "Reporting training result 1" in line
               for line in lines), lines
    assert not [line for line in lines if "TrainController" in line
                or "Error in training function" in line or "Traceback" in line], lines
    assert len(lines) < 15, lines

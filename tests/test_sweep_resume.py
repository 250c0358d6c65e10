"""Sweeps resume a job of several shards: a rerun measures only the shards that did not finish.

Each finished shard of an unfinished job is kept in the store (``shards/<id>.<i>-of-<k>.pt``)
until the job's record is written; a rerun reuses the kept shards that still fit the job (its
number of shards, this equifast, torch, timm and torchvision, the same images) and merges them in shard order,
as an uninterrupted run does.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

ray = pytest.importorskip("ray")

from equifast.distributed import ResultStore, job_record, load_spec, measure_job, run_sweep  # noqa: E402
from equifast.distributed import store as store_mod  # noqa: E402
from equifast.distributed import sweep as sweep_mod  # noqa: E402
from equifast.distributed.cli import main as sweep_main  # noqa: E402
from equifast._io import json_safe  # noqa: E402


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)


def _folder(root: Path) -> Path:
    """8 PNGs in two class folders: shard 0 of 2 is class0's 4 images, shard 1 class1's."""
    for i in range(8):
        _png(root / f"class{i % 2}" / f"{i}.png", i)
    return root


def _spec(folder: Path, **over) -> dict:
    spec = {"name": "resume", "models": [{"name": "resnet10t", "weights": "none", "num_classes": 2}],
            "datasets": [{"name": "tiny", "path": str(folder), "image_size": 32}],
            "transforms": {"translation": "translation:1-2"}, "metrics": ["correlation", "cosine"],
            "n_images": 8, "batch_size": 4, "shards": 2, "resources": {"num_cpus": 1},
            "max_retries": 0}
    spec.update(over)
    return spec


def _ran(marker_dir: Path):
    """A hook that leaves a file for each shard a task measures (pickled by value)."""
    def hook(job, shard, attempt):
        (Path(marker_dir) / f"{job.id}.{shard}.{attempt}").touch()
    return hook


def _measured(marker_dir: Path) -> list:
    return sorted(int(p.name.split(".")[1]) for p in marker_dir.iterdir())


def _same_results(a: dict, b: dict) -> None:
    """Two ok records of one job hold the same numbers (the JSON of full precision floats)."""
    for key in ("points", "parts", "n_images", "accuracy", "accuracy_measured", "id"):
        assert a[key] == b[key], key
    assert a["meta"]["accuracy"] == b["meta"]["accuracy"]


def test_a_rerun_measures_only_the_shard_that_failed_and_equals_a_one_shot_run(ray_session, tmp_path,
                                                                               capsys):
    # a real bad input: shard 0's slice holds an image that is no PNG; shard 1 finishes
    folder = _folder(tmp_path / "data")
    bad = folder / "class0" / "2.png"
    bad.write_bytes(b"this is no image")
    spec = _spec(folder)
    (job,) = load_spec(spec).jobs()
    out, first, second = tmp_path / "out", tmp_path / "ran1", tmp_path / "ran2"
    first.mkdir(), second.mkdir()
    lines = []
    result = run_sweep(spec, out=out, before_job=_ran(first), echo=lines.append)
    assert (result.finished, result.failed) == (0, 1) and _measured(first) == [0, 1]
    store = ResultStore(out)
    rec = store.get(job.id)
    assert rec["status"] == "failed" and "2.png' to be a readable image" in rec["error"], rec["error"]
    assert sorted(store.shard_files()) == [job.id]
    assert [(s, k) for s, k, _ in store.shard_files()[job.id]] == [(1, 2)]
    kept = store.read_shard(job.id, 1, 2)
    assert kept["info"]["shard"] == 1 and kept["info"]["n_images"] == 4
    store.check_folder()  # shards/ is the store's own
    assert sweep_main(["status", "--out", str(out)]) == 0
    assert "(1 of 2 shards kept for the rerun)" in capsys.readouterr().out
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    assert sweep_main(["run", str(spec_file), "--out", str(out), "--dry-run"]) == 0
    assert "(shards 2, 1 kept," in capsys.readouterr().out

    _png(bad, 2)  # the image fixed: shard 1's images are the same, so its result is reused
    lines.clear()
    again = run_sweep(spec, out=out, before_job=_ran(second), echo=lines.append)
    assert again.complete and again.ran == 1
    assert _measured(second) == [0]  # only the shard that did not finish
    rec = store.get(job.id)
    assert rec["status"] == "ok" and rec["reused_shards"] == [1] and rec["n_images"] == 8
    infos = rec["timings"]["shards"]
    assert [i["shard"] for i in infos] == [0, 1]
    assert infos[1] == json.loads(json.dumps({**kept["info"], "reused": True}))  # as kept
    assert "reused" not in infos[0] and infos[0]["started_at"] > kept["info"]["finished_at"]
    assert infos[0]["n_images"] == 4 and rec["total_attempts"] == 2
    assert any("1 of 2 shards kept from an earlier run; measuring the other 1" in line
               for line in lines), lines
    assert store.shard_files() == {} and list(store.shards_dir.iterdir()) == []

    # an uninterrupted run of the fixed data: the same numbers
    once = run_sweep(spec, out=tmp_path / "once", progress=False)
    assert once.complete
    one = ResultStore(tmp_path / "once").get(job.id)
    assert one["reused_shards"] == []
    _same_results(rec, one)
    jobs = store.tables()["jobs"]
    assert list(jobs["status"]) == ["ok"] and list(jobs["n_images"]) == [8]


def test_a_killed_shard_is_the_only_one_measured_again(ray_session, tmp_path):
    # the worker of shard 1 dies (no retries left); shard 0's result is kept for the rerun
    folder = _folder(tmp_path / "data")
    spec = _spec(folder, datasets=[{"name": "noise", "kind": "random", "image_size": 32}],
                 transforms={"rotation": "rotation:90"})
    (job,) = load_spec(spec).jobs()
    markers = tmp_path / "markers"
    markers.mkdir()

    def crash_shard_1(job, shard, attempt):
        marker = Path(markers) / f"crashed.{shard}"
        if shard == 1 and not marker.exists():
            marker.touch()
            import os
            os._exit(1)

    out = tmp_path / "out"
    result = run_sweep(spec, out=out, before_job=crash_shard_1, progress=False)
    assert result.failed == 1
    store = ResultStore(out)
    assert [(s, k) for s, k, _ in store.shard_files()[job.id]] == [(0, 2)]
    ran = tmp_path / "ran"
    ran.mkdir()
    assert run_sweep(spec, out=out, before_job=_ran(ran), progress=False).complete
    assert _measured(ran) == [1]
    rec = store.get(job.id)
    assert rec["reused_shards"] == [0] and store.shard_files() == {}
    assert run_sweep(spec, out=tmp_path / "once", progress=False).complete
    _same_results(rec, ResultStore(tmp_path / "once").get(job.id))


def _keep_in_process(store, job, shards=(0, 1), versions=None):
    """Shards of ``job`` measured here and kept as the driver keeps them."""
    kept = {}
    for shard in shards:
        state, info = measure_job(job, shard)
        payload = sweep_mod._shard_payload(job, (state, info), sweep_mod.Folders())
        store.write_shard(job.id, shard, job.shards, {**payload, "versions": versions or payload["versions"]})
        kept[shard] = (state, info)
    return kept


def _kept_noise_job(tmp_path, **spec):
    """The one job of a sweep over 4 random 32x32 images, its two shards kept in OUT/shards:
    ``(spec, job, store, kept)``."""
    spec = _spec(_folder(tmp_path / "data"), datasets=[{"name": "noise", "kind": "random",
                                                        "image_size": 32}], n_images=4, **spec)
    (job,) = load_spec(spec).jobs()
    store = ResultStore(tmp_path / "out")
    return spec, job, store, _keep_in_process(store, job)


def test_a_run_lists_the_shards_folder_once_not_once_per_job(tmp_path, monkeypatch):
    # each finished job listed the whole shards folder to delete its own kept shards: a
    # driver's time went as its jobs times the kept shards (43 ms a job beside 4,000 files)
    spec = _spec(_folder(tmp_path / "data"), datasets=[{"name": "noise", "kind": "random",
                                                        "image_size": 32}], n_images=4, seeds=[0, 1, 2])
    jobs = load_spec(spec).jobs()
    store = ResultStore(tmp_path / "out")
    kept = {job.id: _keep_in_process(store, job) for job in jobs}
    other_k = store.shard_path(jobs[0].id, 0, 3)  # the job's shard of another number of shards
    other_k.write_bytes(store.shard_path(jobs[0].id, 0, 2).read_bytes())
    theirs = store.shard_path("0123456789abcdef", 1, 2)  # an earlier spec's unfinished job's
    theirs.write_bytes(b"kept for a run of that spec")
    listings = []
    real = ResultStore.shard_files
    monkeypatch.setattr(ResultStore, "shard_files", lambda self: listings.append(1) or real(self))
    result = run_sweep(spec, out=store.root, progress=False)
    assert result.complete and result.ran == len(jobs)
    assert len(listings) == 2  # to tidy, and to check the kept ones: not again for each job
    assert sorted(p.name for p in store.shards_dir.iterdir()) == [theirs.name]  # theirs stays
    for job in jobs:  # each merged from its kept shards
        want = job_record(job, [kept[job.id][0], kept[job.id][1]])
        _same_results(store.get(job.id), json.loads(json.dumps(json_safe(want))))


def test_a_job_whose_every_shard_was_kept_is_merged_without_measuring(ray_session, tmp_path,
                                                                     monkeypatch):
    # the driver stopped after the last shard came back, before the record: nothing to measure
    spec = _spec(_folder(tmp_path / "data"))
    (job,) = load_spec(spec).jobs()
    store = ResultStore(tmp_path / "out")
    kept = _keep_in_process(store, job)
    ran = tmp_path / "ran"
    ran.mkdir()
    reads = []
    real = ResultStore.read_shard

    def counted(self, job_id, shard, shards):
        reads.append(shard)
        return real(self, job_id, shard, shards)

    monkeypatch.setattr(ResultStore, "read_shard", counted)
    result = run_sweep(spec, out=store.root, before_job=_ran(ran), progress=False)
    assert result.complete and _measured(ran) == []
    assert sorted(reads) == [0, 1]  # each kept shard read once (checked, then merged: twice)
    rec = store.get(job.id)
    assert rec["reused_shards"] == [0, 1] and rec["attempts"] == 0 and store.shard_files() == {}
    want = job_record(job, [kept[0], kept[1]])
    _same_results(rec, json.loads(json.dumps(json_safe(want))))


def test_kept_shards_that_no_longer_fit_the_job_are_measured_again(tmp_path):
    folder = _folder(tmp_path / "data")
    spec = _spec(folder)
    (job,) = load_spec(spec).jobs()
    store = ResultStore(tmp_path / "out")
    say = []
    _keep_in_process(store, job)
    assert sweep_mod._kept_shards(store, [job], say.append) == {job.id: [0, 1]}

    # another number of shards cuts other slices: not reused, and kept until the job is done
    (three,) = load_spec({**spec, "shards": 3}).jobs()
    assert three.id == job.id
    assert sweep_mod._kept_shards(store, [three], say.append) == {}
    assert len(store.shard_files()[job.id]) == 2

    # an image of shard 1's slice rewritten in place (the same size: only its time says so), then
    # replaced (another size): shard 1 only is measured again
    image = folder / "class1" / "3.png"
    stat = image.stat()
    image.write_bytes(image.read_bytes())  # (a valid PNG, as the shard is kept again below)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    say.clear()
    assert sweep_mod._kept_shards(store, [job], say.append) == {job.id: [0]}
    assert [s for s, _, _ in store.shard_files()[job.id]] == [0]
    assert any("shard 1 of 2" in line and "images have changed" in line for line in say), say
    _keep_in_process(store, job, shards=(1,))
    image.write_bytes(image.read_bytes() + b"\0" * 7)
    say.clear()
    assert sweep_mod._kept_shards(store, [job], say.append) == {job.id: [0]}
    assert [s for s, _, _ in store.shard_files()[job.id]] == [0]
    assert any("shard 1 of 2" in line and "images have changed" in line for line in say), say

    # an image added to the folder moves every slice: nothing is reused
    _png(folder / "class0" / "8.png", 8)
    assert sweep_mod._kept_shards(store, [job], say.append) == {}
    assert store.shard_files() == {}

    # measured with another equifast or torch, or unreadable: measured again
    _keep_in_process(store, job, shards=(0,), versions={"equifast": "0.0.1", "torch": "1.0"})
    _keep_in_process(store, job, shards=(1,))
    store.shard_path(job.id, 1, 2).write_bytes(b"torn")
    assert sweep_mod._kept_shards(store, [job], say.append) == {}
    assert store.shard_files() == {}


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_kept_shards_of_another_timm_or_torchvision_are_measured_again(tmp_path, library):
    # only equifast's and torch's versions were checked: a rerun after a timm (or torchvision)
    # upgrade, which changes a model by name and its preprocessing, merged the shards of both
    import importlib

    folder = _folder(tmp_path / "data")
    (job,) = load_spec(_spec(folder)).jobs()
    store = ResultStore(tmp_path / "out")
    now = str(importlib.import_module(library).__version__)
    kept = _keep_in_process(store, job, shards=(0,))
    assert store.read_shard(job.id, 0, 2)["versions"][library] == now
    _keep_in_process(store, job, shards=(1,), versions={
        **store.read_shard(job.id, 0, 2)["versions"], library: now + ".old"})
    say = []
    assert sweep_mod._kept_shards(store, [job], say.append) == {job.id: [0]}
    assert [s for s, _, _ in store.shard_files()[job.id]] == [0]
    assert any("shard 1 of 2" in line and library in line and now + ".old" in line
               for line in say), say
    assert store.read_shard(job.id, 0, 2)["info"] == kept[0][1]


def test_shards_measured_by_workers_of_other_versions_are_not_merged(tmp_path):
    # a kept shard is checked against the driver's versions, but the workers measure: a node of
    # another timm (an autoscaled one of a newer image) measured its shard of another model
    import timm

    (job,) = load_spec(_spec(_folder(tmp_path / "data"))).jobs()
    results = [measure_job(job, shard) for shard in (0, 1)]
    assert all(info["versions"]["timm"] == timm.__version__ for _, info in results)
    want = job_record(job, copy.deepcopy(results))  # one install: merged (merge adds in place)
    other = (results[1][0], {**results[1][1], "versions": {**results[1][1]["versions"],
                                                            "timm": timm.__version__ + ".other"}})
    with pytest.raises(ValueError, match=r"Expected the shards of job .* to be measured with the "
                                         r"same equifast, torch, timm and torchvision, but the "
                                         r"workers' differ: shard\(s\) \[0\] .*; shard\(s\) \[1\] .*\.other"):
        job_record(job, copy.deepcopy([results[0], other]))
    # a shard kept by an equifast that did not say them: as the driver's check found it
    old = (results[1][0], {k: v for k, v in results[1][1].items() if k != "versions"})
    _same_results(job_record(job, [results[0], old]), want)


def test_a_kept_shard_of_the_metrics_in_another_order_is_merged(tmp_path):
    # one job id for [cosine, correlation] and [correlation, cosine]: a shard kept by a run of
    # the one order was refused by the merge of the other's ("their metrics differ"), failing the job
    spec, ja, store, kept = _kept_noise_job(tmp_path, metrics=["cosine", "correlation"])
    (jb,) = load_spec({**spec, "metrics": ["correlation", "cosine"]}).jobs()
    assert jb.id == ja.id
    back = store.read_shard(jb.id, 0, 2)
    merged = job_record(jb, [(back["state"], {**back["info"], "reused": True}), measure_job(jb, 1)])
    whole = job_record(ja, [measure_job(ja, 0), measure_job(ja, 1)])
    _same_results(merged, whole)


def test_kept_shards_of_another_job_id_are_never_reused(tmp_path):
    # a changed setting that changes results (batch size) is another job: its own shard files
    folder = _folder(tmp_path / "data")
    (job,) = load_spec(_spec(folder)).jobs()
    (other,) = load_spec(_spec(folder, batch_size=2)).jobs()
    assert other.id != job.id
    store = ResultStore(tmp_path / "out")
    _keep_in_process(store, job)
    assert sweep_mod._kept_shards(store, [other], lambda line: None) == {}
    # a file renamed to the other id is refused by what it holds
    for shard, k, path in store.shard_files()[job.id]:
        path.rename(store.shard_path(other.id, shard, k))
    assert store.read_shard(other.id, 0, 2) is None
    assert sweep_mod._kept_shards(store, [other], lambda line: None) == {}


def test_shards_of_finished_jobs_are_deleted_and_an_earlier_specs_are_kept(tmp_path):
    # left by a driver stopped between a job's record and deleting its shards; and the
    # shards of a job the spec no longer has (kept, as its records are)
    spec, job, store, kept = _kept_noise_job(tmp_path)
    store.write_record(job_record(job, list(kept.values())))
    gone = "0123456789abcdef"
    store.write_shard(gone, 0, 2, {"state": None, "info": {"shard": 0}, "versions": {}})
    lines = []
    result = run_sweep(spec, out=store.root, echo=lines.append)  # nothing to run: no Ray
    assert result.complete and result.ran == 0
    assert sorted(store.shard_files()) == [gone]
    assert any("1 shard(s) of 1 unfinished job(s) not in this spec are kept" in line
               for line in lines), lines


def test_the_store_folder_checks_know_the_shards_folder(tmp_path):
    store = ResultStore(tmp_path / "out")
    store.write_shard("0123456789abcdef", 1, 2, {"state": None, "info": {}, "versions": {}})
    assert store.is_store()
    store.check_folder()  # a store of kept shards only (spec.json deleted): still a store
    tmp = store.shards_dir / ".0123456789abcdef.0-of-2.pt.999999999.0123abcd.tmp"
    tmp.write_bytes(b"half")  # a killed driver's half-written shard
    store.check_folder()
    store.lock()
    try:
        assert not tmp.exists()  # the lock's holder is the only writer: removed
    finally:
        store.unlock()
    # a user's folder with a shards/ folder of their own is no store
    user = ResultStore(tmp_path / "mine")
    (user.shards_dir).mkdir(parents=True)
    (user.shards_dir / "notes.txt").write_text("mine")
    assert not user.is_store()
    with pytest.raises(FileExistsError):
        user.check_folder()
    # a reader's listing is by name: a kept shard of a record's job
    assert [(s, k) for s, k, _ in store.shard_files()["0123456789abcdef"]] == [(1, 2)]
    assert store.remove_shards("0123456789abcdef") == 1 and store.shard_files() == {}


class _RunsCode:
    """What a shard file must never do when it is read: run code (here: make a folder)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_kept_shard_is_read_without_running_its_code_and_an_old_format_one_is_measured_again(
        tmp_path):
    # shards were read with torch.load(weights_only=False): a file in OUT/shards ran its code
    # a real state: rotations, flips, across-image vectors
    spec, job, store, kept = _kept_noise_job(
        tmp_path, transforms={"rf": "rotation:90,flip:horizontal"}, vector_mode="across_images")
    back = store.read_shard(job.id, 0, 2)
    assert back["info"] == kept[0][1] and back["versions"] == sweep_mod._shard_versions()
    merged = back["state"].merge(store.read_shard(job.id, 1, 2)["state"]).report().points
    want = kept[0][0].merge(kept[1][0]).report().points
    assert merged.equals(want)
    # a file of the right name and keys whose state is any other object: never run, measured again
    marker = tmp_path / "ran"
    store.write_shard(job.id, 1, 2, {"state": _RunsCode(marker), "info": kept[1][1],
                                     "versions": sweep_mod._shard_versions()})
    say = []
    assert sweep_mod._kept_shards(store, [job], say.append) == {job.id: [0]}
    assert not marker.exists()
    assert any("shard 1 of 2" in line and "unreadable" in line for line in say), say
    assert [s for s, _, _ in store.shard_files()[job.id]] == [0]
    # a shard as earlier versions kept it (torch's version a TorchVersion object): measured again
    import torch

    store.write_shard(job.id, 0, 2, {"state": kept[0][0], "info": kept[0][1], "versions": {
        **sweep_mod._shard_versions(), "torch": torch.__version__}})
    assert type(torch.__version__) is not str and store.read_shard(job.id, 0, 2) is None
    assert sweep_mod._kept_shards(store, [job], say.append) == {} and store.shard_files() == {}


def test_a_kept_shard_damaged_in_its_middle_is_measured_again(tmp_path):
    # torch.load reads a byte changed inside the pickle of a MeasureState (its integer sums) as
    # other numbers: merged into the job's record without a word
    import zipfile

    import torch

    spec, job, store, kept = _kept_noise_job(tmp_path)
    path = store.shard_path(job.id, 1, 2)
    whole = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        entry = archive.getinfo(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra)
    want = kept[1][0].report().points
    for at in range(start + entry.file_size // 2, start + entry.file_size):
        damaged = bytearray(whole)
        damaged[at] ^= 1
        path.write_bytes(bytes(damaged))
        try:  # what read_shard read before: torch.load alone
            with torch.serialization.safe_globals(store_mod._shard_classes()):
                state = torch.load(path, map_location="cpu", weights_only=True)["state"]
            points = state.report().points
        except Exception:  # noqa: BLE001 -- a byte torch.load refuses: no silent damage
            continue
        if not points.equals(want):
            break
    else:
        pytest.fail("no byte of the pickle changes the numbers")
    assert store.read_shard(job.id, 1, 2) is None
    say = []
    assert sweep_mod._kept_shards(store, [job], say.append) == {job.id: [0]}
    assert any("shard 1 of 2" in line and "unreadable" in line for line in say), say
    assert not path.exists() and store.read_shard(job.id, 0, 2)["info"] == kept[0][1]


def test_kept_shards_of_a_copied_folder_are_reused_by_names_and_sizes(tmp_path):
    # the driver compares the times of a shard's images in the folder it kept it from; a copy
    # (`ray job submit --working-dir` unpacks one, new times) is compared as records are
    import shutil

    _folder(tmp_path / "proj" / "data")
    spec = _spec("data")
    (tmp_path / "proj" / "spec.yaml").write_text(yaml.safe_dump(spec))
    (job,) = load_spec(tmp_path / "proj" / "spec.yaml").jobs()
    store = ResultStore(tmp_path / "out")
    _keep_in_process(store, job)
    shutil.copytree(tmp_path / "proj", tmp_path / "copy", copy_function=shutil.copy)
    for image in (tmp_path / "copy" / "data" / "class1").iterdir():
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    (copy,) = load_spec(tmp_path / "copy" / "spec.yaml").jobs()
    assert copy.id == job.id
    assert sweep_mod._kept_shards(store, [copy], lambda line: None) == {job.id: [0, 1]}
    # in its own folder, the same rewrite is a change: shard 1's images
    for image in (tmp_path / "proj" / "data" / "class1").iterdir():
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert sweep_mod._kept_shards(store, [job], lambda line: None) == {job.id: [0]}


def test_a_folder_of_fewer_images_than_n_images_is_said_in_the_record(tmp_path):
    # the sweep cut the subset itself: a folder (a partial copy on a node) of fewer images than
    # asked was measured whole without a word, as equifast.measure(n_images=...) warns
    folder = _folder(tmp_path / "data")
    (job,) = load_spec(_spec(folder, n_images=20, shards=1)).jobs()
    state, info = measure_job(job)
    assert state.n_images == 8
    assert info["warnings"] == ["Measured the 8 images of dataset 'tiny', fewer than the "
                                "n_images=20 asked for: that is all it holds."]
    (enough,) = load_spec(_spec(folder, n_images=8, shards=1)).jobs()
    assert measure_job(enough)[1]["warnings"] == []

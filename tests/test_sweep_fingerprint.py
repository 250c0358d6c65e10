"""A sweep's fingerprints of folder data: the record's ``files_sha256``, a kept shard's
``data_sha256``, and what of a folder's labels its jobs' ids hold.

The fingerprints are built from strings (``ImageFiles.paths``), not a Path per file; they
must mean what they meant: SHA-256 over each image's name relative to the folder and its size,
computed here again with pathlib as they were defined.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from equifast.data import ImageFiles, seeded_subset
from equifast.distributed import load_spec
from equifast.distributed.spec import _job_content, folder_files_sha256, job_id
from equifast.distributed.sweep import _image_files, _shard, shard_fingerprint


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)  # a fingerprint reads no pixels


def _classes_folder(root: Path) -> Path:
    for c, cls in enumerate(("n01", "n02", "b c", "é")):
        for i in range(3):
            _write(root / cls / f"{i}.png", c + i)
        _write(root / cls / "deeper" / "x.JPEG", 7 + c)
    _write(root / "stray.jpg", 3)  # beside the class folders: no label
    return root


def _pathlib_folder_sha256(root: Path) -> str:
    """The fingerprint as it was defined: relative names (posix) and sizes, in listing order."""
    digest = hashlib.sha256()
    for p in ImageFiles(root).paths:
        f = Path(p)
        digest.update(f"{f.relative_to(root).as_posix()}\0{f.stat().st_size}\n".encode())
    return digest.hexdigest()


def _pathlib_shard_sha256(part) -> str:
    files, indices = _image_files(part)
    paths = [Path(p) for p in files.paths]
    digest = hashlib.sha256()
    digest.update(json.dumps(list(files.classes)).encode())
    for f in paths:
        digest.update(f"{f.relative_to(files.root).as_posix()}\n".encode())
    digest.update(b"\0")
    for i in (range(len(paths)) if indices is None else indices):
        f = paths[i]
        digest.update(f"{f.relative_to(files.root).as_posix()}\0{f.stat().st_size}\n".encode())
    return digest.hexdigest()


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_folder_fingerprint_is_names_and_sizes_as_defined(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "classes":
        _classes_folder(root)
    else:
        for i in range(5):
            _write(root / f"img{i}.png", i)
    before = folder_files_sha256(str(root))
    assert before == _pathlib_folder_sha256(root)
    assert folder_files_sha256(str(tmp_path / "data" / ".." / "data")) == before  # one folder
    changes = [lambda: _write(root / "new.png", 1),                                     # added
               lambda: os.rename(root / "new.png", root / "renamed.png"),               # renamed
               lambda: _write(root / "renamed.png", 2)]                                 # resized
    if layout == "classes":
        changes.append(lambda: _write(root / "n02" / "deeper" / "x.JPEG", 1))       # deep inside
    seen = {before}
    for change in changes:
        change()
        now = folder_files_sha256(str(root))
        assert now == _pathlib_folder_sha256(root) and now not in seen
        seen.add(now)


def test_shard_fingerprint_is_names_and_sizes_as_defined(tmp_path):
    root = _classes_folder(tmp_path / "data")
    files = ImageFiles(root)
    for n_images, shards in ((None, 1), (9, 3), (len(files), 4)):
        subset = seeded_subset(files, n_images, 1)
        parts = [_shard(subset, i, shards) for i in range(shards)]
        assert [shard_fingerprint(p) for p in parts] == [_pathlib_shard_sha256(p) for p in parts]
    # a listing made again (the worker's, the next run's) gives the same fingerprints
    again = _shard(seeded_subset(ImageFiles(root), 9, 1), 2, 3)
    assert shard_fingerprint(again) == shard_fingerprint(_shard(seeded_subset(files, 9, 1), 2, 3))


# ---- labels: what decides them is in the fingerprints and the jobs' ids -------------------

N01, N02, N03 = "n01440764", "n01443537", "n01484850"


def _val_folder(root: Path, synsets) -> Path:
    """A flat ILSVRC2012 val folder, its LOC_val_solution.csv two folders above (Kaggle's
    ILSVRC/Data/CLS-LOC/val layout)."""
    rows = ["ImageId,PredictionString"]
    for i, s in enumerate(synsets, 1):
        _write(root / f"ILSVRC2012_val_{i:08d}.JPEG", 5)
        rows.append(f"ILSVRC2012_val_{i:08d},{s} 1 2 3 4")
    (root.parent.parent / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root


def _spec(path, **dataset) -> dict:
    return {"models": [{"name": "resnet18", "weights": "none"}],
            "datasets": [{"name": "val", "path": str(path), **dataset}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 4, "batch_size": 2,
            "seeds": [0, 1]}


def _ids(spec: dict, base_dir=None):
    return [j.id for j in load_spec(spec, base_dir=base_dir).jobs()]


def _ids_without_labels_source(spec: dict):
    """The ids as they were before a folder's labels source was part of them."""
    return [job_id(_job_content(j.model, j.dataset, j.transforms, j.metrics, j.seed, j.n_images,
                                j.batch_size, j.vector_mode, j.amp, tensor_cores=j.tensor_cores,
                                base_dir=j.base_dir, labels_source={}))
            for j in load_spec(spec).jobs()]


def test_a_changed_val_solution_csv_is_another_job_and_other_data(tmp_path):
    val = _val_folder(tmp_path / "CLS-LOC" / "val", [N01, N02, N01, N03])
    csv = tmp_path / "LOC_val_solution.csv"
    assert ImageFiles(val).labels == [0, 1, 0, 2]  # the csv labels them
    ids, folder = _ids(_spec(val)), folder_files_sha256(str(val))
    part = _shard(ImageFiles(val), 1, 2)
    shard = shard_fingerprint(part)
    # the folder's images are unchanged: only the csv (outside the folder) says otherwise
    csv.write_text(csv.read_text().replace(f"ILSVRC2012_val_00000004,{N03}", f"ILSVRC2012_val_00000004,{N02}"))
    assert ImageFiles(val).labels == [0, 1, 0, 1]
    assert set(_ids(_spec(val))).isdisjoint(ids)
    assert folder_files_sha256(str(val)) != folder
    assert shard_fingerprint(_shard(ImageFiles(val), 1, 2)) != shard
    assert shard_fingerprint(_shard(ImageFiles(val), 0, 2)) == shard_fingerprint(_shard(ImageFiles(val), 0, 2))
    # labels: false reads none: the csv is not part of the id
    assert _ids(_spec(val, labels=False)) == _ids_without_labels_source(_spec(val, labels=False))
    # no csv: no labels (no accuracy), another job again; and a folder of the same names
    # labelled by nothing keeps the fingerprint of its names and sizes, as defined
    csv.unlink()
    with pytest.warns(UserWarning, match="LOC_val_solution.csv"):
        assert not ImageFiles(val).labelled
        none = _ids(_spec(val))
        assert none == _ids_without_labels_source(_spec(val))
        assert folder_files_sha256(str(val)) == _pathlib_folder_sha256(val)
    assert set(none).isdisjoint(ids)


def test_a_changed_devkit_ground_truth_inside_the_val_folder_is_another_job(tmp_path):
    # the devkit's folder inside a flat val/ was taken for a class folder: no labels source in
    # the id, so a changed ground truth reused the records of the old one
    from test_data_layouts import _devkit

    val = tmp_path / "val"
    for i in range(1, 5):
        _write(val / f"ILSVRC2012_val_{i:08d}.JPEG", 5)
    devkit = val / "ILSVRC2012_devkit_t12"
    _devkit(devkit, [N02, N01, N03], [1, 3, 2, 1])
    truth = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    files = ImageFiles(val)  # sorted synsets n01 0, n02 1, n03 2: by hand
    assert files.classes == [N01, N02, N03] and files.labels == [1, 2, 0, 1]
    source = load_spec(_spec(val)).jobs()[0].content()["labels_source"]
    assert source == {"labels_sha256": hashlib.sha256(
        (json.dumps([N01, N02, N03]) + "\n1,2,0,1").encode()).hexdigest()}
    ids = _ids(_spec(val))
    truth.write_text("1\n3\n2\n2\n")  # image 4: n01 (devkit id 2), was n02
    assert ImageFiles(val).labels == [1, 2, 0, 0]
    assert set(_ids(_spec(val))).isdisjoint(ids)
    # so for a csv beside the images and the folders ImageFiles skips (a macOS zip's, a NAS's)
    kaggle = _val_folder(tmp_path / "k" / "CLS-LOC" / "val", [N01, N02, N01, N03])
    for skipped in ("__MACOSX", "@eaDir", ".git"):
        _write(kaggle / skipped / "ILSVRC2012_val_00000001.JPEG", 5)
    assert ImageFiles(kaggle).labels == [0, 1, 0, 2]
    csv = tmp_path / "k" / "LOC_val_solution.csv"
    ids = _ids(_spec(kaggle))
    csv.write_text(csv.read_text().replace(f"00000004,{N03}", f"00000004,{N02}"))
    assert set(_ids(_spec(kaggle))).isdisjoint(ids)


def test_a_class_folder_layout_with_skipped_folders_keeps_its_labels_source(tmp_path):
    # numbered class folders beside a macOS zip's __MACOSX are still numbered classes (ImageFiles
    # skips it); an image of the folder's own beside them lists it, with the same answer
    v2 = tmp_path / "v2"
    for c in range(3):
        _write(v2 / str(c) / "a.jpeg", 3)
    _write(v2 / "__MACOSX" / "0" / "._a.jpeg", 3)
    assert ImageFiles(v2).classes == ["0", "1", "2"]
    assert load_spec(_spec(v2)).jobs()[0].content()["labels_source"] == {"numbered_classes": 1}
    _write(v2 / "stray.png", 3)
    assert ImageFiles(v2).labels == [0, 1, 2, -1]
    assert load_spec(_spec(v2)).jobs()[0].content()["labels_source"] == {"numbered_classes": 1}


def test_a_file_name_of_bytes_that_are_no_utf8_is_fingerprinted(tmp_path):
    # Linux names are bytes: Python gives surrogate escapes, which str.encode() refused
    root = tmp_path / "data"
    root.mkdir()
    try:
        (root / os.fsdecode(b"\xff.png")).write_bytes(b"xyz")
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses a name that is no UTF-8")
    _write(root / "b.png", 2)
    # by hand: each name's bytes as the file system has them, a NUL, its size, a newline
    expected = hashlib.sha256(b"b.png\x002\n\xff.png\x003\n").hexdigest()
    assert folder_files_sha256(str(root)) == expected
    files = ImageFiles(root)
    assert shard_fingerprint(_shard(files, 0, 1)) is not None


def test_a_csv_labelled_shard_keeps_its_fingerprint_when_another_shards_label_changes(tmp_path):
    val = _val_folder(tmp_path / "a" / "val", [N01, N02, N01, N03])
    before = [shard_fingerprint(_shard(ImageFiles(val), i, 2)) for i in range(2)]
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace(f"ILSVRC2012_val_00000004,{N03}", f"ILSVRC2012_val_00000004,{N01}"))
    after = [shard_fingerprint(_shard(ImageFiles(val), i, 2)) for i in range(2)]
    # image 4 is shard 1's; the classes (n01, n02 now) are every shard's
    assert after[0] != before[0] and after[1] != before[1]
    csv.write_text(csv.read_text().replace(f"ILSVRC2012_val_00000003,{N01}", f"ILSVRC2012_val_00000003,{N02}"))
    last = [shard_fingerprint(_shard(ImageFiles(val), i, 2)) for i in range(2)]
    assert last[0] == after[0] and last[1] != after[1]  # same classes, image 3 is shard 1's


def test_numbered_class_folders_jobs_are_not_those_of_the_old_numbering(tmp_path):
    # ImageNetV2's 0/ ... 999/: until the rule made folder "10" class 10, folder i sorted as
    # text was class i ("10" the third): records of that rule hold a wrong accuracy
    numbered, named = tmp_path / "v2", tmp_path / "named"
    for c in range(12):
        _write(numbered / str(c) / "a.jpeg", 3)
        _write(named / f"n{c:02d}" / "a.jpeg", 3)
    jobs = load_spec(_spec(numbered)).jobs()
    assert all(j.content()["labels_source"] == {"numbered_classes": 1} for j in jobs)
    assert set(_ids(_spec(numbered))).isdisjoint(_ids_without_labels_source(_spec(numbered)))
    # named class folders: their names are in each image's name; the ids stay as they were
    assert _ids(_spec(named)) == _ids_without_labels_source(_spec(named))
    assert "labels_source" not in load_spec(_spec(named)).jobs()[0].content()
    assert _ids(_spec(numbered, labels=False)) == _ids_without_labels_source(_spec(numbered, labels=False))


def test_an_empty_class_folder_changes_the_folder_fingerprint(tmp_path):
    # every class folder counts, an empty one too: it moves the labels of those after it
    root = tmp_path / "data"
    for cls in ("a", "c"):
        _write(root / cls / "0.png", 3)
    before = folder_files_sha256(str(root))
    assert before == _pathlib_folder_sha256(root)
    (root / "b").mkdir()
    assert ImageFiles(root).labels == [0, 2]
    assert folder_files_sha256(str(root)) != before
    (root / "b").rmdir()
    assert folder_files_sha256(str(root)) == before


def test_a_synset_folder_given_alone_is_labelled_in_its_fingerprint_and_id(tmp_path):
    # its images are that class: the folder's name, not the images', says it
    a, b = tmp_path / "n01440764", tmp_path / "n01443537"
    for root in (a, b):
        _write(root / "x.JPEG", 3)
    assert folder_files_sha256(str(a)) != folder_files_sha256(str(b))
    # the same names and sizes without the rule (a folder of another name) are unlabelled
    other = tmp_path / "photos"
    _write(other / "x.JPEG", 3)
    assert folder_files_sha256(str(other)) == _pathlib_folder_sha256(other)
    assert folder_files_sha256(str(a)) != folder_files_sha256(str(other))
    assert load_spec(_spec(a)).jobs()[0].content()["labels_source"]["labels_sha256"]
    assert "labels_source" not in load_spec(_spec(other)).jobs()[0].content()


# ---- a finished job's images changed in place: measured again, not a stale record --------

def _finished(out: Path, job) -> None:
    """An ``ok`` record of ``job`` as a run writes it (its folder's fingerprint of now)."""
    from equifast.distributed import ResultStore

    ResultStore(out).write_record({"id": job.id, "status": "ok", "job": job.entry(),
                                   "points": [], "parts": []})


def _dry_states(spec_file: Path, out: Path, capsys) -> dict:
    from equifast.distributed.cli import main as sweep_main

    assert sweep_main(["run", str(spec_file), "--out", str(out), "--dry-run"]) == 0
    return {line.split()[0]: line.split()[1]
            for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}


def _touch_later(path: Path) -> None:
    """A file's modification time moved on by a second (a coarse file system keeps it too)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("relative", [False, True])
def test_images_changed_in_the_same_folder_measure_a_finished_job_again(tmp_path, capsys, relative):
    # fingerprints were compared only where a relative path meant another folder: an image
    # edited, replaced, added or removed in the folder itself reused the stale record
    import shutil

    import yaml

    from equifast.distributed.sweep import _moved

    root = _classes_folder(tmp_path / "proj" / "data")
    spec = _spec("data" if relative else root)
    spec_file = tmp_path / "proj" / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    jobs = load_spec(spec_file).jobs()
    out = tmp_path / "out"
    for job in jobs:
        _finished(out, job)
    ids = {j.id for j in jobs}
    assert _dry_states(spec_file, out, capsys) == dict.fromkeys(ids, "ok")
    image = root / "n02" / "1.png"
    changes = [
        lambda: (image.write_bytes(b"y" * image.stat().st_size), _touch_later(image)),  # same size
        lambda: os.replace(root / "n01" / "0.png", image),                # replaced by another file
        lambda: _write(root / "n01" / "9.png", 3),                                         # added
        lambda: os.remove(root / "n01" / "9.png"),                                       # removed
    ]
    for change in changes:
        change()
        with pytest.warns(UserWarning, match=r"dataset 'val': 2 finished job\(s\) measured .*, whose "
                                             "images have changed since"):
            assert _dry_states(spec_file, out, capsys) == dict.fromkeys(ids, "changed")
        for job in load_spec(spec_file).jobs():  # measured again: records of the images of now
            _finished(out, job)
        assert _dry_states(spec_file, out, capsys) == dict.fromkeys(ids, "ok")
    if relative:
        # a copy of the same images elsewhere (new modification times, as an unpacked
        # `ray job submit --working-dir`) is still the same data: skipped
        copy = tmp_path / "copy"
        shutil.copytree(tmp_path / "proj", copy, copy_function=shutil.copy)
        _touch_later(copy / "data" / "n01" / "1.png")
        assert _dry_states(copy / "spec.yaml", out, capsys) == dict.fromkeys(ids, "ok")
    # a record from before records kept the files' times: measured again once, with a warning
    records = {}
    for job in jobs:
        rec = job.entry()
        del rec["dataset"]["files_stamp"]
        records[job.id] = {"status": "ok", "job": rec}
    with pytest.warns(UserWarning, match=r"2 finished job\(s\) of .* have records without a stamp"):
        assert _moved(records, jobs) == dict.fromkeys(ids, "unstamped")


def _mnist_root(root: Path) -> Path:
    """A torchvision MNIST root of 4 blank digits a split: the files MNIST reads."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 4, 28, 28)
                                                          + bytes(4 * 784))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 4) + bytes(range(4)))
    return root


def test_a_torchvision_datasets_files_changed_measure_a_finished_job_again(tmp_path, capsys):
    # a torchvision root had no fingerprint: a replaced file reused the stale records
    import torchvision
    import yaml

    from equifast.distributed.sweep import _moved

    root = _mnist_root(tmp_path / "proj" / "data")
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    assert len(torchvision.datasets.MNIST(str(root), train=False)) == 4
    spec = {"models": [{"name": "resnet18", "weights": "none", "num_classes": 10}],
            "datasets": [{"name": "digits", "torchvision": "MNIST", "root": "data",
                          "args": {"train": False}, "image_size": 32}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 4, "batch_size": 2}
    spec_file = tmp_path / "proj" / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    (job,) = load_spec(spec_file).jobs()
    out = tmp_path / "out"
    _finished(out, job)
    assert _dry_states(spec_file, out, capsys) == {job.id: "ok"}
    _write(root / "notes.txt", 3)  # beside the data set's folder: not its files
    assert _dry_states(spec_file, out, capsys) == {job.id: "ok"}
    from equifast.distributed.spec import Folders
    from equifast.distributed.sweep import _shard_times, _times_changed

    kept = _shard_times(job, 0, Folders())  # a shard kept by a run stopped now
    assert kept is not None and not _times_changed(kept, _shard_times(job, 0, Folders()))
    images.write_bytes(images.read_bytes()[:16] + bytes(range(256)) * 12 + bytes(784 * 4 - 3072))
    _touch_later(images)  # the same size, other digits
    assert _times_changed(kept, _shard_times(job, 0, Folders()))  # not merged with new shards
    with pytest.warns(UserWarning, match=r"dataset 'digits': 1 finished job\(s\) measured .*, whose "
                                         "files have changed since"):
        assert _dry_states(spec_file, out, capsys) == {job.id: "changed"}
    _finished(out, load_spec(spec_file).jobs()[0])  # measured again
    assert _dry_states(spec_file, out, capsys) == {job.id: "ok"}
    # a copy of the spec's folder (new times, the same names and sizes) is the same data
    import shutil

    shutil.copytree(tmp_path / "proj", tmp_path / "copy", copy_function=shutil.copy)
    _touch_later(tmp_path / "copy" / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    assert _dry_states(tmp_path / "copy" / "spec.yaml", out, capsys) == {job.id: "ok"}
    # a record from before records kept a stamp of a torchvision root: measured again once
    rec = job.entry()
    del rec["dataset"]["files_stamp"]
    with pytest.warns(UserWarning, match=r"1 finished job\(s\) of .* have records without a stamp "
                                         "of its files' modification times"):
        assert _moved({job.id: {"status": "ok", "job": rec}}, [job]) == {job.id: "unstamped"}
    # the record's hash, by hand: each file under the data set's folder, relative to the root,
    # and its size
    from equifast.distributed.spec import torchvision_fingerprint

    names = [f"MNIST/raw/{split}-{kind}" for split in ("t10k", "train")
             for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    sha = hashlib.sha256("".join(f"{n}\0{(root / n).stat().st_size}\n" for n in names).encode())
    assert rec["dataset"]["files_sha256"] == sha.hexdigest()
    assert torchvision_fingerprint("MNIST", str(root))["files_sha256"] == sha.hexdigest()


def _dtd_root(root: Path) -> Path:
    """A torchvision DTD root of 2 textures of 2 images each: DTD has no class-level
    ``base_folder``, so its whole root is fingerprinted."""
    from PIL import Image

    data = root / "dtd" / "dtd"
    lines = []
    for cls in ("banded", "dotted"):
        for i in range(2):
            (data / "images" / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i, 90, 0)).save(data / "images" / cls / f"{cls}_{i}.jpg")
            lines.append(f"{cls}/{cls}_{i}.jpg")
    (data / "labels").mkdir()
    (data / "labels" / "test1.txt").write_text("\n".join(lines) + "\n")
    return root


def test_a_store_inside_a_torchvision_root_is_not_its_files(tmp_path, capsys):
    # root: . and the default --out runs/sweep: the whole root was walked, the store's own
    # files (records, status.json, sweep.lock, tables) with it, so every run saw its finished
    # jobs' files "changed" and measured them again
    import torchvision
    import yaml

    from equifast.distributed import run_sweep
    from equifast.distributed.spec import torchvision_fingerprint, torchvision_folder

    proj = _dtd_root(tmp_path / "proj")
    assert len(torchvision.datasets.DTD(str(proj), split="test")) == 4
    assert torchvision_folder("DTD", str(proj)) == str(proj)  # the root itself
    spec = {"models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
            "datasets": [{"name": "textures", "torchvision": "DTD", "root": ".",
                          "args": {"split": "test"}, "image_size": 32}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 4, "batch_size": 2}
    spec_file = proj / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    (job,) = load_spec(spec_file).jobs()
    out = proj / "runs" / "sweep"
    before = torchvision_fingerprint("DTD", str(proj))
    _finished(out, job)
    assert torchvision_fingerprint("DTD", str(proj)) == before
    assert _dry_states(spec_file, out, capsys) == {job.id: "ok"}
    for _ in range(2):  # every job finished: no Ray; each run writes its store's files
        result = run_sweep(spec_file, out=out, progress=False)
        assert (result.skipped, result.ran) == (1, 0)
        assert (out / "status.json").is_file() and (out / "points.csv").is_file()
        assert _dry_states(spec_file, out, capsys) == {job.id: "ok"}
    assert torchvision_fingerprint("DTD", str(proj)) == before
    # the data set's own files are still its files: one replaced is seen
    image = proj / "dtd" / "dtd" / "images" / "dotted" / "dotted_1.jpg"
    image.write_bytes(image.read_bytes())
    _touch_later(image)
    with pytest.warns(UserWarning, match=r"dataset 'textures': 1 finished job\(s\) measured .*, "
                                         "whose files have changed since"):
        assert _dry_states(spec_file, out, capsys) == {job.id: "changed"}

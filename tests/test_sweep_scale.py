"""Sweeps at research scale: a store of many records, random images of many jobs, the driver.

What is asserted is behaviour (the same tables, the same images, which files are read whole);
how much faster it became is measured by hand, not here.
"""
from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import equifast as ef
from equifast.distributed import ResultStore, load_spec, measure_job
from equifast.distributed import store as store_mod
from equifast.distributed.store import records_frame
from equifast.distributed.sweep import RandomImages, job_inputs, job_record

_JOB_COLUMNS = store_mod._JOB_COLUMNS


@pytest.fixture(scope="module")
def measured():
    """Two real records (translation, rotation) of a random-init model on random images,
    with both metrics, as a sweep's driver writes them."""
    spec = load_spec({"name": "scale", "datasets": [{"name": "noise", "kind": "random", "image_size": 32}],
                      "models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
                      "transforms": {"translation": "translation:1-3", "rotation": "rotation"},
                      "metrics": ["correlation", "cosine"], "n_images": 2, "batch_size": 2})
    return [job_record(job, [measure_job(job)]) for job in spec.jobs()]


def _fill(root, measured, n_models=4, seeds=2, accuracy=lambda m: 0.5 + m / 10, failed=(),
          no_points=(), in_spec=lambda jid: True, label_in_spec=lambda m: f"model{m}"):
    """A store of ``n_models x families x seeds`` records written with write_record (the
    ``failed`` k-th records failed, the ``no_points`` k-th ones without rows), and a spec of the
    records ``in_spec`` says (its model entries relabelled by ``label_in_spec``)."""
    store = ResultStore(root)
    ids, entries, job_models, k = [], [], {}, 0
    for m in range(n_models):
        entries.append({"label": label_in_spec(m), "accuracy": accuracy(m)})
        for base in measured:
            for seed in range(seeds):
                rec = copy.deepcopy(base)
                rec["id"] = f"{k:016x}"
                rec["job"]["model"].update(label=f"model{m}", accuracy=accuracy(m))
                rec["job"]["seed"] = seed
                for i, row in enumerate(rec["points"]):  # scores of their own, a few undefined
                    row["channel"] = None if (i + k) % 11 == 0 else (i * 0.37 + k * 0.11) % 1
                for i, row in enumerate(rec["parts"]):
                    row["channel"] = (i * 0.13 + k * 0.07) % 1
                if k in failed:
                    rec = {"id": rec["id"], "status": "failed", "job": rec["job"], "attempts": 2,
                           "total_attempts": 3, "hosts": ["h"], "error": "RuntimeError: boom"}
                elif k in no_points:
                    rec["points"] = []
                store.write_record(rec)
                if in_spec(rec["id"]):
                    ids.append(rec["id"])
                    job_models[rec["id"]] = label_in_spec(m)
                k += 1
    store.write_spec({"models": entries}, ids, job_models)
    return store


def _cols(rec, entries, job_models):
    """The job columns of a record, as ResultStore.tables documents them."""
    job = rec.get("job", {})
    model, dataset = job.get("model", {}), job.get("dataset", {})
    latest = entries.get(job_models.get(rec["id"], model.get("label")))
    if latest is not None:
        model = {**model, "label": latest["label"], "accuracy": latest.get("accuracy")}
    known, measured = model.get("accuracy"), rec.get("accuracy_measured")
    return {"job_id": rec["id"], "model": model.get("label"), "arch": model.get("arch"),
            "weights": "none" if model.get("weights") is None else model.get("weights"),
            "dataset": dataset.get("label"), "transforms": job.get("family"), "seed": job.get("seed"),
            "accuracy": measured if measured is not None else known,
            "accuracy_measured": measured, "accuracy_known": known,
            "accuracy_source": "measured" if measured is not None else (
                "known" if known is not None else None)}


def _records(store, all_records):
    saved = store.read_spec()
    entries = {m["label"]: m for m in saved["spec"].get("models", [])}
    wanted = None if all_records else set(saved["jobs"])
    recs = [json.loads(p.read_text()) for p in sorted(store.records_dir.glob("*.json"))]
    return [r for r in recs if wanted is None or r["id"] in wanted], entries, saved.get("job_models", {})


def _per_record_tables(store, all_records=False):
    """The tables as they were built before: a DataFrame per record, its job columns inserted in
    front, and one concat (5-15 ms a record)."""
    recs, entries, job_models = _records(store, all_records)
    points, parts = [], []
    for rec in recs:
        if rec.get("status") != "ok":
            continue
        cols = _cols(rec, entries, job_models)
        for name, sink in (("points", points), ("parts", parts)):
            df = records_frame(rec.get(name, []))
            for k, v in reversed(list(cols.items())):
                df.insert(0, k, v)
            sink.append(df)
    return {"points": pd.concat(points, ignore_index=True), "parts": pd.concat(parts, ignore_index=True)}


def _one_frame_tables(store, all_records=False):
    """The tables as one DataFrame of every row, each with its job's columns in front."""
    recs, entries, job_models = _records(store, all_records)
    ok = [r for r in recs if r.get("status") == "ok"]
    return {name: records_frame([{**_cols(r, entries, job_models), **row} for r in ok
                                 for row in r.get(name, [])]) for name in ("points", "parts")}


@pytest.mark.parametrize("chunk", [store_mod._CHUNK_ROWS, 7])
@pytest.mark.parametrize("all_records", [False, True])
def test_tables_are_those_of_a_frame_per_record(measured, tmp_path, monkeypatch, chunk, all_records):
    # realistic records (every column a job writes), failed jobs, an earlier spec's records and
    # a relabelled model; chunks of 7 rows cut records apart
    monkeypatch.setattr(store_mod, "_CHUNK_ROWS", chunk)
    store = _fill(tmp_path, measured, failed={3, 9}, in_spec=lambda jid: int(jid, 16) % 5 != 4,
                  label_in_spec=lambda m: "renamed" if m == 1 else f"model{m}")
    got = store.tables(all_records=all_records)
    want = _per_record_tables(store, all_records)
    for name in ("points", "parts"):
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
        pd.testing.assert_frame_equal(got[name], _one_frame_tables(store, all_records)[name],
                                      check_exact=True)
    assert len(got["points"]) == sum(len(r["points"]) for r in _records(store, all_records)[0]
                                     if r["status"] == "ok")
    assert ("renamed" in set(got["parts"]["model"])) and got["points"]["channel"].isna().any()


def _jobs_table(store, all_records=False):
    """The jobs table as ResultStore.tables documents it: a row per readable record."""
    recs, entries, job_models = _records(store, all_records)
    rows = []
    for rec in recs:
        timings = rec.get("timings", {})
        rows.append({**_cols(rec, entries, job_models), "status": rec.get("status"),
                     "n_images": rec.get("n_images"), "shards": rec.get("job", {}).get("shards"),
                     "attempts": rec.get("attempts"), "total_attempts": rec.get("total_attempts"),
                     "seconds": timings.get("total_s"), "host": ",".join(rec.get("hosts", [])),
                     "finished_at": rec.get("finished_at"), "error": rec.get("error")})
    return pd.DataFrame(rows)


def _assert_tables(got, store, all_records=False):
    """``got`` are the tables of a plain recomputation over the store's records: every row
    dict made into one DataFrame (points, parts), a row per record (jobs)."""
    want = _one_frame_tables(store, all_records)
    for name in ("points", "parts"):
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
    pd.testing.assert_frame_equal(got["jobs"], _jobs_table(store, all_records), check_exact=True)


def _odd_records(store, measured):
    """Records whose rows a sweep does not write, but a table must take as pandas does: rows of
    other keys in one record, a column some records lack, nulls in an integer column, a column
    of strings and numbers, of booleans, of all nulls, rows of one key, no rows."""
    base = copy.deepcopy(measured[0])
    ids = []

    def put(k, points, parts=None, status="ok"):
        rec = copy.deepcopy(base)
        rec.update(id=f"{k:016x}", status=status, points=points)
        if parts is not None:
            rec["parts"] = parts
        store.write_record(rec)
        ids.append(rec["id"])

    rows = base["points"]
    put(0, [{**r, "extra": i} if i % 3 == 0 else r for i, r in enumerate(rows)])
    put(1, [{k: v for k, v in r.items() if k != "mean_activation"} for r in rows])
    put(2, [{**r, "order": None if i % 4 == 0 else r["order"]} for i, r in enumerate(rows)])
    put(3, [{**r, "shape": i if i % 5 == 0 else r["shape"], "flag": i % 2 == 0,
             "nothing": None} for i, r in enumerate(rows)])
    put(4, [{"point": r["point"]} for r in rows], parts=[])
    put(5, [], parts=[{**r, "n_points": float(r["n_points"])} for r in base["parts"]])
    put(6, [{} for _ in rows[:3]])
    put(7, rows)
    store.write_record({"id": f"{8:016x}", "status": "failed", "job": base["job"], "error": "x"})
    store.write_spec({"models": []}, ids + [f"{8:016x}"])


def test_tables_of_odd_rows_are_pandas_own(measured, tmp_path, monkeypatch):
    # (in one chunk: pandas infers each chunk's dtypes, and a column of nulls only in one
    # chunk is of objects there, as it was before rows were read as columns)
    monkeypatch.setattr(store_mod, "_PARSED", store_mod._Parsed())
    store = ResultStore(tmp_path)
    _odd_records(store, measured)
    _assert_tables(store.tables(), store)
    _assert_tables(store.tables(), store)  # as kept from the first call


def test_a_record_is_parsed_once_and_again_when_it_is_replaced(measured, tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "_PARSED", store_mod._Parsed())
    store = _fill(tmp_path, measured, n_models=2, seeds=2, failed={1})
    read = []
    real = store_mod._read
    monkeypatch.setattr(store_mod, "_read", lambda path: read.append(path.stem) or real(path))
    _assert_tables(store.tables(), store)
    assert len(read) == 8
    read.clear()
    _assert_tables(store.tables(), store)
    assert read == []  # kept in this process
    # a record replaced (a failed job measured again) and a new one: those two are read
    ok = json.loads(store.record_path(f"{0:016x}").read_text())
    store.write_record({**ok, "id": f"{1:016x}"})
    store.write_record({**ok, "id": f"{99:016x}"})
    store.write_spec(store.read_spec()["spec"], store.read_spec()["jobs"] + [f"{99:016x}"],
                     store.read_spec()["job_models"])
    got = store.tables()
    assert sorted(read) == [f"{1:016x}", f"{99:016x}"]
    _assert_tables(got, store)
    assert list(got["jobs"]["status"]).count("ok") == 9


def test_tables_of_jobs_with_and_without_an_accuracy_hold_numbers(measured, tmp_path, monkeypatch):
    # a frame per record made accuracy an object column when some models had none, and the
    # Parquet file then held the accuracies as strings ("0.5")
    monkeypatch.setattr(store_mod, "_CHUNK_ROWS", 11)
    store = _fill(tmp_path, measured, n_models=3, seeds=1,
                  accuracy=lambda m: None if m == 1 else 0.5 + m / 10, no_points={0})
    got = store.tables()
    want = _one_frame_tables(store)
    for name in ("points", "parts"):
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
        for col in ("accuracy", "accuracy_known"):
            assert got[name][col].dtype == np.float64, (name, col)
    # the rows of a record without points are no reason to change another column's dtype
    assert got["points"]["n_images"].dtype == np.int64
    store.write_tables()
    back = pd.read_parquet(tmp_path / "parts.parquet")
    expect = [0.5 if m == 0 else (np.nan if m == 1 else 0.7) for m in (0, 0, 1, 1, 2, 2)]
    np.testing.assert_array_equal(back.groupby("job_id", sort=True)["accuracy"].first().to_numpy(),
                                  expect)


def test_tables_of_no_finished_job(tmp_path):
    store = ResultStore(tmp_path)
    store.write_record({"id": "aaaa", "status": "failed", "job": {}, "error": "boom"})
    store.write_spec({"models": []}, ["aaaa"])
    got = store.tables()
    assert got["points"].empty and list(got["points"].columns) == _JOB_COLUMNS
    assert list(got["jobs"]["status"]) == ["failed"]


def test_tables_read_only_the_saved_specs_records(measured, tmp_path, monkeypatch):
    store = _fill(tmp_path, measured, n_models=2, seeds=1, in_spec=lambda jid: int(jid, 16) < 2)
    read = []
    real = store_mod._read
    monkeypatch.setattr(store_mod, "_read", lambda path: read.append(path.stem) or real(path))
    assert sorted(store.tables()["jobs"]["job_id"]) == sorted(read) == [f"{k:016x}" for k in (0, 1)]


# ---- status without reading the tables -------------------------------------------------------

def _status_files(store):
    """Record files of every kind a status reader meets, and their status by parsing them."""
    big = {"rows": [{"status": "ok", "x": i} for i in range(400)]}  # > 4 kB before "status"
    store.write_record({"id": "a" * 16, "status": "ok", "job": {"status": "failed"}, "points": []})
    store.write_record({"id": "b" * 16, "status": "failed", "job": {}, "error": 'x\n "status": "ok",\n'})
    store.write_record({"job": {"model": {"status": "ok"}}, "status": "failed", "id": "c" * 16})
    files = store.records_dir
    (files / ("d" * 16 + ".json")).write_text(json.dumps({"id": "d" * 16, "status": "ok"}))  # compact
    (files / ("e" * 16 + ".json")).write_text(json.dumps({"id": "e" * 16, **big, "status": "failed"},
                                                         indent=1))
    (files / ("f" * 16 + ".json")).write_text(json.dumps({"id": "f" * 16, "job": {"status": "ok"},
                                                          "status": "failed"}, indent=1))
    whole = json.dumps({"id": "0" * 16, "status": "ok", "points": [{"a": 1}] * 50}, indent=1)
    # torn: at a nested object's end (only the top level's brace is "\n}"), and anywhere
    (files / ("0" * 16 + ".json")).write_text(whole[:whole.rindex("\n  }") + 4])
    (files / ("1" * 16 + ".json")).write_text(whole[:len(whole) // 2])
    (files / "half.json").write_text('{"id": "half", "sta')
    (files / ("2" * 16 + ".json")).write_text(json.dumps({"id": "2" * 16}, indent=1))  # no status
    want = {}
    for path in files.glob("*.json"):
        try:
            want[path.stem] = json.loads(path.read_text()).get("status")
        except json.JSONDecodeError:
            pass
    return want


def test_states_are_those_of_the_parsed_records(tmp_path):
    store = ResultStore(tmp_path)
    want = _status_files(store)
    assert want["b" * 16] == "failed" and "0" * 16 not in want and "half" not in want
    assert store.states() == want
    assert {jid: store.status_of(jid) for jid in want} == want
    assert store.status_of("9" * 16) is None and store.status_of("1" * 16) is None
    assert sorted(r["id"] for r in store.records(status="failed")) == sorted(
        k for k, v in want.items() if v == "failed")
    assert store.counts(list(want) + ["3" * 16]) == {
        "finished": sum(v == "ok" for v in want.values()), "running": 0,
        "failed": sum(v == "failed" for v in want.values()), "pending": 2}


def test_status_of_a_store_reads_no_finished_record_whole(measured, tmp_path, monkeypatch):
    store = _fill(tmp_path, measured, n_models=2, seeds=1, failed={1})
    read = []
    real = store_mod._read
    monkeypatch.setattr(store_mod, "_read", lambda path: read.append(path.stem) or real(path))
    assert store.counts() == {"finished": 3, "running": 0, "failed": 1, "pending": 0}
    assert [r["id"] for r in store.records(status="failed")] == [f"{1:016x}"]
    assert read == [f"{1:016x}"]  # the failed record, to list it


def _count_reads(monkeypatch):
    """``{record id: how many times its file was read whole}`` (to check its digest: for its
    head, or to parse it), filled as the store reads them; no record read before counts."""
    reads = {}
    monkeypatch.setattr(store_mod, "_PARSED", store_mod._Parsed())
    monkeypatch.setattr(store_mod, "_HEADS", store_mod._Heads())
    for name in ("_front_fields", "_read"):
        real = getattr(store_mod, name)
        monkeypatch.setattr(store_mod, name, lambda path, real=real: (
            reads.__setitem__(path.stem, reads.get(path.stem, 0) + 1), real(path))[1])
    return reads


def test_a_command_reads_each_record_file_once(measured, tmp_path, monkeypatch, capsys):
    # each read is hashed whole (the record's digest): `sweep status` read every record twice
    # (its counts, then its failed ones), a run's start twice (which jobs run, before Ray starts;
    # then under the lock) before the tables' read, and `sweep report` once more after its tables
    from equifast.distributed import analysis, run_sweep
    from equifast.distributed.cli import main as sweep_main

    store = _fill(tmp_path / "sweep", measured, n_models=3, seeds=2, failed={1, 6})
    ids = sorted(p.stem for p in store.records_dir.glob("*.json"))
    reads = _count_reads(monkeypatch)
    assert sweep_main(["status", str(store.root)]) == 0
    assert "finished 10/12" in capsys.readouterr().out
    assert reads == dict.fromkeys(ids, 1)
    reads.clear()
    with pytest.warns(UserWarning, match="holds 10 of the sweep's 12 jobs"):
        analysis.sweep_figures(store.root, tmp_path / "figures", accuracy="known")
    assert reads == dict.fromkeys(ids, 1)
    # a finished sweep run again: each record's head once (nothing to run: no Ray), then the
    # tables, read whole again
    spec = load_spec(_SCALE_SPEC)
    done = ResultStore(tmp_path / "done")
    for rec in measured:
        done.write_record(rec)
    reads = _count_reads(monkeypatch)
    result = run_sweep(spec, out=done.root, progress=False)
    assert (result.ran, result.skipped) == (0, 2)
    assert reads == {rec["id"]: 2 for rec in measured}


_SCALE_SPEC = {"name": "scale", "datasets": [{"name": "noise", "kind": "random", "image_size": 32}],
               "models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
               "transforms": {"translation": "translation:1-3", "rotation": "rotation"},
               "metrics": ["correlation", "cosine"], "n_images": 2, "batch_size": 2}


def _zeroed(text: str, at: int) -> str:
    return text[:at] + "\0" * 64 + text[at + 64:]  # a block of the disk lost: no JSON


def _other_digit(text: str, at: int) -> str:
    at = text.index('"channel": 0.', at) + len('"channel": 0.')  # still JSON: another number
    return text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]


@pytest.mark.parametrize("damage", [_zeroed, _other_digit])
def test_a_record_damaged_in_the_middle_of_its_tables_is_no_finished_job(measured, tmp_path, capsys,
                                                                          damage):
    # its head, before the tables, was read whole: the job counted as finished, a rerun skipped
    # it, and the tables left its numbers out (zeroed bytes) or read other ones (a digit changed)
    import yaml

    from equifast.distributed import sweep
    from equifast.distributed.cli import main as sweep_main

    spec = load_spec(_SCALE_SPEC)
    jobs = spec.jobs()
    assert [j.id for j in jobs] == [r["id"] for r in measured]
    intact = ResultStore(tmp_path / "intact")  # the other job's record alone
    intact.write_record(measured[1])
    store = ResultStore(tmp_path / "out")
    for rec in measured:
        store.write_record(rec)
    assert store.get(jobs[0].id) == json.loads(json.dumps(store_mod.json_safe(measured[0])))
    for s in (store, intact):
        s.write_spec(spec.to_dict(), [j.id for j in jobs])
    path = store.record_path(jobs[0].id)
    text = path.read_text()
    path.write_text(damage(text, text.index('"points"') + len(text) // 4))
    assert path.read_text().endswith("\n}") and len(path.read_text()) == len(text)
    assert store.get(jobs[0].id) is None and store.head_of(jobs[0].id) is None
    assert store.states() == {jobs[1].id: "ok"} and store.unreadable() == [path]
    assert store.counts() == {"finished": 1, "running": 0, "failed": 0, "pending": 1}
    got, want = store.tables(), intact.tables()
    for name in ("points", "parts"):
        pd.testing.assert_frame_equal(got[name], want[name])
    # a run measures it again, and says so
    before = sweep._previous_records(store, jobs)
    assert before[jobs[0].id] is None and sweep._todo(before, jobs, True)[2] == [jobs[0]]
    assert sweep._damaged(store, jobs, before) == [jobs[0]]
    with pytest.warns(UserWarning, match=r"1 record file\(s\) in .* cannot be read \(damaged\?\): "
                                         + re.escape(jobs[0].title) + "; their jobs are measured again"):
        sweep._warn_damaged(store, sweep._damaged(store, jobs, before))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_SCALE_SPEC))
    assert sweep_main(["run", str(spec_file), "--out", str(store.root), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert dict(line.split()[:2] for line in lines[1:]) == {jobs[0].id: "damaged", jobs[1].id: "ok"}
    assert sweep_main(["status", "--out", str(store.root)]) == 0
    assert "1 record file(s) in" in capsys.readouterr().out


# ---- the driver ----------------------------------------------------------------------------------

def test_the_driver_keeps_no_finished_records_tables(measured, tmp_path, monkeypatch):
    from equifast.distributed import sweep

    spec = load_spec({"name": "d", "datasets": [{"name": "noise", "kind": "random", "image_size": 32}],
                      "models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
                      "transforms": {"translation": "translation:1-3", "rotation": "rotation"},
                      "metrics": ["correlation", "cosine"], "n_images": 2, "batch_size": 2})
    jobs = spec.jobs()
    store = ResultStore(tmp_path)
    store.write_record(measured[0])  # the translation job: finished
    store.write_record({"id": jobs[1].id, "status": "failed", "job": jobs[1].entry(), "error": "x",
                        "total_attempts": 4})
    before = sweep._previous_records(store, jobs)
    assert before == {jobs[0].id: {"status": "ok"},
                      jobs[1].id: {"status": "failed", "total_attempts": 4,
                                   "job": {"dataset": jobs[1].entry()["dataset"]}}}
    assert sweep._todo(before, jobs, True)[2] == [jobs[1]]
    assert sweep._todo(before, jobs, False)[2] == []


def _head(text: str):
    """A record's fields before its first table, by parsing it whole (``None``: unreadable),
    less the store's digest of the file (``sha256``, first)."""
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict):
        return None
    head = {}
    for key, value in rec.items():
        if key in ("points", "parts"):
            break
        head[key] = value
    head.pop("sha256", None)
    return head


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 4096])
def test_a_records_head_is_its_fields_before_its_tables(measured, tmp_path, monkeypatch, block):
    # read from the front a block at a time: a cut anywhere (in a key, a string, an escape, a
    # number: "1" of "12" is whole JSON too) must read on, not end the field there
    monkeypatch.setattr(store_mod, "_HEAD", block)
    store = ResultStore(tmp_path)
    _status_files(store)
    rec = copy.deepcopy(measured[0])
    rec.update(id="3" * 16, total_attempts=12)
    rec["job"]["note"] = 'é "q" \\ ' * 700  # > 4 kB of job, escaped (ensure_ascii)
    store.write_record(rec)
    # a record of before write_record put total_attempts before the tables
    (store.records_dir / ("4" * 16 + ".json")).write_text(json.dumps({**rec, "id": "4" * 16}, indent=1))
    paths = sorted(store.records_dir.glob("*.json"))
    assert len(paths) == 12
    for path in paths:
        assert store.head_of(path.stem) == _head(path.read_text()), path.stem
    first = list(rec)[:list(rec).index("points")]  # job_record's order: total_attempts after
    assert store.head_of("3" * 16) == {k: v for k, v in rec.items()
                                       if k in first or k == "total_attempts"}
    assert "total_attempts" not in store.head_of("4" * 16)
    assert store.head_of("9" * 16) is None  # no record


def test_a_run_reads_no_finished_record_whole_to_check_its_data(measured, tmp_path, monkeypatch, capsys):
    # a run's start (and --dry-run) parsed every finished record of a folder or a torchvision
    # root whole, its tables too, only for its dataset entry and stamp
    import os

    import yaml

    from equifast.distributed import sweep
    from equifast.distributed.cli import main as sweep_main

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(2):
            (data / c / f"{i}.png").write_bytes(b"x" * (i + 1))  # a fingerprint reads no pixels
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "f", "datasets": [{"name": "val", "path": str(data)}],
        "models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
        "transforms": {"translation": "translation:1-3", "rotation": "rotation"},
        "n_images": 2, "batch_size": 2, "seeds": [0, 1, 2]}))
    jobs = load_spec(spec_file).jobs()
    out = tmp_path / "out"
    store = ResultStore(out)
    for k, job in enumerate(jobs):  # real tables; the first half as records were written before
        rec = {**copy.deepcopy(measured[k % 2]), "id": job.id, "job": job.entry(), "total_attempts": k + 1}
        if k < 3:
            store.record_path(job.id).parent.mkdir(parents=True, exist_ok=True)
            store.record_path(job.id).write_text(json.dumps(rec, indent=1))
        else:
            store.write_record(rec)
    assert all(len(json.loads(store.record_path(j.id).read_text())["points"]) > 10 for j in jobs)
    read = []
    real = store_mod._read
    monkeypatch.setattr(store_mod, "_read", lambda path: read.append(path.stem) or real(path))
    before = sweep._previous_records(store, jobs)
    assert read == []
    assert before == {j.id: {"status": "ok", "total_attempts": None if k < 3 else k + 1,
                             "job": {"dataset": j.entry()["dataset"]}} for k, j in enumerate(jobs)}
    done, _, todo = sweep._todo(before, jobs, True)
    assert (done, todo) == ({j.id for j in jobs}, [])
    sweep._previous_attempts(store, before, todo)
    assert sweep_main(["run", str(spec_file), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("  ok  ") == len(jobs) and read == []
    # the data changed: every job runs again, counting on from its record's total_attempts
    image = data / "a" / "0.png"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.warns(UserWarning, match="have changed since"):
        done, _, todo = sweep._todo(before, jobs, True)
    assert (done, todo) == (set(), jobs) and read == []
    sweep._previous_attempts(store, before, todo)
    assert sorted(read) == sorted(j.id for j in jobs[:3])  # only the old records, read whole
    assert [before[j.id]["total_attempts"] for j in jobs] == [1, 2, 3, 4, 5, 6]


# ---- random images ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, size", [(5, 32), (3, 7), (4, 5), (2, 1), (1, 2), (7, 3), (3, (5, 7)), (2, (1, 3))])
def test_random_images_are_the_tensor_drawn_whole(n, size):
    # 32 px: an image is a multiple of 16 values; 7 and 5 px cut blocks of 16 between images and
    # leave a tail; 2 images of 1 px are fewer than 16 values; (h, w): an oblong image
    h, w = size if isinstance(size, tuple) else (size, size)
    for seed in (0, 3):
        want = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
        images = RandomImages(n, size, seed)
        for order in (range(n), range(n - 1, -1, -1), [n - 1, 0, n // 2, n // 2]):
            got = torch.stack([images[i] for i in order])
            assert torch.equal(got, want[list(order)]), (n, size, seed, list(order))
        assert torch.equal(images[-1], want[-1])
    with pytest.raises(IndexError):
        RandomImages(2, 4)[2]


def test_a_random_job_draws_its_images_as_they_are_read():
    import pickle

    spec = load_spec({"name": "r", "datasets": [{"name": "noise", "kind": "random", "image_size": 16}],
                      "models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
                      "transforms": {"rotation": "rotation:90"}, "n_images": 5, "batch_size": 2,
                      "seeds": [4]})
    (job,) = spec.jobs()
    images, _ = job_inputs(job)
    assert isinstance(images, RandomImages) and len(images) == 5
    whole = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    images[3]
    again = pickle.loads(pickle.dumps(images))  # sent to a worker part-way through
    assert torch.equal(torch.stack([again[i] for i in range(5)]), whole)
    state, info = measure_job(job, 1, 2)  # the second shard: images 3 and 4
    assert info["n_images"] == 2
    torch.manual_seed(job.seed)
    model = ef.load_model("resnet18", weights=None, num_classes=2)[0]
    alone = ef.measure(model, whole[3:], transforms="rotation:90", batch_size=2, return_state=True)
    pd.testing.assert_frame_equal(state.report().points, alone.report().points)


def test_made_images_take_a_models_oblong_crop():
    # noise and embedded photos were made at 224 x 224 for a model whose own crop is h x w
    # (measure makes its photos at h x w): another input size than the model's, unsaid
    from torchvision import transforms as T

    crop = (24, 40)
    own = T.Compose([T.Resize(crop), T.CenterCrop(crop), T.ToTensor()])
    made = {}
    for kind in ("random", "embedded"):
        spec = load_spec({"name": "r", "datasets": [{"name": "made", "kind": kind}],
                          "models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
                          "transforms": {"f": "flip"}, "n_images": 3, "seeds": [2]})
        (job,) = spec.jobs()
        images, preprocess = job_inputs(job, own)
        made[kind] = torch.stack(list(images))
        assert preprocess is own and made[kind].shape == (3, 3, *crop), kind
    whole = torch.randn(3, 3, *crop, generator=torch.Generator().manual_seed(2))
    assert torch.equal(made["random"], whole)


# ---- the report of many models -------------------------------------------------------------

def _drawn_models(monkeypatch) -> dict:
    """``{figure file name: the models drawn in it}``, filled as figures 8, 11 and 12 are drawn."""
    import equifast.figures as figures

    drawn = {}
    for name in ("plot_parts", "plot_shifts"):
        real = getattr(figures, name)

        def spy(frames, path=None, _real=real, **kw):
            drawn[Path(path).name] = list(frames)
            return _real(frames, path=path, **kw)
        monkeypatch.setattr(figures, name, spy)
    return drawn


def test_report_of_many_models_draws_pages_of_them(measured, tmp_path, monkeypatch):
    # one figure of every model: hundreds of lines under one legend (fig11/12), or a PNG of a row
    # of panels per model, 69,360 pixels tall for 170 models (fig8)
    from equifast.distributed import analysis

    store = _fill(tmp_path / "sweep", measured, n_models=5, seeds=1)
    drawn = _drawn_models(monkeypatch)
    monkeypatch.setattr(analysis, "MODELS_PER_FIGURE", 2)
    out = tmp_path / "figures"
    files = analysis.sweep_figures(store.root, out, accuracy="known")
    models = [f"model{m}" for m in range(5)]
    pages = [models[:2], models[2:4], models[4:]]
    for base in ("fig11_translation", "fig12_rotation", "fig8_translation"):
        names = [f"{base}.png", f"{base}.2.png", f"{base}.3.png"]
        assert [drawn[n] for n in names] == pages, base
        assert all((out / n).is_file() and out / n in files["figures"] for n in names)
    # a report of fewer pages removes the pages it no longer has
    monkeypatch.setattr(analysis, "MODELS_PER_FIGURE", 10)
    drawn.clear()
    analysis.sweep_figures(store.root, out, accuracy="known")
    assert drawn["fig11_translation.png"] == models
    assert sorted(p.name for p in out.glob("fig*.png")) == [
        "fig11_translation.png", "fig12_rotation.png", "fig13_accuracy_correlation.png",
        "fig8_translation.png"]


def test_report_of_an_unfinished_sweep_says_whose_means_are_over_fewer_seeds(measured, tmp_path, monkeypatch):
    # a failed (or not yet run) seed's model was averaged over the other seeds and drawn like
    # the others, without a word: the report now warns, and the legends say so
    from equifast.distributed import analysis
    from equifast.warning import EquifastWarning

    store = _fill(tmp_path / "sweep", measured, n_models=3, seeds=2, failed=(1,))
    saved = store.read_spec()  # and one more job of the sweep, not run yet
    store.write_spec(saved["spec"], saved["jobs"] + ["f" * 16], saved["job_models"])
    drawn = _drawn_models(monkeypatch)
    # what the records say: the finished seeds of each model and family
    seeds = {}
    for rec in store.records(status="ok"):
        key = (rec["job"]["model"]["label"], rec["job"]["family"])
        seeds[key] = seeds.get(key, 0) + 1
    short = sorted(k for k, n in seeds.items() if n < 2)
    assert short == [("model0", "translation")]
    with pytest.warns(EquifastWarning) as caught:
        analysis.sweep_figures(store.root, tmp_path / "figures", accuracy="known")
    (said,) = [str(w.message) for w in caught if "The report holds" in str(w.message)]
    ok, total = sum(seeds.values()), len(saved["jobs"]) + 1
    assert f"holds {ok} of the sweep's {total} jobs (1 failed, 1 not run" in said
    assert re.findall(r"(\w+) / noise / (\w+): 1 of 2 seeds", said) == short
    assert drawn["fig11_translation.png"] == ["model0 (1 of 2 seeds)", "model1", "model2"]
    assert drawn["fig8_translation.png"] == drawn["fig11_translation.png"]
    assert drawn["fig12_rotation.png"] == ["model0", "model1", "model2"]
    scores = pd.read_csv(tmp_path / "figures" / "part_scores.csv")
    assert set(scores.loc[scores["seeds"] < 2, "model"]) == {"model0"}
    # a finished sweep: no such warning, plain legends
    done = _fill(tmp_path / "done", measured, n_models=3, seeds=2)
    drawn.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis.sweep_figures(done.root, tmp_path / "figures2", accuracy="known")
    assert not [w for w in caught if "The report holds" in str(w.message)]
    assert drawn["fig11_translation.png"] == ["model0", "model1", "model2"]


def test_the_stores_json_files_are_strict_json_with_nan_and_inf_as_null(tmp_path):
    # json.dumps writes NaN and Infinity, which no strict JSON reader takes
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    bad = {"a": float("nan"), "b": [float("inf"), np.float32("-inf")], "c": np.float64(1.5),
           "d": {"e": np.nan}}
    store = ResultStore(tmp_path)
    store.write_record({"id": "0123456789abcdef", "status": "ok", "meta": bad, "points": [],
                        "parts": [{"part": "early", "channel": float("nan")}]})
    store.write_spec({"meta": bad}, ["0123456789abcdef"])
    store.write_status({"meta": bad})
    for name in ("records/0123456789abcdef.json", "spec.json", "status.json"):
        doc = json.loads((tmp_path / name).read_text(), parse_constant=refuse)
        assert doc.get("meta", doc.get("spec", {}).get("meta")) == {
            "a": None, "b": [None, None], "c": 1.5, "d": {"e": None}}
    assert np.isnan(store.tables()["parts"]["channel"].iloc[0])  # read back as NaN

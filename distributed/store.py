"""The results store of a sweep: one record per job, written atomically, and combined tables.

Layout of a store folder::

    OUT/
      spec.json              the sweep spec and its job ids (written when a sweep starts)
      status.json            live counts while a sweep runs (read by `equifast sweep status`)
      records/<job id>.json  one record per job: status "ok" or "failed" (its id, status,
                             total_attempts and job first, read without its tables)
      points.parquet/.csv    every finished job's per-point table, with the job's columns
      parts.parquet/.csv     every finished job's per-part table, with the job's columns
                             (the tables hold the jobs of spec.json; records of an earlier
                             spec stay in records/, see ResultStore.tables)
      jobs.parquet/.csv      one row per record: model, dataset, transforms (the spec's family
                             name), seed, accuracy, status, seconds, error
      sweep.lock             held by the sweep that writes here (host and pid inside)
      shards/<id>.<i>-of-<k>.pt  shard i of k of a job not finished yet (its MeasureState and
                             info, torch.save'd atomically; read with weights_only=True),
                             reused by the next run; deleted once the job's "ok" record is
                             written

A record file appears only complete (written to a temporary name in the same folder, then
``os.replace``), so a killed driver never leaves a half-written result, and there is exactly
one record per job id: a rerun replaces a failed record and skips a finished one. Its first
field is the SHA-256 of the whole file (that field's value read as zeros): a record damaged
anywhere, in the middle of its tables too, reads as unreadable, and its job runs again.
"""
from __future__ import annotations

import codecs
import copy
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import zipfile
from operator import itemgetter
from pathlib import Path
from typing import Any, Collection, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd

from equifast._io import (FolderLock, atomic_write, check_own_folder, json_object_with, json_safe,
                          process_alive, save_torch_atomic, write_text_atomic)

__all__ = ["ResultStore", "records_frame", "STATES"]

#: The states a job can be in, as counted by the status file.
STATES = ("finished", "running", "failed", "pending")

# a record file (a job id: 16 hex digits), and one being written (equifast._io.atomic_write)
_RECORD = re.compile(r"[0-9a-f]{16}\.json")
_RECORD_TMP = re.compile(r"\.[0-9a-f]{16}\.json\.\d+\.[0-9a-f]{8}\.tmp")
# a finished shard of an unfinished job (shard i of k), and one being written
_SHARD = re.compile(r"(?P<id>[0-9a-f]{16})\.(?P<shard>\d+)-of-(?P<shards>\d+)\.pt")
_SHARD_TMP = re.compile(r"\.[0-9a-f]{16}\.\d+-of-\d+\.pt\.\d+\.[0-9a-f]{8}\.tmp")

#: The files that make a folder a sweep's store, each with what tells it from a user's file of
#: the same name (``spec.json`` is a common one: ``sweep status`` of a folder holding another
#: tool's failed with a KeyError): what write_spec and write_status write.
_MARKERS = {"spec.json": json_object_with("spec", "jobs"),
            "status.json": json_object_with("sweep", "state"),
            "sweep.lock": Path.is_file}

_JOB_COLUMNS = ["job_id", "model", "arch", "weights", "dataset", "transforms", "seed", "accuracy",
                "accuracy_measured", "accuracy_known", "accuracy_source"]


def _frame_records(df: pd.DataFrame) -> List[Dict[str, Any]]:
    """A DataFrame as JSON-ready row dicts with full float precision."""
    df = df.copy()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(str)
    return [json_safe(row) for row in df.to_dict(orient="records")]


#: The columns of a record's rows that are numbers, null where undefined (read as float64, NaN).
_FLOAT_COLUMNS = ("channel", "layer", "undefined_fraction", "layer_undefined_fraction",
                  "offdiagonal_fraction", "mean_activation", "mean_magnitude")


def records_frame(rows: List[Dict[str, Any]]) -> pd.DataFrame:
    """Rows stored by :meth:`ResultStore.write_record` back as a DataFrame (null -> NaN)."""
    df = pd.DataFrame(rows)
    for col in _FLOAT_COLUMNS:
        if col in df:
            df[col] = df[col].astype(float)
    return df


#: Rows of a combined table built into one DataFrame at a time (ResultStore.tables).
_CHUNK_ROWS = 200_000


def _columns(rows: List[Dict[str, Any]]) -> Tuple[int, Dict[str, Any]]:
    """A record's rows (dicts) as ``(number of rows, {column: values})``: the columns in the
    order their keys first appear, a key a row lacks NaN (as ``pandas.DataFrame(rows)`` fills
    it); the float columns (:data:`_FLOAT_COLUMNS`) float64 arrays (null: NaN), the others
    lists, each distinct string once (the parsed record's own copy of it is let go)."""
    n = len(rows)
    if not n:
        return 0, {}
    keys = tuple(rows[0])
    if len(keys) > 1 and all(tuple(r) == keys for r in rows):  # rows of one layout (all, written
        cols = dict(zip(keys, map(list, zip(*map(itemgetter(*keys), rows)))))  # by write_record)
    else:
        keys = tuple(dict.fromkeys(k for r in rows for k in r))
        cols = {k: [r.get(k, np.nan) for r in rows] for k in keys}
    strings: Dict[Optional[str], Optional[str]] = {}
    for k, values in cols.items():
        if k in _FLOAT_COLUMNS:
            cols[k] = np.array(values, dtype=float)
        elif set(map(type, values)) <= {str, type(None)}:  # (1 == 1.0 == True: no numbers)
            cols[k] = list(map(strings.setdefault, values, values))
    return n, cols


class _Rows:
    """The rows of many records' ``points`` (or ``parts``) lists, as one table.

    A DataFrame per record (and a concat of thousands) cost 5-15 ms a record, and a DataFrame
    of a list of row dicts 3-4 us a row. Records are added as columns (:func:`_columns`), made
    into a DataFrame a chunk of about :data:`_CHUNK_ROWS` rows at a time with the dtypes
    :func:`records_frame` gives the same rows (its inference for each column but the float
    ones, whose arrays are made as they are read), and the job columns are taken once per
    record and repeated over its rows.
    """

    def __init__(self):
        self.counts: List[int] = []          # rows of each record added
        self.chunks: List[pd.DataFrame] = []
        self.pending: Dict[str, List[Any]] = {}  # each column's pieces, one per record
        self.rows = 0                        # rows pending

    def add(self, n: int, cols: Dict[str, Any]) -> None:
        """Add a record's rows, :func:`_columns` of them."""
        self.counts.append(n)
        if not n:
            return
        for k, pieces in self.pending.items():
            if k not in cols:  # a column this record lacks: NaN, as pandas fills it
                pieces.append(np.full(n, np.nan) if k in _FLOAT_COLUMNS else [np.nan] * n)
        for k, values in cols.items():
            if k not in self.pending:
                self.pending[k] = ([np.full(self.rows, np.nan)] if k in _FLOAT_COLUMNS
                                   else [[np.nan] * self.rows])
            self.pending[k].append(values)
        self.rows += n
        if self.rows >= _CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            data = {k: (np.concatenate(pieces) if k in _FLOAT_COLUMNS
                        else list(itertools.chain.from_iterable(pieces)))
                    for k, pieces in self.pending.items()}
            self.chunks.append(pd.DataFrame(data, index=pd.RangeIndex(self.rows)))
            self.pending, self.rows = {}, 0

    def frame(self, per_record: pd.DataFrame) -> pd.DataFrame:
        """The table: ``per_record``'s row ``i`` (the job columns of the ``i``-th record added)
        in front of that record's rows."""
        self._flush()
        job = per_record.take(np.repeat(np.arange(len(self.counts)), self.counts))
        job = job.reset_index(drop=True)
        if not self.chunks:
            return job
        values = (self.chunks[0] if len(self.chunks) == 1
                  else pd.concat(self.chunks, ignore_index=True))
        return pd.concat([job, values], axis=1)


#: Records' parsed content kept between calls of ResultStore.tables, at most this many rows
#: (points and parts) in all: about 100 bytes a row.
_CACHE_ROWS = 1_000_000


_Entry = Tuple[Tuple[int, ...], Dict[str, Any], Dict[str, Tuple[int, Dict[str, Any]]]]


def _stamp(path: Path) -> Optional[Tuple[int, ...]]:
    """``(inode, size, mtime_ns, ctime_ns)`` of a record file (``None``: gone). A record file is
    only ever replaced (``os.replace`` of a new file), which changes them: a file of the same
    stamp holds the same record."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _parse(path: Path) -> Optional[Tuple[Dict[str, Any], Dict[str, Tuple[int, Dict[str, Any]]],
                                          Dict[str, Any]]]:
    """A record file as ``(the record less its rows, {"points": _columns, "parts": _columns},
    its head: _head_of)``, or ``None`` (unreadable)."""
    rec = _read(path)
    if not isinstance(rec, dict):
        return None
    rows = {name: _columns(rec.get(name) or []) for name in ("points", "parts")}
    return {k: v for k, v in rec.items() if k not in ("points", "parts")}, rows, _head_of(rec)


class _Parsed:
    """The parsed records of the store read last (:meth:`ResultStore.tables`), each kept with
    the :func:`_stamp` of its file, so that a file of the same stamp is not parsed again (one
    store at a time, up to :data:`_CACHE_ROWS` rows)."""

    def __init__(self):
        self.root: Optional[str] = None
        self.files: Dict[str, _Entry] = {}
        self.rows = 0

    def get(self, root: Path, path: Path):
        """``(stamp, record less its rows, {"points": columns, "parts": columns})`` of the record
        file ``path`` of the store ``root``, or ``None`` (unreadable)."""
        key = os.path.abspath(root)
        if key != self.root:
            self.root, self.files, self.rows = key, {}, 0
        stamp = _stamp(path)  # before reading: a file replaced in between is read again next time
        if stamp is None:
            return None
        name = os.path.abspath(path)  # (another store's record of the same job has its own)
        entry = self.files.get(name)
        if entry is not None and entry[0] == stamp:
            return entry
        if entry is not None:
            self.files.pop(name)
            self.rows -= sum(n for n, _ in entry[2].values())
        parsed = _parse(path)
        if parsed is None:
            return None
        *parsed, head = parsed
        _HEADS.put(path, stamp, head)  # the report's heads (_check_outside_data): not read again
        entry = (stamp, *parsed)
        n = sum(k for k, _ in entry[2].values())
        if self.rows + n <= _CACHE_ROWS:
            self.files[name] = entry
            self.rows += n
        return entry


_PARSED = _Parsed()


class _Heads:
    """The heads (:func:`_read_head`) of the record files of the records folder read last, each
    kept with the :func:`_stamp` of its file, so that a command reads (and hashes) each record
    file once however often it asks for its head: ``sweep status`` read every record twice
    (for the counts, then to list the failed ones), a run's start twice (which jobs run, before
    Ray starts; then again under the lock), and ``sweep report`` once more after the tables
    (:meth:`_Parsed.get` keeps the head of each record it parses). A record file is only ever
    replaced, which changes its stamp: it is read again."""

    def __init__(self):
        self.folder: Optional[str] = None
        self.files: Dict[str, Tuple[Optional[Tuple[int, ...]], Optional[Dict[str, Any]]]] = {}

    def _name(self, path: Path) -> str:
        folder = os.path.abspath(path.parent)
        if folder != self.folder:  # one records folder at a time
            self.folder, self.files = folder, {}
        return os.path.abspath(path)

    def get(self, path: Path) -> Optional[Dict[str, Any]]:
        """:func:`_front_fields` of ``path`` (a copy: callers may change it), read only where
        its stamp is not the one it was read at."""
        name = self._name(path)
        stamp = _stamp(path)  # before reading: a file replaced in between is read again next time
        if stamp is None:
            return None
        entry = self.files.get(name)
        if entry is None or entry[0] != stamp:
            entry = self.files[name] = (stamp, _front_fields(path))
        return copy.deepcopy(entry[1])

    def put(self, path: Path, stamp: Tuple[int, ...], head: Dict[str, Any]) -> None:
        """Keep the head of ``path`` as read (whole) at ``stamp``."""
        name = self._name(path)  # (first: it may start the folder's dict afresh)
        self.files[name] = (stamp, head)


_HEADS = _Heads()


class ResultStore:
    """A sweep's results folder (see the module docstring for the layout).

    Args:
        root: the folder; created when the first file is written.

    Example:
        >>> store = ResultStore("runs/sweep")                       # doctest: +SKIP
        >>> store.counts()                                          # doctest: +SKIP
        {'finished': 10, 'running': 0, 'failed': 1, 'pending': 1}
    """

    def __init__(self, root: os.PathLike):
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.shards_dir = self.root / "shards"

    # ---- records ----------------------------------------------------------------------------
    def record_path(self, job_id: str) -> Path:
        """Where the record of ``job_id`` lives."""
        return self.records_dir / f"{job_id}.json"

    def get(self, job_id: str) -> Optional[Dict[str, Any]]:
        """The record of ``job_id``, or ``None`` (also for an unreadable file, which reruns)."""
        return _read(self.record_path(job_id))

    def status_of(self, job_id: str) -> Optional[str]:
        """The status of ``job_id``'s record (``"ok"``, ``"failed"``), or ``None`` (no record, or
        an unreadable one), from its head (:meth:`head_of`): a finished job's record holds its
        whole tables."""
        return (self.head_of(job_id) or {}).get("status")

    def records_of(self, jobs) -> Dict[str, Optional[Dict[str, Any]]]:
        """``{job id: its record or None}`` for ``jobs`` (anything with an ``id``)."""
        return {j.id: self.get(j.id) for j in jobs}

    def head_of(self, job_id: str) -> Optional[Dict[str, Any]]:
        """The fields of ``job_id``'s record before its tables (``points``, ``parts``), or
        ``None`` as :meth:`get`: a failed record whole, a finished one's ``id``, ``status``,
        ``total_attempts`` (of a record written since it is kept there) and ``job``, its tables
        not parsed (see :func:`_read_head`). Reading every record whole made ``sweep status``
        of a large sweep read all of its tables."""
        return _read_head(self.record_path(job_id))

    def write_record(self, record: Dict[str, Any]) -> Path:
        """Write (or replace) the record of ``record["id"]`` atomically."""
        if not isinstance(record, dict) or not record.get("id") or record.get("status") not in ("ok", "failed"):
            got = ({k: record.get(k) for k in ("id", "status")} if isinstance(record, dict)
                   else type(record).__name__)
            raise ValueError("Expected a record dict with an 'id' and status 'ok' or 'failed', "
                             f"but got {got!r}.")
        # id, status, total_attempts and the job before the tables: head_of(), status_of() and
        # states() read no further (to parse; the file is read whole for its digest)
        head = {k: record[k] for k in ("id", "status", "total_attempts", "job") if k in record}
        record = {_DIGEST: _UNSEALED, **head, **{k: v for k, v in record.items() if k != _DIGEST}}
        text = json.dumps(json_safe(record), indent=1, allow_nan=False)
        return write_text_atomic(self.record_path(record["id"]), _sealed(text))

    def records(self, status: Optional[str] = None,
                ids: Optional[Collection[str]] = None) -> Iterator[Dict[str, Any]]:
        """Every readable record (``status``: only ``"ok"`` or only ``"failed"`` ones), by id;
        ``ids``: only those of these jobs (the others' files are not read)."""
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            if ids is not None and path.stem not in ids:
                continue
            if status is not None and (_read_head(path) or {}).get("status") != status:
                continue  # not read whole: a finished job's record holds its whole tables
            rec = _read(path)
            if rec is not None and (status is None or rec.get("status") == status):
                yield rec

    def states(self) -> Dict[str, str]:
        """``{job id: "ok" | "failed"}`` of every readable record."""
        out = {}
        if self.records_dir.is_dir():
            for path in self.records_dir.glob("*.json"):
                head = _read_head(path)
                if head is not None:
                    out[path.stem] = head.get("status")
        return out

    def unreadable(self, states: Optional[Dict[str, Optional[str]]] = None) -> List[Path]:
        """The job record files that cannot be read (damaged, or cut short by hand: records are
        written atomically); their jobs count as pending, and the next run measures them again.
        ``states``: :meth:`states`, where the caller has read them already."""
        if not self.records_dir.is_dir():
            return []
        states = self.states() if states is None else states
        return sorted(p for p in self.records_dir.glob("*.json")
                      if _RECORD.fullmatch(p.name) and p.stem not in states)

    def finished(self) -> set:
        """Ids of the jobs with an ``ok`` record."""
        return {k for k, v in self.states().items() if v == "ok"}

    def failed(self) -> set:
        """Ids of the jobs with a ``failed`` record."""
        return {k for k, v in self.states().items() if v == "failed"}

    # ---- finished shards of unfinished jobs -------------------------------------------------
    def shard_path(self, job_id: str, shard: int, shards: int) -> Path:
        """Where shard ``shard`` of ``shards`` of job ``job_id`` is kept until the job finishes
        (a job measured in another number of shards cuts its images elsewhere: other files)."""
        return self.shards_dir / f"{job_id}.{int(shard)}-of-{int(shards)}.pt"

    def write_shard(self, job_id: str, shard: int, shards: int, payload: Dict[str, Any]) -> Path:
        """Keep a finished shard's ``payload`` (its ``state`` and ``info``, and what it was
        measured with) atomically, so that a rerun of its unfinished job need not measure it."""
        return save_torch_atomic({**payload, "job_id": job_id, "shard": int(shard),
                                  "shards": int(shards)}, self.shard_path(job_id, shard, shards))

    def read_shard(self, job_id: str, shard: int, shards: int) -> Optional[Dict[str, Any]]:
        """What :meth:`write_shard` kept, or ``None`` (no file, or an unreadable one: damaged,
        an entry's CRC-32 does not hold, or of another format; or one of another job or shard)."""
        import torch

        path = self.shard_path(job_id, shard, shards)
        try:
            # torch.load does not check the CRC-32 of each entry of torch.save's zip: a byte
            # changed in the middle of the pickle was read as other sums, merged into the record
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return None
            # weights_only: a file in OUT/shards runs no code when read, whoever put it there;
            # only the plain classes of a MeasureState are rebuilt (_shard_classes)
            with torch.serialization.safe_globals(_shard_classes()):
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 -- missing, torn, of other classes (an older format)
            return None
        if not isinstance(payload, dict) or (payload.get("job_id"), payload.get("shard"),
                                             payload.get("shards")) != (job_id, shard, shards):
            return None
        return payload

    def shard_files(self) -> Dict[str, List[Tuple[int, int, Path]]]:
        """``{job id: [(shard, shards, path), ...]}`` of every kept shard file (by name; not read)."""
        out: Dict[str, List[Tuple[int, int, Path]]] = {}
        if self.shards_dir.is_dir():
            for path in sorted(self.shards_dir.iterdir()):
                m = _SHARD.fullmatch(path.name)
                if m:
                    out.setdefault(m["id"], []).append((int(m["shard"]), int(m["shards"]), path))
        return out

    def remove_shards(self, job_id: str, paths: Optional[Collection[Path]] = None) -> int:
        """Delete every kept shard file of ``job_id`` (of any number of shards); returns how many.

        ``paths``: where they can be (a driver's: the files it listed at its start and those it
        writes), deleted by name; ``None``: the folder is listed for them. A driver that listed
        the folder for each job it finished took time of its jobs times its kept shards (43 ms a
        job beside 4,000 kept shards of an earlier spec's or unfinished jobs)."""
        if paths is None:
            paths = [path for _, _, path in self.shard_files().get(job_id, [])]
        removed = 0
        for path in paths:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    # ---- spec and status --------------------------------------------------------------------
    def write_spec(self, spec_dict: Dict[str, Any], job_ids: List[str],
                   job_models: Optional[Dict[str, str]] = None,
                   job_datasets: Optional[Dict[str, str]] = None,
                   job_families: Optional[Dict[str, str]] = None) -> Path:
        """Save the sweep's spec and its job ids (so status works without the spec file).

        Args:
            job_models: ``{job id: model label}``, so that the tables show each job's model as
                the latest spec names it (ids do not depend on labels: a relabelled model
                skips its finished jobs, whose records keep the old label).
            job_datasets, job_families: ``{job id: dataset label}`` and ``{job id: the spec's
                name of its transform family}``, for the same reason: a renamed dataset or
                family (or a transform set moved to another family name) skips its finished
                jobs, whose records keep the old names.
        """
        saved = {"spec": spec_dict, "jobs": job_ids}
        for key, labels in (("job_models", job_models), ("job_datasets", job_datasets),
                            ("job_families", job_families)):
            if labels is not None:
                saved[key] = dict(labels)
        return write_text_atomic(self.root / "spec.json", json.dumps(json_safe(saved), indent=1))

    def read_spec(self) -> Optional[Dict[str, Any]]:
        """What :meth:`write_spec` saved, or ``None`` (also for a ``spec.json`` of a user's own:
        its keys are no sweep's)."""
        path = self.root / "spec.json"
        return json.loads(path.read_text()) if _MARKERS["spec.json"](path) else None

    def write_status(self, status: Dict[str, Any]) -> Path:
        """Replace ``status.json`` (the live counts)."""
        return write_text_atomic(self.root / "status.json", json.dumps(json_safe(status), indent=1))

    def read_status(self) -> Optional[Dict[str, Any]]:
        """The live status a running (or the last) sweep wrote, or ``None`` (also for a
        ``status.json`` of a user's own)."""
        path = self.root / "status.json"
        return json.loads(path.read_text()) if _MARKERS["status.json"](path) else None

    def state(self) -> Optional[str]:
        """The sweep's state as ``status.json`` says (``running``, ``done``, ``interrupted``),
        but ``stopped`` for a ``running`` sweep whose driver is gone (killed), ``None`` when
        no sweep wrote here."""
        status = self.read_status()
        if status is None:
            return None
        state = status.get("state")
        if state == "running" and not process_alive(status.get("host"), status.get("pid"),
                                                    status.get("started_at"), status.get("started")):
            return "stopped"
        return state

    def counts(self, job_ids: Optional[List[str]] = None,
               states: Optional[Dict[str, Optional[str]]] = None) -> Dict[str, int]:
        """Finished, running, failed and pending jobs, from the records and the status file.

        Args:
            job_ids: the sweep's jobs (default: those saved in ``spec.json``).
            states: :meth:`states`, where the caller has read them already.
        """
        states = self.states() if states is None else states
        if job_ids is None:
            saved = self.read_spec()
            job_ids = saved["jobs"] if saved else sorted(states)
        running, retried = self.live_ids(states)
        out = dict.fromkeys(STATES, 0)
        for jid in job_ids:
            s = states.get(jid)
            if s == "ok":
                out["finished"] += 1
            elif jid in running:
                out["running"] += 1
            elif s == "failed" and jid not in retried:
                out["failed"] += 1
            else:
                out["pending"] += 1
        return out

    def live_ids(self, states: Optional[Dict[str, Optional[str]]] = None):
        """``(running, retried)`` job ids of the sweep running now (empty sets when none
        runs): the ones its tasks are measuring, and the ones whose ``failed`` record (of an
        earlier run) it is to run again, which are pending, not failed, until they fail again.
        ``states``: :meth:`states`, where the caller has read them already."""
        if self.state() != "running":
            return set(), set()
        status = self.read_status() or {}
        running = set(status.get("running_ids", []))
        if "failed_ids" not in status:  # a driver of before failed_ids: its failures unknown
            return running, set()
        failed = set(status["failed_ids"])
        states = self.states() if states is None else states
        return running, {jid for jid, s in states.items() if s == "failed" and jid not in failed}

    # ---- single writer ----------------------------------------------------------------------
    def is_store(self) -> bool:
        """Whether the folder holds a sweep's files (its spec, status, lock or job records); a
        ``spec.json`` or ``status.json`` of a user's own (another tool's) is none of them."""
        if any(check(self.root / name) for name, check in _MARKERS.items()):
            return True
        return any(folder.is_dir() and any(pattern.fullmatch(p.name) for p in folder.iterdir())
                   for folder, pattern in ((self.records_dir, _RECORD), (self.shards_dir, _SHARD)))

    def check_folder(self) -> None:
        """Raise ``FileExistsError`` unless the folder is missing, empty or a sweep store (with
        ``spec.json`` or ``sweep.lock``, or a ``records/`` holding only job records): the tables
        written here would replace a user's files of the same names (points.csv, jobs.csv, ...),
        and a user's own ``records/`` folder is no sign of a store (nor is a ``shards/`` folder,
        unless it holds only kept shards)."""
        markers = ["spec.json", "sweep.lock"]
        for folder, patterns in ((self.records_dir, (_RECORD, _RECORD_TMP)),
                                 (self.shards_dir, (_SHARD, _SHARD_TMP))):
            if folder.is_dir():
                names = [p.name for p in folder.iterdir()]
                if names and all(any(p.fullmatch(n) for p in patterns) for n in names):
                    markers.append(folder.name)
        # a spec.json of the user's own (an API's) makes no folder a store
        check_own_folder(self.root, markers, "a sweep results folder", "--out",
                         {"spec.json": json_object_with("spec", "jobs")})

    def _lock(self) -> FolderLock:
        return FolderLock(self.root, "sweep.lock", "sweep")

    def lock(self) -> None:
        """Take ``sweep.lock`` so that two sweeps never write the same store at once.

        Raises:
            BlockingIOError: when a live process holds it (a stale lock is taken over); an
                ``OSError``, the kind a lock that would block raises.
        """
        if not self._lock().acquire():
            return
        # only the lock's holder writes records and shards: any half-written one is a killed
        # driver's
        for folder, pattern in ((self.records_dir, _RECORD_TMP), (self.shards_dir, _SHARD_TMP)):
            if folder.is_dir():
                for p in folder.iterdir():
                    if pattern.fullmatch(p.name):
                        p.unlink(missing_ok=True)

    def check_unlocked(self) -> None:
        """Raise the ``BlockingIOError`` :meth:`lock` would, touching nothing: a second driver
        is refused before it starts Ray."""
        self._lock().check()

    def unlock(self) -> None:
        """Release the lock this process holds."""
        self._lock().release()

    # ---- combined tables --------------------------------------------------------------------
    def tables(self, all_records: bool = False) -> Dict[str, pd.DataFrame]:
        """``{"points", "parts", "jobs"}`` DataFrames of the saved spec's jobs.

        ``points`` and ``parts`` hold finished jobs only, each row with the job's columns
        (``job_id, model, arch, weights, dataset, transforms, seed, accuracy, ...``); ``jobs``
        has one row per record, failed ones included with their error. A job's model label and
        known accuracy, its dataset's label and its transform family's name come from the
        latest saved spec, so fixing them there needs no re-measuring.

        Args:
            all_records: also the records of jobs that are not in the saved spec (a sweep of
                an earlier spec in the same folder: other settings make other jobs). They stay
                on disk, but by default are left out, so that they are not averaged in as if
                they were more seeds.

        A record is parsed once: a later call in this process takes the records whose file is
        unchanged as it parsed them (``sweep report`` and :mod:`.analysis` read the tables
        several times).
        """
        entries, job_models, job_datasets, job_families, wanted = {}, {}, {}, {}, None
        saved = self.read_spec()
        if saved:
            entries = {m["label"]: m for m in saved["spec"].get("models", [])}
            job_models = saved.get("job_models", {})
            job_datasets = saved.get("job_datasets", {})
            job_families = saved.get("job_families", {})
            wanted = None if all_records else set(saved["jobs"])
        # Built column-wise, not a DataFrame per record and one concat of them (5-15 ms a
        # record): the job columns once per record (repeated over its rows), the rows of many
        # records in one DataFrame per chunk of about _CHUNK_ROWS rows. A record whose file is
        # unchanged since an earlier call is not parsed again (_Parsed).
        jobs: List[Dict[str, Any]] = []
        ok_cols: List[Dict[str, Any]] = []  # the job columns of each "ok" record, in order
        rows: Dict[str, _Rows] = {"points": _Rows(), "parts": _Rows()}
        paths = (sorted(self.records_dir.glob("*.json")) if self.records_dir.is_dir() else [])
        for path in paths:
            if wanted is not None and path.stem not in wanted:
                continue
            entry = _PARSED.get(self.root, path)
            if entry is None:  # unreadable: counts as missing (as records() leaves it out)
                continue
            _, rec, columns = entry
            job = rec.get("job", {})
            model, dataset = job.get("model", {}), job.get("dataset", {})
            # the latest spec's label and known accuracy; the record's own for jobs not in it
            latest = entries.get(job_models.get(rec["id"], model.get("label")))
            if latest is not None:
                model = {**model, "label": latest["label"], "accuracy": latest.get("accuracy")}
            acc_known = model.get("accuracy")
            acc_measured = rec.get("accuracy_measured")
            cols = {"job_id": rec["id"], "model": model.get("label"), "arch": model.get("arch"),
                    # None (random) written "none", as a spec says it: an empty cell reads as unknown
                    "weights": "none" if model.get("weights") is None else model.get("weights"),
                    # as the latest spec names them, as the model
                    "dataset": job_datasets.get(rec["id"], dataset.get("label")),
                    "transforms": job_families.get(rec["id"], job.get("family")),
                    "seed": job.get("seed"),
                    "accuracy": acc_measured if acc_measured is not None else acc_known,
                    "accuracy_measured": acc_measured, "accuracy_known": acc_known,
                    "accuracy_source": "measured" if acc_measured is not None else (
                        "known" if acc_known is not None else None)}
            timings = rec.get("timings", {})
            jobs.append({**cols, "status": rec.get("status"), "n_images": rec.get("n_images"),
                         "shards": job.get("shards"), "attempts": rec.get("attempts"),
                         "total_attempts": rec.get("total_attempts"),
                         "seconds": timings.get("total_s"), "host": ",".join(rec.get("hosts", [])),
                         "finished_at": rec.get("finished_at"), "error": rec.get("error")})
            if rec.get("status") != "ok":
                continue
            ok_cols.append(cols)
            for name, sink in rows.items():
                sink.add(*columns[name])
        empty = pd.DataFrame(columns=_JOB_COLUMNS)
        out = {}
        if ok_cols:
            per_record = pd.DataFrame(ok_cols)
            for name, sink in rows.items():
                out[name] = sink.frame(per_record)
        else:
            out = {"points": empty, "parts": empty.copy()}
        out["jobs"] = pd.DataFrame(jobs) if jobs else pd.DataFrame(columns=_JOB_COLUMNS + ["status"])
        return out

    def write_tables(self) -> List[Path]:
        """Write the combined tables of the saved spec's jobs as Parquet and CSV (atomically);
        returns the files."""
        written = []
        for name, df in self.tables().items():
            for suffix in (".parquet", ".csv"):
                target = self.root / f"{name}{suffix}"
                atomic_write(target, lambda tmp, df=df, suffix=suffix: (
                    df.to_csv(tmp, index=False) if suffix == ".csv"
                    else _for_parquet(df).to_parquet(tmp, index=False)))
                written.append(target)
        return written

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"


def _shard_classes() -> List[type]:
    """The classes a kept shard's ``MeasureState`` is made of, the only ones
    :meth:`ResultStore.read_shard` rebuilds (``torch.load(weights_only=True)``): the state's
    own dataclasses, its points, and equifast's transforms (a sweep's transforms are parsed
    from text: never a user's class). A shard holding any other class is read as unreadable,
    so it is measured again."""
    from equifast import transforms
    from equifast.aggregate import ActivationState, ScoreState, VectorState
    from equifast.measurement import MeasureState
    from equifast.points import Point

    own = [c for c in vars(transforms).values() if isinstance(c, type) and not inspect.isabstract(c)
           and issubclass(c, transforms.Transform) and c.__module__ == transforms.__name__]
    return [MeasureState, ScoreState, VectorState, ActivationState, Point, *own]


# A record's first field: the SHA-256 of its file with this field's value as zeros
# (ResultStore.write_record). The head of a finished record lies before its tables, which are
# most of the file: a file damaged in their middle (not cut short, which its end shows) had a
# whole head, and its job counted as finished, its numbers left out of the tables unsaid.
_DIGEST = "sha256"
_UNSEALED = "0" * 64
_SEAL = b'{\n "sha256": "'  # how json.dumps(indent=1) writes it first
_SEALED_HEAD = len(_SEAL) + 64


def _sealed(text: str) -> str:
    """``text`` (a record's JSON, :data:`_DIGEST` first with :data:`_UNSEALED`) with its digest."""
    data = text.encode()  # ASCII: json.dumps' ensure_ascii
    assert data.startswith(_SEAL + _UNSEALED.encode())
    return text.replace(_UNSEALED, hashlib.sha256(data).hexdigest(), 1)


def _intact(data: bytes) -> bool:
    """Whether a record file's bytes are as :meth:`ResultStore.write_record` wrote them (its
    digest holds); a record written before records had one (no digest first) cannot be checked."""
    if not data.startswith(_SEAL):
        return True
    digest = data[len(_SEAL):_SEALED_HEAD]
    return hashlib.sha256(_SEAL + _UNSEALED.encode() + data[_SEALED_HEAD:]).hexdigest().encode() == digest


def _read(path: Path) -> Optional[Dict[str, Any]]:
    """A record file's content, or ``None`` (missing or unreadable: damaged anywhere, where it
    has a digest, :func:`_intact`)."""
    try:
        data = path.read_bytes()
        rec = json.loads(data) if _intact(data) else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):  # OSError: missing too
        return None
    if isinstance(rec, dict):
        rec.pop(_DIGEST, None)  # the store's, not the record's
    return rec


_HEAD = 4096


_TABLES = ("points", "parts")
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _read_head(path: Path) -> Optional[Dict[str, Any]]:
    """A record file's top-level fields before its first table (``points``, ``parts``), or all
    of them where it has none, and its ``status`` wherever it lies; ``None`` where :func:`_read`
    gives no dict (missing, unreadable). A finished job's tables are most of its record: a run
    of a large sweep parsed gigabytes of them for each job's dataset entry."""
    head = _HEADS.get(path)
    if head is not None and "status" not in head:  # a file written another way: after its tables?
        rec = _read(path)
        if isinstance(rec, dict) and "status" in rec:
            head["status"] = rec["status"]
    return head


def _head_of(rec: Dict[str, Any]) -> Dict[str, Any]:
    """The head of a record parsed whole, as :func:`_read_head` reads it from the front of its
    file: its fields before its first table (all of them where it has none), and its status."""
    head = dict(itertools.takewhile(lambda kv: kv[0] not in _TABLES, rec.items()))
    if "status" in rec:
        head.setdefault("status", rec["status"])
    return head


def _front_fields(path: Path) -> Optional[Dict[str, Any]]:
    """The fields of :func:`_read_head`, read from the front a block at a time (doubled until
    the fields before the tables are whole) where the file ends as
    :meth:`ResultStore.write_record` writes it (one with a digest read whole to check it,
    :func:`_intact`, and parsed as far); else parsed whole (then every field but the tables)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 2))
            if fh.read(2) == b"\n}":  # complete (a torn file is parsed whole, and refused)
                fh.seek(0)
                if fh.read(len(_SEAL)) == _SEAL:  # a digest: read whole to check it, not parsed
                    fh.seek(0)
                    data = fh.read()
                    if not _intact(data):
                        return None
                    head = _head_fields(data.decode())
                    if head is not None:
                        head.pop(_DIGEST, None)
                        return head
                fh.seek(0)
                decoder = codecs.getincrementaldecoder("utf-8")()
                text, block = "", _HEAD
                while True:
                    chunk = fh.read(block)
                    text += decoder.decode(chunk, final=not chunk)
                    head = _head_fields(text)
                    if head is not None:
                        return head
                    if not chunk:
                        break
                    block = len(text)
    except OSError:
        return None
    except UnicodeDecodeError:
        pass  # _read refuses it too
    rec = _read(path)
    return {k: v for k, v in rec.items() if k not in _TABLES} if isinstance(rec, dict) else None


def _head_fields(text: str) -> Optional[Dict[str, Any]]:
    """The top-level fields at the front of a JSON object's ``text`` up to its first table key
    or its end, or ``None`` where ``text`` does not hold them whole (cut short, or no object):
    each value is taken only once the ``,`` or ``}`` after it is read (a number cut short,
    ``1`` of ``12``, is whole JSON too)."""
    if not text.startswith("{"):
        return None
    fields: Dict[str, Any] = {}
    pos = 1
    try:
        while True:
            pos = _SPACE.match(text, pos).end()
            if text[pos] == "}":
                return fields
            if text[pos] != '"':
                return None
            key, pos = json.decoder.scanstring(text, pos + 1)
            if key in _TABLES:
                return fields
            pos = _SPACE.match(text, pos).end()
            if text[pos] != ":":
                return None
            value, pos = _DECODER.raw_decode(text, _SPACE.match(text, pos + 1).end())
            pos = _SPACE.match(text, pos).end()
            if text[pos] not in ",}":
                return None
            fields[key] = value
            pos += text[pos] == ","
    except (ValueError, IndexError):  # JSONDecodeError: cut inside a value
        return None


def _for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns with mixed types (e.g. accuracy_source: None or a string, a column of
    numbers and strings) as strings for Arrow."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                      else str(v))
    return df

"""Sweeps on Ray: many models, datasets, transform families and seeds, each result once.

    >>> from equifast.distributed import load_spec, run_sweep, analysis
    >>> result = run_sweep("distributed/examples/small.yaml")         # doctest: +SKIP
    >>> analysis.accuracy_correlation(result.out)                     # doctest: +SKIP

Modules: :mod:`.spec` (YAML/dict specs, validation, jobs with stable ids), :mod:`.sweep`
(execution on Ray, shards merged exactly), :mod:`.store` (atomic per-job records, combined
Parquet/CSV tables, status file), :mod:`.analysis` (part scores per model, Spearman with
accuracy, figures 11-13), :mod:`.cli` (``equifast sweep run|status|report``) and
:mod:`.entrypoint` (for ``ray job submit``). Ray is imported only when a sweep runs.
"""
from . import analysis
from .spec import DatasetEntry, Job, ModelEntry, SpecError, SweepSpec, load_spec
from .store import ResultStore
from .sweep import SweepResult, job_record, measure_job, run_sweep

__all__ = ["analysis", "load_spec", "SweepSpec", "ModelEntry", "DatasetEntry", "Job", "SpecError",
           "ResultStore", "run_sweep", "measure_job", "job_record", "SweepResult"]

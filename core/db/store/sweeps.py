"""Sweeps (docs/design.md, "Sweeps"): a hyperparameter search recorded in jobformer's own tables, its
trials ordinary jobs with a ``sweep_id``. Like every store function, each takes a ``Session`` first and
only flushes: the caller commits, THEN enqueues the trials it created (``Advance.created``).

``advance_sweep`` is the one step of a search: under the sweep's lock it reads the trials and their
curves, asks core.search for the ASHA decisions (cancelling the trials that fall behind, with a
checkpoint, through the job's own cancel) and for the next trials' parameters, creates those trials
through ``create_job`` (so the per-key active-job limit counts them), and ends the sweep when its last
trial ended. Every worker's reaper runs it for every running sweep, and the API once at POST /sweeps;
the lock and the unique (sweep_id, trial_number) make those calls safe to race: a trial is created once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import (
    ACTIVE_STATES,
    Job,
    JobStatus,
    MetricPoint,
    ModelRun,
    Sweep,
    SweepStatus,
    new_id,
    utcnow,
)
from core.db.store.datasets import lock_dataset
from core.db.store.locks import lock_key
from core.db.store.transitions import ActiveJobLimit, _event, create_job, request_cancel
from core.ml.config import TrainConfig
from core.search import (
    EarlyStopping,
    ParameterSpec,
    TrialRecord,
    apply_params,
    asha_decisions,
    config_problem,
    suggest,
)

log = logging.getLogger(__name__)

FAILING_TRIALS = 3  # this many failed trials and none with a value: the sweep fails


@dataclass
class Advance:
    """What one ``advance_sweep`` did: trials to enqueue after the commit (job id, queue), trials pruned,
    and the sweep's status now."""

    created: list[tuple[str, str]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    status: str | None = None


def create_sweep(s: Session, *, owner: str | None, dataset_id: str, **fields: Any) -> Sweep:
    """A new ``running`` sweep (no trials yet: ``advance_sweep`` creates them)."""
    sweep = Sweep(
        id=new_id(),
        owner=owner,
        dataset_id=dataset_id,
        status=SweepStatus.RUNNING,
        created_at=utcnow(),
        **fields,
    )
    s.add(sweep)
    s.flush()
    return sweep


def running_sweep_ids(s: Session) -> list[str]:
    return list(
        s.scalars(select(Sweep.id).where(Sweep.status == SweepStatus.RUNNING).order_by(Sweep.created_at))
    )


def sweep_trials(s: Session, sweep: Sweep) -> list[tuple[Job, TrialRecord]]:
    """The sweep's trials (jobs, by number) with what the search knows of each: parameters, state and the
    sweep's metric at each evaluation step (the newest point of a step, after a resume wrote it again)."""
    jobs = list(
        s.scalars(
            select(Job)
            .where(Job.sweep_id == sweep.id)
            .order_by(Job.trial_number)
            .execution_options(populate_existing=True)
        )
    )
    values: dict[str, dict[int, float]] = {j.id: {} for j in jobs}
    if jobs:
        rows = s.execute(
            select(MetricPoint.job_id, MetricPoint.step, MetricPoint.value)
            .where(
                MetricPoint.job_id.in_(list(values)),
                MetricPoint.split == "val",
                MetricPoint.name == sweep.metric.removeprefix("val_"),
            )
            .order_by(MetricPoint.id)
        )
        for row in rows:
            values[row.job_id][row.step] = row.value
    return [
        (
            j,
            TrialRecord(
                j.trial_number or 0, dict(j.trial_params or {}), _state(j), values[j.id], j.trial_rungs
            ),
        )
        for j in jobs
    ]


def trial_test_runs(s: Session, job_ids: list[str]) -> dict[str, ModelRun]:
    """The trials' test-set evaluations (a sweep with ``test_dataset_id``), by job id; a trial without one
    yet is absent."""
    if not job_ids:
        return {}
    runs = s.scalars(select(ModelRun).where(ModelRun.job_id.in_(job_ids), ModelRun.is_test.is_(True)))
    return {run.job_id: run for run in runs}


def _state(job: Job) -> Any:
    """The trial's state for the search: a pruned trial is ``pruned`` from the moment it was cancelled,
    unless it reached its last step before the cancel did (then it is ``complete``, like any other)."""
    if job.trial_pruned is not None and job.status != JobStatus.SUCCEEDED:
        return "pruned"
    if job.status == JobStatus.SUCCEEDED:
        return "complete"
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return "failed"
    return "running"


def advance_sweep(s: Session, sweep_id: str, *, max_attempts: int, active_limit: int | None) -> Advance:
    """One step of the search (see the module's docstring). A sweep that is not running is left alone."""
    lock_key(s, f"sweep:{sweep_id}")
    sweep = s.get(Sweep, sweep_id, populate_existing=True)
    out = Advance()
    if sweep is None or sweep.status != SweepStatus.RUNNING:
        out.status = sweep.status if sweep is not None else None
        return out
    trials = sweep_trials(s, sweep)
    if sweep.early_stopping:
        out.pruned = _prune(s, sweep, trials)
    records = [record for _, record in trials]
    failed = [job for job, _ in trials if job.status == JobStatus.FAILED]
    if len(failed) >= FAILING_TRIALS and not any(r.best(sweep.direction) is not None for r in records):
        first = failed[0]
        _end(
            s,
            sweep,
            trials,
            SweepStatus.FAILED,
            "trials_failing",
            f"{len(failed)} trials failed and none produced {sweep.metric}; the first: "
            f"{first.error_code}: {first.error_message}",
        )
        out.status = sweep.status
        return out
    active = sum(job.status in ACTIVE_STATES for job, _ in trials)
    number = len(trials)
    while active < sweep.max_parallel and number < sweep.max_jobs:
        created = _create_trial(
            s, sweep, records, number, max_attempts=max_attempts, active_limit=active_limit
        )
        if created is None:
            break
        out.created.append((created.id, created.queue))
        records.append(TrialRecord(number, dict(created.trial_params or {}), "running"))
        number, active = number + 1, active + 1
    if sweep.status == SweepStatus.RUNNING and number >= sweep.max_jobs and active == 0:
        if any(r.best(sweep.direction) is not None for r in records):
            _end(s, sweep, trials, SweepStatus.SUCCEEDED)
        else:
            _end(s, sweep, trials, SweepStatus.FAILED, "no_result", f"no trial produced {sweep.metric}")
    s.flush()
    out.status = sweep.status
    return out


def prune_trials(s: Session, sweep_id: str) -> list[str]:
    """ASHA's decisions for a running sweep, now: the pruning step of ``advance_sweep``, which a trial's
    worker asks for right after recording an evaluation, so a trial that falls behind stops at its rung
    rather than whenever a reaper passes (a short trial could end first). Returns the pruned job ids."""
    lock_key(s, f"sweep:{sweep_id}")
    sweep = s.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or sweep.status != SweepStatus.RUNNING or not sweep.early_stopping:
        return []
    return _prune(s, sweep, sweep_trials(s, sweep))


def _prune(s: Session, sweep: Sweep, trials: list[tuple[Job, TrialRecord]]) -> list[str]:
    """Apply ASHA's decisions: a passed rung is recorded; a trial that falls behind is cancelled (the
    worker saves a checkpoint and ends it ``cancelled``) and records why, in ``trial_pruned`` and an
    event. Returns the pruned job ids."""
    early = EarlyStopping.model_validate(sweep.early_stopping)
    by_number = {record.number: job for job, record in trials}
    # A trial's last evaluation is its result, not a rung: stopping a trial that has finished training
    # would only race its end.
    records = [
        replace(r, values={k: v for k, v in r.values.items() if k < _total_steps(j)}) for j, r in trials
    ]
    decisions = asha_decisions(
        records,
        direction=sweep.direction,
        early_stopping=early,
    )
    pruned = []
    for d in decisions:
        job = by_number[d.number]
        if not d.pruned:
            job.trial_rungs = d.rungs_passed
            continue
        if job.status != JobStatus.RUNNING:
            continue  # queued (no curve yet), stopping or ended already: nothing to cut short
        message = d.message(sweep.metric, early.reduction_factor)
        if request_cancel(s, job.id) is None or job.status != JobStatus.CANCELLING:
            continue
        job.trial_pruned = {"rung": d.rung, "step": d.step, "value": d.value, "message": message}
        _event(s, job.id, "pruned", message, {"rung": d.rung, "step": d.step, "value": d.value})
        log.info("sweep %s: trial %d pruned: %s", sweep.id, d.number, message, extra={"job_id": job.id})
        pruned.append(job.id)
    s.flush()
    return pruned


def _total_steps(job: Job) -> float:
    """The steps the trial trains in all: its progress says, else its max_steps (else no bound yet)."""
    total = (job.progress or {}).get("total_steps") or (job.config.get("training") or {}).get("max_steps")
    return float(total) if total else float("inf")


def _create_trial(
    s: Session,
    sweep: Sweep,
    records: list[TrialRecord],
    number: int,
    *,
    max_attempts: int,
    active_limit: int | None,
) -> Job | None:
    """Trial ``number`` as a queued job, or None when the owner's active-job limit is reached (the next
    pass tries again). Ends the sweep ``failed`` when its dataset is gone or the parameters drawn make an
    invalid config (ranges that only clash together, e.g. model.d_model and model.n_heads)."""
    params = suggest(
        sweep.method,
        {path: ParameterSpec.model_validate(spec) for path, spec in sweep.parameters.items()},
        seed=sweep.seed,
        direction=sweep.direction,
        trials=records,
        number=number,
        max_jobs=sweep.max_jobs,
    )
    raw = apply_params(sweep.config, params)
    why = config_problem(raw)
    if why is not None:
        _end(
            s,
            sweep,
            [],
            SweepStatus.FAILED,
            "invalid_trial_config",
            f"trial {number} drew {params}, which is not a valid config ({why}): narrow the ranges",
        )
        return None
    if lock_dataset(s, sweep.dataset_id) is None:
        _end(s, sweep, [], SweepStatus.FAILED, "dataset_deleted", f"dataset {sweep.dataset_id} was deleted")
        return None
    try:
        job = create_job(
            s,
            dataset_id=sweep.dataset_id,
            config=TrainConfig.model_validate(raw).model_dump(mode="json"),
            owner=sweep.owner,
            max_attempts=max_attempts,
            queue=sweep.queue,
            active_limit=active_limit,
        )
    except ActiveJobLimit:
        return None
    job.sweep_id, job.trial_number, job.trial_params = sweep.id, number, params
    job.test_dataset_id = sweep.test_dataset_id  # the worker evaluates it when the trial succeeds
    _event(
        s,
        job.id,
        "sweep_trial",
        f"Trial {number} of sweep {sweep.id}: {params}.",
        {"sweep_id": sweep.id, "trial": number, "params": params},
    )
    s.flush()
    return job


def _end(
    s: Session,
    sweep: Sweep,
    trials: list[tuple[Job, TrialRecord]],
    status: SweepStatus,
    code: str | None = None,
    message: str | None = None,
) -> None:
    """End the sweep (once: only a running one) and cancel its trials that have not ended."""
    sweep.status, sweep.finished_at, sweep.error_code, sweep.error_message = status, utcnow(), code, message
    for job, _ in trials:
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            request_cancel(s, job.id)
    s.flush()


def cancel_sweep(s: Session, sweep_id: str) -> Sweep | None:
    """Stop a running sweep: no more trials, and its queued and running trials are cancelled (a running
    one saves a checkpoint first). A sweep that ended stays as it is. None: no such sweep."""
    lock_key(s, f"sweep:{sweep_id}")
    sweep = s.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or sweep.status != SweepStatus.RUNNING:
        return sweep
    _end(s, sweep, sweep_trials(s, sweep), SweepStatus.CANCELLED)
    return sweep

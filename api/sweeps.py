"""Sweeps (POST /sweeps and the answers of /sweeps; docs/design.md, "Sweeps"): check every problem of a
search before any trial starts, record it with its first trials in one transaction, enqueue those after
the commit; the leaderboard from the trials' jobs and curves."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

import broker
from api.deps import get_owned_dataset
from api.errors import ProblemError
from api.model_runs import check_test_dataset, run_summary
from api.schemas import EvaluationSummaryPublic
from api.submission import (
    BROKER_DOWN_WARNING,
    StoredDataset,
    check_active_limit,
    check_model_size,
    parse_train_config,
    resolve_queue,
)
from api.sweep_schemas import DEFAULT_MAX_JOBS, SweepCreate, SweepPublic, SweepTrialPublic
from api.views import finite
from core.db import store
from core.db.models import Job, JobStatus, ModelRun, RunStatus, Sweep
from core.db.store.sweeps import trial_test_runs
from core.ml.config import TrainConfig
from core.ml.errors import ConfigError, Problem, format_problems
from core.search import DEFAULT_METRIC, METRICS, TrialRecord, apply_params, grid_points, space_problems
from core.settings import Settings

log = logging.getLogger(__name__)


def _invalid(problems: list[Problem]) -> ConfigError:
    return ConfigError("invalid sweep: " + format_problems(problems), code="invalid_sweep", problems=problems)


def check_sweep(body: SweepCreate, config: TrainConfig, settings: Settings) -> tuple[str, str, int]:
    """The sweep's metric, direction and max_jobs, or a 422 naming every problem of its search: unknown
    config paths, values or range ends that make an invalid or too large model, a metric the task does
    not have, limits this server does not allow."""
    task_metrics = METRICS[config.task]
    metric = body.metric or DEFAULT_METRIC[config.task]
    base = config.model_dump(mode="json")
    problems = space_problems(base, body.parameters, body.method, body.max_jobs)
    if metric not in task_metrics:
        problems.append(
            Problem(["metric"], f"a {config.task} job records {', '.join(task_metrics)}: pick one of those")
        )
    for path, spec in body.parameters.items():
        if any(p.loc[-1] == path for p in problems):
            continue
        for value in spec.extremes():
            try:
                check_model_size(TrainConfig.model_validate(apply_params(base, {path: value})), settings)
            except ConfigError as e:
                problems.append(Problem(["parameters", path], f"{value!r}: {e.message}", "too_large"))
                break
    if body.max_parallel > settings.max_active_jobs_per_key:
        problems.append(
            Problem(
                ["max_parallel"],
                f"at most {settings.max_active_jobs_per_key} jobs may be active per key "
                "(JOBFORMER_MAX_ACTIVE_JOBS_PER_KEY): lower max_parallel",
            )
        )
    max_steps = config.training.max_steps
    if (
        body.early_stopping is not None
        and max_steps is not None
        and body.early_stopping.min_steps >= max_steps
    ):
        problems.append(
            Problem(
                ["early_stopping", "min_steps"],
                f"must be below training.max_steps ({max_steps}): the first rung comes before the end",
            )
        )
    if problems:
        raise _invalid(problems)
    if body.max_jobs is not None:
        max_jobs = body.max_jobs
    elif body.method == "grid":
        max_jobs = len(grid_points(body.parameters, seed=0))
    else:
        max_jobs = DEFAULT_MAX_JOBS
    return metric, body.direction or task_metrics[metric], max_jobs


def submit_sweep(
    session: Session, settings: Settings, owner: str | None, body: SweepCreate
) -> tuple[Sweep, list[str]]:
    """Check, record (the sweep and its first trials, one commit), then enqueue those trials. Returns the
    sweep and the warnings to show."""
    queue = resolve_queue(settings, body.queue)
    config = parse_train_config(body.config)
    check_model_size(config, settings)
    metric, direction, max_jobs = check_sweep(body, config, settings)
    if get_owned_dataset(session, body.dataset_id, owner) is None:
        raise ProblemError(404, f"dataset {body.dataset_id} not found", code="not_found")
    if body.test_dataset_id is not None:  # checked as POST /jobs checks it: 404 not yours, 422 a column
        check_test_dataset(session, body.test_dataset_id, config.model_dump(mode="json"), owner)
    check_active_limit(session, settings, owner)
    # The base config against the file (columns, labels, rows), and the dataset locked until the commit.
    dataset = StoredDataset(body.dataset_id).dataset(session, settings, config, owner)
    sweep = store.create_sweep(
        session,
        owner=owner,
        dataset_id=dataset.id,
        config=config.model_dump(mode="json"),
        parameters={path: spec.model_dump(exclude_none=True) for path, spec in body.parameters.items()},
        method=body.method,
        max_jobs=max_jobs,
        max_parallel=body.max_parallel,
        metric=metric,
        direction=direction,
        seed=body.seed,
        early_stopping=body.early_stopping.model_dump() if body.early_stopping else None,
        queue=queue,
        test_dataset_id=body.test_dataset_id,
    )
    step = store.advance_sweep(
        session, sweep.id, max_attempts=settings.max_attempts, active_limit=settings.max_active_jobs_per_key
    )
    session.commit()
    log.info("sweep %s created with %d trials started", sweep.id, len(step.created))
    warnings = []
    for job_id, job_queue in step.created:
        trial = session.get(Job, job_id)
        needs = broker.job_needs(trial.config if trial is not None else None)
        try:
            broker.enqueue_job(job_id, job_queue, needs=needs, settings=settings)
        except Exception as e:  # noqa: BLE001 - the reapers re-send a queued job whose message is gone
            log.error("job %s: enqueue failed: %s", job_id, e, extra={"job_id": job_id})
            warnings = [BROKER_DOWN_WARNING]
    return sweep, warnings


def cancel(session: Session, sweep: Sweep) -> Sweep:
    """Stop the search and its trials (running ones save a checkpoint); 409 for a sweep that ended
    otherwise."""
    if sweep.status in ("succeeded", "failed"):
        raise ProblemError(
            409, f"sweep {sweep.id} already {sweep.status}; nothing to cancel", code="sweep_finished"
        )
    store.cancel_sweep(session, sweep.id)
    session.commit()
    session.refresh(sweep)
    return sweep


# --- the answers ------------------------------------------------------------------------------------


def _entry(job: Job, record: TrialRecord, direction: str, test: ModelRun | None) -> SweepTrialPublic:
    # Pruned: cut short by ASHA. A trial that reached its last step before the cancel did succeeded, whole.
    cut_short = job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    pruned = (job.trial_pruned or {}).get("message") if cut_short else None
    steps = (job.progress or {}).get("step") or max(record.values, default=0)
    report = (test.report or {}) if test is not None and test.status == RunStatus.SUCCEEDED else {}
    return SweepTrialPublic(
        number=record.number,
        job_id=job.id,
        state="pruned" if pruned else job.status,
        params=record.params,
        metric=finite(record.best(direction)),  # type: ignore[arg-type]
        steps=int(steps),
        pruned=pruned,
        test_evaluation=_test_summary(test),
        test_accuracy=_number(report.get("accuracy")),
        test_f1_macro=_number(report.get("f1_macro")),
    )


def _number(value: object) -> float | None:
    return finite(value) if isinstance(value, int | float) else None


def _test_summary(run: ModelRun | None) -> EvaluationSummaryPublic | None:
    """The trial's test-set evaluation in short, as ``test_evaluation`` in GET /jobs/{id}."""
    return None if run is None else run_summary(run)


def leaderboard(entries: list[SweepTrialPublic], direction: str) -> list[SweepTrialPublic]:
    """Best metric first (ties: the lower trial number); trials without a value last, by number."""
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(
        entries, key=lambda e: (e.metric is None, sign * e.metric if e.metric is not None else 0.0, e.number)
    )


def sweep_public(session: Session, sweep: Sweep) -> SweepPublic:
    trials = store.sweep_trials(session, sweep)
    tests = trial_test_runs(session, [job.id for job, _ in trials]) if sweep.test_dataset_id else {}
    entries = [_entry(job, record, sweep.direction, tests.get(job.id)) for job, record in trials]
    board = leaderboard(entries, sweep.direction)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.state] = counts.get(e.state, 0) + 1
    error = {"code": sweep.error_code, "message": sweep.error_message or ""} if sweep.error_code else None
    return SweepPublic(
        id=sweep.id,
        status=sweep.status,
        dataset_id=sweep.dataset_id,
        config=sweep.config,
        parameters=sweep.parameters,
        method=sweep.method,
        max_jobs=sweep.max_jobs,
        max_parallel=sweep.max_parallel,
        metric=sweep.metric,
        direction=sweep.direction,
        seed=sweep.seed,
        early_stopping=sweep.early_stopping,
        queue_name=sweep.queue,
        test_dataset_id=sweep.test_dataset_id,
        created_at=sweep.created_at,
        finished_at=sweep.finished_at,
        error=error,  # type: ignore[arg-type]
        counts=counts,
        best=board[0] if board and board[0].metric is not None else None,
        leaderboard=board,
    )


def get_owned_sweep(session: Session, sweep_id: str, owner: str | None) -> Sweep:
    """The sweep, or a 404 problem when it does not exist or belongs to another key (not 403: no leak)."""
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or (owner is not None and sweep.owner != owner):
        raise ProblemError(404, f"sweep {sweep_id} not found", code="not_found")
    return sweep

"""What the API answers: the ORM rows as their ``*Public`` schemas, and a queued job's place in its queue
with the warnings a person should see (docs/design.md, "Queues")."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import broker
from api.model_runs import test_evaluation_summary
from api.schemas import (
    CheckpointPublic,
    DatasetPublic,
    EventPublic,
    JobPublic,
    MetricPointPublic,
    QueuePublic,
)
from core.db.models import Checkpoint, Dataset, Event, Job, JobStatus, MetricPoint
from core.db.session import get_sessionmaker
from core.ml.config import TrainConfig
from core.ml.resources import memory_gib

UNKNOWN_WORKERS_WARNING = "the broker did not answer: cannot tell whether a worker is online"


def finite(v: Any) -> float | None:
    """JSON has no NaN/inf (a diverged run can record them): answer null instead of failing."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def encode_view(answer: JobPublic) -> tuple[bytes, str]:
    """The answer's JSON as GET /jobs/{id} sends it, and a weak ETag over it: equal JSON, equal tag
    (docs/design.md, "Live updates")."""
    body = answer.model_dump_json().encode()
    return body, f'W/"{hashlib.sha256(body).hexdigest()[:32]}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an ``If-None-Match`` list names ``tag`` (weak comparison, RFC 9110 13.1.2) or is ``*``."""
    if not if_none_match:
        return False
    opaque = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False


def dataset_public(d: Dataset) -> DatasetPublic:
    fmt = dict(d.format or {})
    warnings = fmt.pop("warnings", [])
    return DatasetPublic(
        id=d.id,
        filename=d.filename,
        size_bytes=d.size_bytes,
        sha256=d.sha256,
        format=fmt,  # type: ignore[arg-type]
        rows=d.rows,
        columns=[str(c) for c in d.columns],
        preview=[{str(k): str(v) for k, v in row.items()} for row in d.preview],
        warnings=list(warnings),
        created_at=d.created_at,
    )


def job_public(
    job: Job, *, queue_info: QueuePublic | None = None, warnings: list[str] | None = None
) -> JobPublic:
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    trial = None
    if job.sweep_id is not None:
        pruned = (job.trial_pruned or {}).get("message")
        trial = {"number": job.trial_number, "params": job.trial_params or {}, "pruned": pruned}
        if pruned and error is None and job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
            # A pruned trial ends `cancelled` like any cancel; its error says why (docs/design.md, "Sweeps").
            error = {"code": "pruned", "message": pruned}
    progress = dict(job.progress) if job.progress else None
    if progress is not None:
        for k in ("percent", "eta_seconds", "tokens_per_second", "train_loss"):
            if k in progress and progress[k] is not None:
                progress[k] = finite(progress[k])
    best = dict(job.best) if job.best else None
    if best is not None and finite(best.get("value")) is None:
        best = None
    return JobPublic(
        id=job.id,
        status=job.status,
        dataset_id=job.dataset_id,
        config=job.config,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts or 0,
        max_attempts=job.max_attempts,
        error=error,  # type: ignore[arg-type]
        progress=progress,  # type: ignore[arg-type]
        metrics={k: v for k, v in ((k, finite(v)) for k, v in (job.metrics or {}).items()) if v is not None},
        best=best,  # type: ignore[arg-type]
        queue_name=job.queue,
        queue=queue_info,
        warnings=warnings or [],
        sweep_id=job.sweep_id,
        trial=trial,  # type: ignore[arg-type]
        webhook_url=job.webhook_url,
        test_dataset_id=job.test_dataset_id,
    )


def job_view(request: Request, session: Session, job: Job, warnings: Iterable[str] = ()) -> JobPublic:
    """The job as GET /jobs/{id} shows it: a queued one with its queue position and its queue's warnings
    after ``warnings``."""
    queue_info, queue_warnings = queue_view(request, session, job)
    answer = job_public(job, queue_info=queue_info, warnings=[*warnings, *queue_warnings])
    answer.test_evaluation = test_evaluation_summary(session, job)  # api/model_runs.py
    return answer


def read_job_view(request: Request, job_id: str) -> tuple[str | None, JobPublic] | None:
    """The job's owner and its view as GET /jobs/{id} shows it (None: no such job), read in a session of
    its own. Runs in a worker thread, once for every request waiting on it (api/jobviews.py)."""
    with get_sessionmaker(request.app.state.settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        return None if job is None else (job.owner, job_view(request, session, job))


def metric_points_public(rows: Iterable[MetricPoint]) -> list[MetricPointPublic]:
    """The points with a finite value (JSON has no NaN/inf)."""
    return [
        MetricPointPublic(step=p.step, epoch=p.epoch, split=p.split, name=p.name, value=v, time=p.time)
        for p in rows
        if (v := finite(p.value)) is not None
    ]


def event_public(e: Event) -> EventPublic:
    return EventPublic(id=e.id, time=e.time, kind=e.kind, message=e.message, data=e.data)


def checkpoint_public(c: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(
        name=c.name,
        step=c.step,
        metrics=c.metrics or {},
        size_bytes=c.size_bytes,
        is_best=c.is_best,
        created_at=c.created_at,
    )


# --- a queued job's queue ---------------------------------------------------------------------------


def no_worker_warning(queue_name: str) -> str:
    return (
        f"no worker is online for queue '{queue_name}': the job will start when one connects "
        f"(start one with `jobformer worker -Q {queue_name}`)"
    )


def _workers_online(request: Request, queue_name: str) -> int | None:
    """Workers consuming ``queue_name`` (cached by ``broker.workers_online``); None: the broker did not
    answer."""
    return broker.workers_online(queue_name, timeout=1.0, settings=request.app.state.settings)


def _capacity_warning(request: Request, job: Job) -> list[str]:
    """A job needing more processes or memory than any online worker of its queue offers (docs/design.md,
    "Queues" and "Memory"): it waits in its capacity queue, which no online worker consumes, until one
    that can run it comes online."""
    needs = broker.job_needs(job.config)
    if needs == broker.Needs():
        return []
    offers = broker.offers_online(job.queue, timeout=1.0, settings=request.app.state.settings)
    if not offers or any(broker.fits(o, needs) for o in offers):
        return []  # unknown (no broker, or no offer online: the no-worker warning), or it will run
    most = max(o.processes for o in offers)
    if needs.processes > most:
        return [
            f"the job asks for resources.processes={needs.processes}, but the most any online worker of "
            f"queue '{job.queue}' can run is {most}: it stays queued until a worker that can "
            f"run {needs.processes} comes online; lower resources.processes to {most}, or start "
            "a worker with more GPUs or cores on this queue (JOBFORMER_WORKER_PROCESSES sets what a worker "
            "offers)"
        ]
    # The offer with the most memory for a process of this job, among those with enough processes.
    largest = max(
        (o for o in offers if o.processes >= needs.processes),
        key=lambda o: (o.memory_gib or 0.0) / (1 if o.gpu else needs.processes),
    )
    config = TrainConfig.model_validate(job.config)
    stated, gib = config.resources.memory_gb is not None, memory_gib(config)
    need = f"resources.memory_gb={gib:g} GiB" if stated else f"about {gib:.1f} GiB"
    offered = "no memory figure" if largest.memory_gib is None else f"{largest.memory_gib:.1f} GiB"
    if largest.gpu:
        offered += " per GPU"
    elif needs.processes > 1:
        offered += ", shared by the job's processes"
    return [
        f"the job needs {need} per process (memory tier {needs.memory_tier} GiB), more than any online "
        f"worker of queue '{job.queue}' offers (the largest: {offered}): it stays queued until one that "
        "does comes online; make it smaller (training.batch_size or a higher training.grad_accum_steps, model.max_length, "
        "model.d_model, model.n_layers), "
        + (
            "lower resources.memory_gb if it asks too much"
            if stated
            else "set resources.memory_gb if the estimate is too high"
        )
        + ", or start a worker with more memory on this queue (JOBFORMER_WORKER_MEMORY_GB sets what a "
        "worker offers)"
    ]


def queue_view(request: Request, session: Session, job: Job) -> tuple[QueuePublic | None, list[str]]:
    """A queued job's place in its own queue, and that queue's workers.

    The position counts the queued jobs of that queue created before this one, whoever owns them: it is
    the honest wait, and it shows other keys' jobs as a number only, never an id or anything else."""
    if job.status != JobStatus.QUEUED:
        return None, []
    ahead = (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.status == JobStatus.QUEUED.value,
                Job.queue == job.queue,
                Job.created_at < job.created_at,
            )
        )
        or 0
    )
    online = _workers_online(request, job.queue)
    warnings = []
    if online == 0:
        warnings.append(no_worker_warning(job.queue))
    elif online is None:
        warnings.append(UNKNOWN_WORKERS_WARNING)
    else:
        warnings.extend(_capacity_warning(request, job))
    return QueuePublic(position=ahead + 1, workers_online=online), warnings

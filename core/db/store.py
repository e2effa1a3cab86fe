"""The job store: every job state transition of DESIGN.md section 3 lives here, and only here.

    queued -> running -> succeeded | failed
                      -> cancelling -> cancelled
    queued -> cancelled
    running -> queued        (worker lost: stale heartbeat; or a graceful SIGTERM hand-off)

Each transition is one conditional ``UPDATE ... WHERE id = :id AND status IN (...)``: the database decides
which of two racing workers claims a job and which writer sets the end state, on PostgreSQL and SQLite
alike (no ``SELECT ... FOR UPDATE``, which SQLite lacks). A function returns whether its update matched.

Every function takes a ``Session`` first and only flushes: the caller commits, so each write is a short
transaction (``core.db.session.session_scope``). Times come from the Python clock (``utcnow``), which
keeps the comparisons identical on both backends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.db.models import (
    Checkpoint,
    Dataset,
    Event,
    Job,
    JobStatus,
    MetricPoint,
    new_id,
    utcnow,
)
from core.ml.callbacks import CheckpointInfo
from core.ml.callbacks import MetricPoint as MetricPointData

log = logging.getLogger(__name__)

_LIVE = (JobStatus.RUNNING, JobStatus.CANCELLING)
_ENDS = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def _update_job(s: Session, job_id: str, where: Iterable[Any], **values: Any) -> bool:
    """One conditional UPDATE of one job row; True when it matched (the transition happened)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    matched = s.execute(stmt).rowcount == 1
    if matched:
        # The UPDATE bypassed the identity map: a Job object the caller holds reloads on next access.
        cached = s.identity_map.get(s.identity_key(Job, job_id))
        if cached is not None:
            s.expire(cached)
    return matched


def _event(s: Session, job_id: str, kind: str, message: str, data: dict | None = None) -> None:
    s.add(Event(job_id=job_id, kind=kind, message=message, data=data, time=utcnow()))


def get_job(s: Session, job_id: str) -> Job | None:
    """The job row as stored now (bypassing anything cached in the session)."""
    return s.get(Job, job_id, populate_existing=True)


# --------------------------------------------------------------------------------------------- create


def create_dataset(
    s: Session,
    *,
    owner: str | None,
    filename: str,
    size_bytes: int,
    sha256: str,
    path: str,
    format: dict,
    rows: int,
    columns: list,
    preview: list,
) -> Dataset:
    """Record an uploaded file (already stored at ``path``, relative to the data directory)."""
    dataset = Dataset(
        id=new_id(),
        owner=owner,
        filename=filename,
        size_bytes=size_bytes,
        sha256=sha256,
        path=path,
        format=format,
        rows=rows,
        columns=columns,
        preview=preview,
        created_at=utcnow(),
    )
    s.add(dataset)
    s.flush()
    return dataset


def create_job(s: Session, *, dataset_id: str, config: dict, owner: str | None, max_attempts: int) -> Job:
    """A new ``queued`` job with its "queued" event. Commit first, THEN ``worker.queue.enqueue_job``."""
    job = Job(
        id=new_id(),
        owner=owner,
        dataset_id=dataset_id,
        status=JobStatus.QUEUED,
        config=config,
        created_at=utcnow(),
        attempts=0,
        max_attempts=max_attempts,
    )
    s.add(job)
    s.flush()
    _event(s, job.id, "queued", "Job queued.")
    s.flush()
    return job


# ------------------------------------------------------------------------------------------ transitions


def request_cancel(s: Session, job_id: str) -> Job | None:
    """Cancel a job: ``queued`` -> ``cancelled`` at once; ``running`` -> ``cancelling`` (the worker sees
    it at its next poll, saves a checkpoint and ends the job ``cancelled``); any other state unchanged.
    Returns the job as it is now, or None when there is no such job."""
    now = utcnow()
    if _update_job(
        s,
        job_id,
        [Job.status == JobStatus.QUEUED],
        status=JobStatus.CANCELLED,
        finished_at=now,
    ):
        _event(s, job_id, "cancelled", "Cancelled before it started.")
    elif _update_job(s, job_id, [Job.status == JobStatus.RUNNING], status=JobStatus.CANCELLING):
        _event(
            s, job_id, "cancelling", "Cancel requested: stopping at the next step and saving a checkpoint."
        )
    s.flush()
    return get_job(s, job_id)


LATEST_ROW = object()  # claim_job's default: resume from the latest checkpoint row


def claim_job(s: Session, job_id: str, worker: str, *, resume_step: Any = LATEST_ROW) -> Job | None:
    """Atomically take a ``queued`` job for ``worker`` ("hostname:pid"): ``running``, attempts + 1,
    ``started_at`` (first run only), a fresh heartbeat. None when the job is not queued (already running
    elsewhere, finished, cancelled or unknown): the broker may deliver a message twice, this may not.

    On a later run (the job was requeued), metric points after the step of the latest checkpoint row are
    deleted: training resumes from that checkpoint, so the curve continues without duplicates. A worker
    passes ``resume_step``, the step of the latest checkpoint on disk (None: none), which is the one the
    loop resumes from: a worker killed between writing a checkpoint and recording its row leaves the disk
    ahead of the rows, and cutting the curve back to the row would leave a gap in it."""
    now = utcnow()
    claimed = _update_job(
        s,
        job_id,
        [Job.status == JobStatus.QUEUED],
        status=JobStatus.RUNNING,
        attempts=Job.attempts + 1,
        started_at=func.coalesce(Job.started_at, now),
        heartbeat_at=now,
        worker=worker,
        error_code=None,
        error_message=None,
    )
    if not claimed:
        return None
    job = get_job(s, job_id)
    assert job is not None
    if resume_step is LATEST_ROW:
        resume_step = latest_checkpoint_step(s, job_id)
    has_points = s.scalar(select(func.count()).select_from(MetricPoint).where(MetricPoint.job_id == job_id))
    if resume_step is None and not has_points:
        _event(
            s, job_id, "started", f"Started on {worker} (attempt {job.attempts}).", {"attempt": job.attempts}
        )
    else:
        pruned = prune_metrics(s, job_id, after_step=resume_step or 0)
        step = resume_step or 0
        _event(
            s,
            job_id,
            "resumed",
            f"Resumed on {worker} (attempt {job.attempts}) from step {step}"
            + ("" if resume_step is not None else " (no checkpoint: starting over)")
            + ".",
            {"attempt": job.attempts, "step": step, "pruned_metric_points": pruned},
        )
    s.flush()
    return job


def heartbeat(s: Session, job_id: str, worker: str, *, touch: bool = True) -> str | None:
    """Refresh the heartbeat of a job held by ``worker``; return the job's status now (the worker stops
    when it is ``cancelling``, or when it is no longer ``running``). None when the job is gone or is no
    longer held by this worker (it was declared lost and taken over): the worker must stop at once.
    ``touch=False`` only reads the status (the worker polls for a cancel more often than it beats)."""
    if touch:
        _update_job(s, job_id, [Job.worker == worker, Job.status.in_(_LIVE)], heartbeat_at=utcnow())
    row = s.execute(select(Job.status, Job.worker).where(Job.id == job_id)).one_or_none()
    if row is None or row.worker != worker:
        return None
    return row.status


def update_progress(s: Session, job_id: str, progress: dict) -> None:
    """The latest ``core.ml.callbacks.Progress`` (as a dict) of a running job."""
    _update_job(s, job_id, [Job.status.in_(_LIVE)], progress=progress)


def add_metrics(s: Session, job_id: str, points: list[MetricPointData]) -> None:
    """Append metric points and fold the newest value of each key into ``jobs.metrics``."""
    if not points:
        return
    now = utcnow()
    s.add_all(
        MetricPoint(
            job_id=job_id,
            step=p.step,
            epoch=p.epoch,
            split=p.split,
            name=p.name,
            value=float(p.value),
            time=now,
        )
        for p in points
    )
    latest = dict(s.scalar(select(Job.metrics).where(Job.id == job_id)) or {})
    for p in sorted(points, key=lambda p: p.step):
        latest[p.key] = float(p.value)
    _update_job(s, job_id, [], metrics=latest)
    s.flush()


def add_event(s: Session, job_id: str, kind: str, message: str, data: dict | None = None) -> None:
    """Something a person wants in the job's log."""
    _event(s, job_id, kind, message, data)
    s.flush()


def add_checkpoint(
    s: Session, job_id: str, info: CheckpointInfo, rel_path: str, *, metric: str | None = None
) -> None:
    """Record a checkpoint written (atomically) at ``rel_path`` (relative to the data directory).
    Drops the rows of the checkpoints that save pruned; when it is the best so far, moves the best flag
    to it and updates ``jobs.best`` (``metric``: the name the best was chosen by, when known)."""
    if info.pruned:
        s.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name.in_(info.pruned)))
    # A resumed run can write a checkpoint under a name that exists already: the new one replaces it.
    s.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == info.name))
    if info.is_best:
        s.execute(
            update(Checkpoint)
            .where(Checkpoint.job_id == job_id, Checkpoint.is_best.is_(True))
            .values(is_best=False)
            .execution_options(synchronize_session=False)
        )
    s.add(
        Checkpoint(
            job_id=job_id,
            name=info.name,
            step=info.step,
            metrics={k: float(v) for k, v in info.metrics.items()},
            size_bytes=info.size_bytes,
            is_best=info.is_best,
            path=rel_path,
            created_at=utcnow(),
        )
    )
    if info.is_best:
        metric = metric or _best_metric_name(info.metrics)
        best = {
            "step": info.step,
            "metric": metric,
            "value": float(info.metrics[metric]) if metric in info.metrics else None,
            "checkpoint": info.name,
        }
        _update_job(s, job_id, [], best=best)
    add_event(
        s,
        job_id,
        "checkpoint",
        f"checkpoint {info.name} saved at step {info.step}" + (" (best so far)" if info.is_best else ""),
        {"name": info.name, "step": info.step, "is_best": info.is_best, "size_bytes": info.size_bytes},
    )
    s.flush()


def _best_metric_name(metrics: dict[str, float]) -> str | None:
    for name in ("val_f1_macro", "val_accuracy", "val_loss", "val_perplexity", "train_loss"):
        if name in metrics:
            return name
    return next(iter(metrics), None)


def finish_job(
    s: Session,
    job_id: str,
    status: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    result: dict | None = None,
    worker: str | None = None,
) -> bool:
    """Write the end state (``succeeded``, ``failed`` or ``cancelled``) of a ``running``/``cancelling`` job,
    exactly once: a second call, or a call after another worker took the job over (``worker`` given and
    no longer the holder), matches nothing and returns False."""
    status = JobStatus(status)
    if status not in _ENDS:
        raise ValueError(f"finish_job: '{status.value}' is not an end state ({', '.join(sorted(_ENDS))})")
    where = [Job.status.in_(_LIVE)]
    if worker is not None:
        where.append(Job.worker == worker)
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "error_code": error_code,
        "error_message": error_message,
    }
    if result is not None:
        values["result"] = result
        if result.get("best"):
            values["best"] = result["best"]
        if result.get("metrics"):
            values["metrics"] = result["metrics"]
    if not _update_job(s, job_id, where, **values):
        return False
    if status == JobStatus.SUCCEEDED:
        _event(s, job_id, "succeeded", "Training finished.", {"status": (result or {}).get("status")})
    elif status == JobStatus.CANCELLED:
        _event(s, job_id, "cancelled", "Cancelled.")
    else:
        _event(s, job_id, "error", error_message or "Failed.", {"code": error_code})
        _event(s, job_id, "failed", f"Failed: {error_code}.", {"code": error_code})
    s.flush()
    return True


def release_job(s: Session, job_id: str, reason: str, *, worker: str | None = None) -> bool:
    """Hand a ``running`` job back to ``queued`` (the worker is shutting down and saved a checkpoint).
    A graceful hand-off is not a lost attempt: ``attempts`` goes back down, so rolling restarts never
    push a job towards ``worker_lost``. The caller re-enqueues it after committing."""
    where = [Job.status == JobStatus.RUNNING, Job.attempts > 0]
    if worker is not None:
        where.append(Job.worker == worker)
    if not _update_job(
        s, job_id, where, status=JobStatus.QUEUED, attempts=Job.attempts - 1, heartbeat_at=utcnow()
    ):
        return False
    _event(s, job_id, "requeued", f"Handed back to the queue: {reason}.", {"reason": reason})
    s.flush()
    return True


def requeue_stale_jobs(s: Session, *, timeout_seconds: float) -> tuple[list[str], list[str]]:
    """Jobs whose worker is lost (``running``/``cancelling`` with a heartbeat older than the timeout):
    a ``running`` one goes back to ``queued`` (to be re-enqueued and resumed), or ends ``failed`` with code
    ``worker_lost`` once ``attempts >= max_attempts``; a ``cancelling`` one ends ``cancelled``.
    Returns ``(requeued_ids, ended_ids)``. Safe to run in many workers at once: each row changes once."""
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_seconds)
    stale = s.execute(
        select(Job.id, Job.status, Job.attempts, Job.max_attempts, Job.heartbeat_at).where(
            Job.status.in_(_LIVE), (Job.heartbeat_at < cutoff) | Job.heartbeat_at.is_(None)
        )
    ).all()
    requeued: list[str] = []
    ended: list[str] = []
    for row in stale:
        # Re-check staleness in the UPDATE itself: a heartbeat that landed since the SELECT wins.
        where = [Job.status == row.status, (Job.heartbeat_at < cutoff) | Job.heartbeat_at.is_(None)]
        if row.status == JobStatus.CANCELLING:
            if _update_job(s, row.id, where, status=JobStatus.CANCELLED, finished_at=now):
                _event(s, row.id, "cancelled", "Cancelled (its worker was lost while it was stopping).")
                ended.append(row.id)
        elif row.attempts >= row.max_attempts:
            message = (
                f"The worker running this job was lost {row.attempts} times (no heartbeat for "
                f"{timeout_seconds:g} s); giving up after max_attempts={row.max_attempts}. Check the worker logs "
                "for out-of-memory kills, or resubmit with a smaller model or batch_size."
            )
            if _update_job(
                s,
                row.id,
                where,
                status=JobStatus.FAILED,
                finished_at=now,
                error_code="worker_lost",
                error_message=message,
            ):
                _event(s, row.id, "error", message, {"code": "worker_lost"})
                _event(s, row.id, "failed", "Failed: worker_lost.", {"code": "worker_lost"})
                ended.append(row.id)
        elif _update_job(s, row.id, where, status=JobStatus.QUEUED, heartbeat_at=now):
            _event(
                s,
                row.id,
                "requeued",
                f"Worker lost (no heartbeat for {timeout_seconds:g} s): queued again to resume from its last "
                f"checkpoint (attempt {row.attempts} of {row.max_attempts} used).",
                {"reason": "worker_lost", "attempts": row.attempts},
            )
            requeued.append(row.id)
    s.flush()
    return requeued, ended


# ------------------------------------------------------------------------------------------- helpers


def latest_checkpoint_step(s: Session, job_id: str) -> int | None:
    """The step of the job's newest checkpoint row, or None when it has none."""
    return s.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job_id))


def prune_metrics(s: Session, job_id: str, *, after_step: int) -> int:
    """Delete metric points with ``step > after_step`` (a resumed run writes them again). Returns how many."""
    result = s.execute(
        delete(MetricPoint)
        .where(MetricPoint.job_id == job_id, MetricPoint.step > after_step)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def queued_jobs_older_than(s: Session, seconds: float) -> list[str]:
    """Ids of ``queued`` jobs last touched (created, released or requeued) more than ``seconds`` ago:
    candidates for re-enqueueing when the broker lost their message."""
    cutoff = utcnow() - timedelta(seconds=seconds)
    last_touch = func.coalesce(Job.heartbeat_at, Job.created_at)
    return list(
        s.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.created_at < cutoff, last_touch < cutoff)
            .order_by(Job.created_at)
        )
    )

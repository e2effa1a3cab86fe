"""The job store's transitions: every job state transition of docs/design.md, "Job states" lives here, and
only here.

    queued -> running -> succeeded | failed
                      -> cancelling -> cancelled
    queued -> cancelled
    running -> queued        (worker lost: stale heartbeat; or a graceful SIGTERM hand-off)

Each transition is one conditional ``UPDATE ... WHERE id = :id AND status IN (...)``: the database decides
which of two racing workers claims a job and which writer sets the end state, on PostgreSQL and SQLite
alike (no ``SELECT ... FOR UPDATE``, which SQLite lacks). A function returns whether its update matched.

Every end (``finish_job``, a queued job cancelled, a lost job ended by ``requeue_stale_jobs``) queues its
webhook delivery in the same transaction (``core.db.store.webhooks``, the outbox).

Every function takes a ``Session`` first and only flushes: the caller commits, so each write is a short
transaction (``core.db.session.session_scope``). Times come from the Python clock (``utcnow``), which
keeps the comparisons identical on both backends.

One owner per job (docs/design.md, "One owner per job"): every claim increments ``jobs.epoch``, and every
write a worker makes passes the ``epoch`` it claimed. Such a write starts with a fencing UPDATE on the job
row (``WHERE id = :id AND epoch = :epoch AND status IN ('running', 'cancelling')``), which also locks the
row (PostgreSQL) or the database (SQLite) until the transaction ends, so a requeue or a second claim
cannot interleave with it. When it matches nothing, ``LeaseLost`` is raised, the transaction rolls back
and the worker stops without writing anything more. The fenced writes of a running job (progress, metric
points, events, checkpoints) are in ``core.db.store.records``; they fence with ``_fence`` below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.db.models import ACTIVE_STATES, Checkpoint, Event, Job, JobStatus, MetricPoint, new_id, utcnow
from core.db.store.locks import lock_key
from core.db.store.webhooks import queue_delivery
from core.settings import get_settings

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """A worker's write matched no row for (job, epoch): another worker owns the job now, or it ended."""

    def __init__(self, job_id: str, epoch: int) -> None:
        super().__init__(f"job {job_id}: lease epoch {epoch} is no longer the job's")
        self.job_id, self.epoch = job_id, epoch


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


def _fence(s: Session, job_id: str, epoch: int | None) -> None:
    """Raise ``LeaseLost`` unless the job is live under ``epoch`` (None: an unfenced writer, e.g. the API).
    The no-op UPDATE takes the row's write lock for the rest of the transaction."""
    if epoch is None:
        return
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.epoch == epoch, Job.status.in_(_LIVE))
        .values(epoch=Job.epoch)
        .execution_options(synchronize_session=False)
    )
    if s.execute(stmt).rowcount != 1:
        raise LeaseLost(job_id, epoch)


def _event(s: Session, job_id: str, kind: str, message: str, data: dict | None = None) -> None:
    s.add(Event(job_id=job_id, kind=kind, message=message, data=data, time=utcnow()))


def get_job(s: Session, job_id: str) -> Job | None:
    """The job row as stored now (bypassing anything cached in the session)."""
    return s.get(Job, job_id, populate_existing=True)


# --------------------------------------------------------------------------------------------- create


class ActiveJobLimit(Exception):
    """The owner already has ``active`` queued or running jobs, the limit: no job was created."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} active jobs (limit {limit})")
        self.active, self.limit = active, limit


def create_job(
    s: Session,
    *,
    dataset_id: str,
    config: dict,
    owner: str | None,
    max_attempts: int,
    queue: str | None = None,
    active_limit: int | None = None,
) -> Job:
    """A new ``queued`` job on ``queue`` (default: the settings' ``queue_name``) with its "queued" event.
    Commit first, THEN ``broker.enqueue_job(job.id, job.queue)``.

    With ``active_limit``, raises ``ActiveJobLimit`` when ``owner`` already has that many jobs queued or
    running. The count and the insert hold the owner's lock until the caller commits, so concurrent
    requests of one owner never pass the limit together."""
    if active_limit is not None:
        lock_key(s, f"owner:{owner}")
        active = (
            s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.owner.is_(None) if owner is None else Job.owner == owner)
                .where(Job.status.in_([st.value for st in ACTIVE_STATES]))
            )
            or 0
        )
        if active >= active_limit:
            raise ActiveJobLimit(active, active_limit)
    job = Job(
        id=new_id(),
        owner=owner,
        dataset_id=dataset_id,
        status=JobStatus.QUEUED,
        config=config,
        created_at=utcnow(),
        attempts=0,
        max_attempts=max_attempts,
        queue=queue or get_settings().queue_name,
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
        queue_delivery(s, job_id)  # the end's webhook, in the same transaction (the outbox)
    elif _update_job(s, job_id, [Job.status == JobStatus.RUNNING], status=JobStatus.CANCELLING):
        _event(
            s, job_id, "cancelling", "Cancel requested: stopping at the next step and saving a checkpoint."
        )
    s.flush()
    return get_job(s, job_id)


LATEST_ROW = object()  # claim_job's default: resume from the latest checkpoint row


def claim_job(
    s: Session,
    job_id: str,
    worker: str,
    *,
    resume_step: Any = LATEST_ROW,
    expected_epoch: int | None = None,
) -> Job | None:
    """Atomically take a ``queued`` job for ``worker`` ("hostname:pid"): ``running``, attempts + 1, a new
    lease epoch (``job.epoch``, one more than any before), ``started_at`` (first run only), a fresh
    heartbeat. None when the job is not queued (already running elsewhere, finished, cancelled or
    unknown): the broker may deliver a message twice, this may not. ``expected_epoch``: claim only if the
    epoch is still the one the caller read (it chose ``resume_step`` from what that epoch left).

    On a later run (the job was requeued), metric points after the step of the latest checkpoint row are
    deleted: training resumes from that checkpoint, so the curve continues without duplicates. A worker
    passes ``resume_step``, the step of the latest checkpoint on disk (None: none), which is the one the
    loop resumes from: a worker killed between writing a checkpoint and recording its row leaves the disk
    ahead of the rows, and cutting the curve back to the row would leave a gap in it."""
    now = utcnow()
    where = [Job.status == JobStatus.QUEUED]
    if expected_epoch is not None:
        where.append(Job.epoch == expected_epoch)
    claimed = _update_job(
        s,
        job_id,
        where,
        status=JobStatus.RUNNING,
        attempts=Job.attempts + 1,
        epoch=Job.epoch + 1,
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


def heartbeat(
    s: Session, job_id: str, worker: str, *, touch: bool = True, epoch: int | None = None
) -> str | None:
    """Refresh the heartbeat (renew the lease) of a job held by ``worker`` under ``epoch`` (when given;
    else matched by the worker's name); return the job's status now (the worker stops when it is
    ``cancelling``, or when it is no longer ``running``). None when the job is gone or is no longer held
    by this worker (it was declared lost and taken over): the worker must stop at once.
    ``touch=False`` only reads the status (the worker polls for a cancel more often than it beats)."""
    held = Job.epoch == epoch if epoch is not None else Job.worker == worker
    if touch:
        _update_job(s, job_id, [held, Job.status.in_(_LIVE)], heartbeat_at=utcnow())
    row = s.execute(select(Job.status, Job.worker, Job.epoch).where(Job.id == job_id)).one_or_none()
    if row is None or (row.epoch != epoch if epoch is not None else row.worker != worker):
        return None
    return row.status


def finish_job(
    s: Session,
    job_id: str,
    status: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    result: dict | None = None,
    worker: str | None = None,
    epoch: int | None = None,
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
    if epoch is not None:
        where.append(Job.epoch == epoch)
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
    queue_delivery(s, job_id)
    s.flush()
    return True


def release_job(
    s: Session, job_id: str, reason: str, *, worker: str | None = None, epoch: int | None = None
) -> bool:
    """Hand a ``running`` job back to ``queued`` (the worker is shutting down and saved a checkpoint).
    A graceful hand-off is not a lost attempt: ``attempts`` goes back down, so rolling restarts never
    push a job towards ``worker_lost``. The caller re-enqueues it after committing."""
    where = [Job.status == JobStatus.RUNNING, Job.attempts > 0]
    if worker is not None:
        where.append(Job.worker == worker)
    if epoch is not None:
        where.append(Job.epoch == epoch)
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
                queue_delivery(s, row.id)
                ended.append(row.id)
        elif row.attempts >= row.max_attempts:
            message = (
                f"The worker process running this job stopped answering {row.attempts} times (no heartbeat "
                f"for {timeout_seconds:g} s): it was most likely killed, usually by the kernel's "
                f"out-of-memory killer (the worker log says 'signal 9' or 'SIGKILL'). Giving up after "
                f"max_attempts={row.max_attempts}. Resubmit with a smaller training.batch_size, "
                "model.max_length, model.d_model or model.n_layers, or give the worker more memory."
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
                queue_delivery(s, row.id)
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


def prune_metrics(s: Session, job_id: str, *, after_step: int, epoch: int | None = None) -> int:
    """Delete metric points with ``step > after_step`` (a resumed run writes them again). Returns how many."""
    _fence(s, job_id, epoch)
    result = s.execute(
        delete(MetricPoint)
        .where(MetricPoint.job_id == job_id, MetricPoint.step > after_step)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def queued_jobs_older_than(s: Session, seconds: float, *, queue: str | None = None) -> list[str]:
    """Ids of ``queued`` jobs last touched (created, released or requeued) more than ``seconds`` ago:
    candidates for re-enqueueing when the broker lost their message. ``queue``: only that queue's jobs."""
    cutoff = utcnow() - timedelta(seconds=seconds)
    last_touch = func.coalesce(Job.heartbeat_at, Job.created_at)
    where = [] if queue is None else [Job.queue == queue]
    return list(
        s.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.created_at < cutoff, last_touch < cutoff, *where)
            .order_by(Job.created_at)
        )
    )

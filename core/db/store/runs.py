"""Evaluations and batch predictions (``model_runs``), from queued to their end (docs/design.md,
"Evaluations and batch predictions").

A run writes nothing a second owner could corrupt (a report, one output file named after the run and its
attempt), so its fence is simpler than a job's lease: every claim increments ``attempts`` (one
conditional UPDATE from queued: only the worker whose UPDATE matched runs it), and the claimer's writes
(heartbeat, progress, the end) are conditional on ``(id, attempts, running)``. A worker that lost its run
to the reaper (``requeue_stale_runs``) writes nothing after the next claim. Cancelling a queued run ends
it at once; a running one is asked (``cancel_requested``) and stops at its next progress write.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db.models import Checkpoint, Job, JobStatus, ModelRun, RunKind, RunStatus, utcnow

ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


def create_run(session: Session, **fields: Any) -> ModelRun:
    """A queued run; commit it before sending its id to the workers."""
    run = ModelRun(status=RunStatus.QUEUED, cancel_requested=False, **fields)
    session.add(run)
    session.flush()
    return run


def create_test_evaluation(session: Session, job_id: str, epoch: int) -> ModelRun | None:
    """The job's test-set evaluation of its best checkpoint, queued (commit, then send it), when the job
    named a test set and ended ``succeeded`` under lease ``epoch``; None when it has none, it already
    exists (the hook ran before), or the job is not that claim's success any more."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.test_dataset_id is None or job.status != JobStatus.SUCCEEDED or job.epoch != epoch:
        return None
    exists = session.scalar(select(ModelRun.id).where(ModelRun.job_id == job_id, ModelRun.is_test.is_(True)))
    best = session.scalar(
        select(Checkpoint.name)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.is_best.desc(), Checkpoint.step.desc())
        .limit(1)
    )
    if exists is not None or best is None:
        return None
    return create_run(
        session,
        owner=job.owner,
        job_id=job_id,
        kind=RunKind.EVALUATION,
        dataset_id=job.test_dataset_id,
        checkpoint=best,
        queue=job.queue,
        is_test=True,
    )


def test_evaluation(session: Session, job_id: str) -> ModelRun | None:
    """The job's test-set evaluation, once queued."""
    return session.scalar(select(ModelRun).where(ModelRun.job_id == job_id, ModelRun.is_test.is_(True)))


def _update_running(session: Session, run_id: str, attempt: int, **values: Any) -> bool:
    result = session.execute(
        update(ModelRun)
        .where(ModelRun.id == run_id, ModelRun.status == RunStatus.RUNNING, ModelRun.attempts == attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def claim_run(session: Session, run_id: str, worker: str) -> ModelRun | None:
    """queued -> running for ``worker`` under a new attempt (``run.attempts``), or None when the run is not
    queued (claimed, cancelled, ended)."""
    now = utcnow()
    result = session.execute(
        update(ModelRun)
        .where(ModelRun.id == run_id, ModelRun.status == RunStatus.QUEUED)
        .values(
            status=RunStatus.RUNNING,
            worker=worker,
            attempts=ModelRun.attempts + 1,
            started_at=func.coalesce(ModelRun.started_at, now),
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.get(ModelRun, run_id, populate_existing=True)


def heartbeat_run(session: Session, run_id: str, attempt: int) -> bool:
    """Renew a running run's heartbeat; False when this attempt no longer owns it."""
    return _update_running(session, run_id, attempt, heartbeat_at=utcnow())


def record_progress(session: Session, run_id: str, done: int, total: int, attempt: int) -> bool:
    """Write the progress of a running run; False when it should stop: its cancellation was asked, or this
    attempt no longer owns it."""
    percent = round(100.0 * done / total, 1) if total else 100.0
    progress = {"done": done, "total": total, "percent": percent}
    if not _update_running(session, run_id, attempt, progress=progress, heartbeat_at=utcnow()):
        return False
    run = session.get(ModelRun, run_id, populate_existing=True)
    return run is not None and not run.cancel_requested


def finish_run(session: Session, run_id: str, attempt: int, status: RunStatus, **fields: Any) -> bool:
    """running -> ``status`` with the report, output, rows or error in ``fields``; False when this attempt
    no longer owns the run (nothing written)."""
    return _update_running(session, run_id, attempt, status=status, finished_at=utcnow(), **fields)


def cancel_run(session: Session, run: ModelRun) -> None:
    """A queued run ends cancelled now; a running one is asked to stop. Ended runs are left alone."""
    if run.status == RunStatus.QUEUED:
        run.status, run.finished_at = RunStatus.CANCELLED, utcnow()
    elif run.status == RunStatus.RUNNING:
        run.cancel_requested = True
    session.flush()


def requeue_stale_runs(
    session: Session, *, timeout_seconds: float, max_attempts: int
) -> tuple[dict[str, str], list[str]]:
    """Runs whose worker is lost (``running`` with a heartbeat older than the timeout): back to ``queued``,
    or ended, ``cancelled`` when that was asked, ``failed`` (``worker_lost``) once ``attempts >=
    max_attempts``. Returns ``({requeued id: its queue}, ended ids)``; safe to race: each UPDATE re-checks
    the staleness and the attempt it read."""
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_seconds)
    stale = session.execute(
        select(ModelRun.id, ModelRun.queue, ModelRun.attempts, ModelRun.cancel_requested).where(
            ModelRun.status == RunStatus.RUNNING,
            (ModelRun.heartbeat_at < cutoff) | ModelRun.heartbeat_at.is_(None),
        )
    ).all()
    requeued: dict[str, str] = {}
    ended: list[str] = []
    for row in stale:
        where = [
            ModelRun.id == row.id,
            ModelRun.status == RunStatus.RUNNING,
            ModelRun.attempts == row.attempts,
            (ModelRun.heartbeat_at < cutoff) | ModelRun.heartbeat_at.is_(None),
        ]
        if row.cancel_requested:
            values: dict[str, Any] = {"status": RunStatus.CANCELLED, "finished_at": now}
        elif row.attempts >= max_attempts:
            values = {
                "status": RunStatus.FAILED,
                "finished_at": now,
                "error_code": "worker_lost",
                "error_message": (
                    f"The worker running this run stopped answering {row.attempts} "
                    f"times (no heartbeat for {timeout_seconds:g} s), most likely killed (out of memory: "
                    f"the worker log says 'signal 9'). Giving up after {max_attempts} attempts "
                    "(JOBFORMER_MAX_ATTEMPTS): give the worker more memory, or split the file."
                ),
            }
        else:
            values = {"status": RunStatus.QUEUED, "worker": None, "heartbeat_at": now}
        result = session.execute(
            update(ModelRun).where(*where).values(**values).execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            if values["status"] == RunStatus.QUEUED:
                requeued[row.id] = row.queue
            else:
                ended.append(row.id)
    session.flush()
    return requeued, ended


def queued_runs_older_than(session: Session, seconds: float, *, queue: str) -> list[str]:
    """Ids of ``queue``'s queued runs last touched (created or requeued) more than ``seconds`` ago:
    candidates for a re-send when the broker lost their message."""
    cutoff = utcnow() - timedelta(seconds=seconds)
    last_touch = func.coalesce(ModelRun.heartbeat_at, ModelRun.created_at)
    return list(
        session.scalars(
            select(ModelRun.id)
            .where(ModelRun.status == RunStatus.QUEUED, ModelRun.queue == queue, last_touch < cutoff)
            .order_by(ModelRun.created_at)
        )
    )


def succeeded_jobs_without_test_evaluation(
    session: Session, older_than_seconds: float
) -> list[tuple[str, int]]:
    """(id, epoch) of jobs that named a test set and succeeded more than ``older_than_seconds`` ago but
    have no test evaluation: their worker died between the end and queueing it (the reaper queues it)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    has_test = select(ModelRun.id).where(ModelRun.job_id == Job.id, ModelRun.is_test.is_(True)).exists()
    rows = session.execute(
        select(Job.id, Job.epoch).where(
            Job.status == JobStatus.SUCCEEDED,
            Job.test_dataset_id.is_not(None),
            Job.finished_at < cutoff,
            ~has_test,
        )
    ).all()
    return [(r.id, r.epoch) for r in rows]

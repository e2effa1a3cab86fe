"""Sending work to the workers from inside a worker: evaluations and batch predictions (the end hook of a
job with a test set in ``worker.tasks``, the reaper's re-sends in ``worker.reaper``) and jobs (a hand-off,
the reaper's requeues and re-sends, a sweep's new trials). Its own module, without the Celery app of
``worker.celery_app``, so the reaper (imported by that app) can use it.

The API sends runs with its own copy of the name (``api.model_runs``; api/ imports nothing from worker/),
and tests/integration/test_model_runs.py pins that both agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select

import broker
from core.db.models import Job
from core.db.session import session_scope
from core.settings import Settings

log = logging.getLogger(__name__)

RUN_TASK_NAME = "jobformer.model_run"


def send_run(settings: Settings, run_id: str, queue: str) -> None:
    """Send run ``run_id`` to ``queue`` (the task id is the run's id, as the reaper's re-send expects);
    raises what the broker raises."""
    broker.get_app(settings).send_task(RUN_TASK_NAME, args=[run_id], task_id=run_id, queue=queue)


def job_routes(settings: Settings, job_ids: Iterable[str]) -> dict[str, tuple[str, broker.Needs]]:
    """Job id -> (its queue, what it needs): where its message belongs is that queue, or its capacity
    queue for more than one process or more memory than the plain tier (``broker.capacity_queue``;
    docs/design.md, "Queues")."""
    ids = list(job_ids)
    if not ids:
        return {}
    with session_scope(settings.resolved_database_url) as s:
        rows = s.execute(select(Job.id, Job.queue, Job.config).where(Job.id.in_(ids))).all()
    return {row.id: (row.queue, broker.job_needs(row.config)) for row in rows}


def send_jobs(settings: Settings, job_ids: Iterable[str]) -> None:
    """Send each job to the queue it belongs in (``job_routes``). A job that could not be sent is logged
    and left to the reapers (a queued job whose message is gone is sent again); never raises for one job."""
    try:
        routes = job_routes(settings, job_ids)
    except Exception as exc:  # noqa: BLE001 - the reapers find them again (queued, no message)
        log.warning("could not read the queues of jobs to send: %s", exc)
        return
    for job_id, (queue, needs) in routes.items():
        try:
            broker.enqueue_job(job_id, queue, needs=needs, settings=settings)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not enqueue job %s: %s", job_id, exc, extra={"job_id": job_id})

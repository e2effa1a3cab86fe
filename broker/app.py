"""The Celery app and its production settings (docs/design.md, "Workers and the broker"). No eager mode anywhere.

- ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a message leaves Redis only when its job has
  ended, and a worker holds no job it is not running.
- A ``visibility_timeout`` longer than any job, so Redis does not hand a running job to a second worker;
  if it ever does, the atomic claim in the database refuses the second run.
- ``task_reject_on_worker_lost`` stays off: a job that kills its worker would loop forever. Attempts are
  counted in the database instead, by the stale-job reaper.
- ``worker_max_tasks_per_child=1``: a fresh child per job (CUDA never survives a fork; memory is returned).
- No result backend: the database is the truth.

Building an app has no side effects: a producer sends tasks by name and never imports the task module;
the worker's entry module (``worker.celery_app``) includes it and connects the process signals.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from core.settings import Settings


def make_app(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """A Celery app configured from ``settings``; ``include``: task modules a worker imports at start."""
    app = Celery("jobformer", include=list(include))
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a Redis restart must not end the worker
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        # A broker blip must not kill hours of training: the job's truth is in the database.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        enable_utc=True,
        timezone="UTC",
    )
    return app

"""The one task: ``jobformer.train(job_id)``. Claim the job, run core with callbacks, record the end.

Like a web view, the task is thin; the states live in ``core.db.store``, the loop in ``core.ml.train``.
torch and the training code are imported inside the task, in the pool child: the worker's main process
never touches CUDA (it does not survive a fork).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from core.db import store
from core.db.models import Dataset, JobStatus
from core.settings import get_settings
from worker import queue
from worker.celery_app import app
from worker.lifecycle import install_sigterm_handler, shutdown_requested, worker_name
from worker.recorder import Heartbeat, StopReason, StoreRecorder, write_with_retry

log = logging.getLogger(__name__)

_SUCCESS = {"completed", "early_stopped", "time_limit"}


@app.task(name=queue.TASK_NAME, ignore_result=True)
def train_job(job_id: str) -> str:
    """Run job ``job_id`` if it can be claimed; returns what happened (for the worker log)."""
    return run_job(job_id)


def run_job(job_id: str) -> str:
    """Claim, train, record the end. Returns "not_claimed", "succeeded", "failed", "cancelled",
    "released" (handed back on shutdown) or "lost" (another worker took the job over)."""
    settings = get_settings()
    name = worker_name()
    # Here, not at process start: billiard resets the child's signal handlers after its initializer.
    install_sigterm_handler()
    claimed: dict[str, Any] = {}

    # The loop resumes from the latest checkpoint on disk; the claim cuts the curve back to that step.
    from core.ml.checkpoint import list_checkpoints  # here: torch only ever loads in the job's child

    on_disk = list_checkpoints(settings.jobs_dir / job_id)
    resume_step = on_disk[-1]["step"] if on_disk else None

    def claim(s: Any) -> None:
        job = store.claim_job(s, job_id, name, resume_step=resume_step)
        if job is not None:
            dataset = s.get(Dataset, job.dataset_id)
            live = dataset is not None and dataset.deleted_at is None
            claimed.update(config=job.config, data_path=dataset.path if live else None, attempt=job.attempts)

    if not write_with_retry(claim, what="claim", job_id=job_id, attempts=8) or not claimed:
        log.info("job %s not claimed (not queued any more)", job_id, extra={"job_id": job_id})
        return "not_claimed"
    log.info("job %s claimed by %s (attempt %d)", job_id, name, claimed["attempt"], extra={"job_id": job_id})

    heartbeat = Heartbeat(job_id, name, settings.heartbeat_seconds)
    heartbeat.start()
    recorder = StoreRecorder(
        job_id, name, data_dir=settings.data_dir, heartbeat=heartbeat, shutdown_requested=shutdown_requested
    )
    try:
        end = _train(job_id, claimed, recorder)
    finally:
        heartbeat.stop()
        recorder.flush(attempts=12)
    return _record_end(job_id, name, end, recorder)


def _train(job_id: str, claimed: dict[str, Any], recorder: StoreRecorder) -> dict[str, Any]:
    """Run the core loop; return what the end state should be (never raises)."""
    settings = get_settings()
    from pydantic import ValidationError

    from core.ml.errors import DataError, JobformerError

    try:
        from core.ml.config import TrainConfig, problems_from_validation_error
        from core.ml.train import train

        try:
            config = TrainConfig.model_validate(claimed["config"])
        except ValidationError as exc:  # stored by an older version, or edited by hand
            problems = "; ".join(
                f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems_from_validation_error(exc)
            )
            return {"status": JobStatus.FAILED, "error_code": "invalid_config", "error_message": problems}
        limit = settings.job_time_limit_seconds
        if limit is not None:
            current = config.training.max_time_seconds
            config.training.max_time_seconds = limit if current is None else min(current, limit)
        if claimed["data_path"] is None:
            raise DataError("the job's dataset no longer exists; upload the file again and resubmit")
        data_path = settings.data_dir / claimed["data_path"]
        out_dir = settings.jobs_dir / job_id
        out_dir.mkdir(parents=True, exist_ok=True)
        result = train(config, data_path, out_dir, callbacks=recorder)
    except JobformerError as exc:
        log.warning("job %s failed: %s: %s", job_id, exc.code, exc.message, extra={"job_id": job_id})
        return {"status": JobStatus.FAILED, "error_code": exc.code, "error_message": exc.message}
    except Exception as exc:
        log.exception("job %s: internal error", job_id, extra={"job_id": job_id})
        return {
            "status": JobStatus.FAILED,
            "error_code": "internal_error",
            "error_message": (
                f"The worker hit an unexpected error ({type(exc).__name__}). This is a bug in jobformer, not in "
                f"your data or config; the traceback is in the worker log under job {job_id}."
            ),
        }
    summary = _json_safe(result.as_dict())
    if result.status in _SUCCESS:
        return {"status": JobStatus.SUCCEEDED, "result": summary}
    reason = recorder.stop_reason()
    if reason == StopReason.CANCEL:
        return {"status": JobStatus.CANCELLED, "result": summary}
    if reason == StopReason.LOST:
        return {"status": "lost"}
    return {"status": "release"}  # SIGTERM (or a stop nobody asked for): hand the job to another worker


def _record_end(job_id: str, name: str, end: dict[str, Any], recorder: StoreRecorder) -> str:
    status = end.pop("status")
    if status == "lost":
        log.warning("job %s was taken over by another worker: not recording an end", job_id)
        return "lost"
    if status == "release":
        released: list[bool] = []
        write_with_retry(
            lambda s: released.append(
                store.release_job(s, job_id, "the worker is shutting down", worker=name)
            ),
            what="release",
            job_id=job_id,
            attempts=12,
        )
        if released and released[0]:
            try:
                queue.enqueue_job(job_id)
            except Exception as exc:  # noqa: BLE001 - the reaper re-sends queued jobs without a message
                log.warning("job %s released but not re-sent (%s): a reaper will send it", job_id, exc)
            log.info("job %s handed back to the queue", job_id, extra={"job_id": job_id})
            return "released"
        return "lost"
    done: list[bool] = []
    ok = write_with_retry(
        lambda s: done.append(store.finish_job(s, job_id, status, worker=name, **end)),
        what=f"end state {status}",
        job_id=job_id,
        attempts=12,
    )
    if not ok:
        # The job stays running without a heartbeat: the reaper requeues it and it resumes.
        log.error("job %s: could not record its end state %s", job_id, status, extra={"job_id": job_id})
    elif not done[0]:
        log.warning("job %s: end state %s not recorded: the job had already ended", job_id, status)
    log.info("job %s ended %s", job_id, status, extra={"job_id": job_id})
    return str(status)


def _json_safe(value: Any) -> Any:
    """TrainResult as plain JSON (paths and numpy scalars become strings and floats)."""
    return json.loads(json.dumps(value, default=lambda o: float(o) if hasattr(o, "__float__") else str(o)))

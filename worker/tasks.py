"""The one task: ``jobformer.train(job_id)``. Claim the job, run core with callbacks, record the end.

Like a web view, the task is thin; the states live in ``core.db.store``, the loop in ``core.ml.train``.
torch and the training code are imported inside the task, in the pool child: the worker's main process
never touches CUDA (it does not survive a fork).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import broker
from core import logs
from core.db import store
from core.db.models import Dataset, JobStatus
from core.ml.callbacks import CheckpointInfo
from core.settings import Settings
from worker.celery_app import app, settings
from worker.lifecycle import install_sigterm_handler, shutdown_requested, worker_name
from worker.recorder import Heartbeat, StopReason, StoreRecorder, write_with_retry

log = logging.getLogger(__name__)

_SUCCESS = {"completed", "early_stopped", "time_limit"}


@app.task(name=broker.TASK_NAME, ignore_result=True)
def train_job(job_id: str) -> str:
    """Run job ``job_id`` if it can be claimed; returns what happened (for the worker log)."""
    return run_job(job_id, settings)


def run_job(job_id: str, settings: Settings) -> str:
    """Claim, train, record the end. Returns "not_claimed", "rerouted" (asks for more processes than this
    worker gives), "succeeded", "failed", "cancelled", "released" (handed back on shutdown) or "lost"
    (another worker took the job over)."""
    name = worker_name()
    # Here, not at process start: billiard resets the child's signal handlers after its initializer.
    install_sigterm_handler()
    if not _fits_here(job_id, settings):
        return "rerouted"
    claimed = _claim(job_id, name, settings)
    if claimed is None:
        log.info("job %s not claimed (not queued any more)", job_id, extra={"job_id": job_id})
        return "not_claimed"
    logs.job_context(job_id, claimed["attempt"])  # JSON log lines carry the job and attempt (core/logs.py)
    log.info(
        "job %s claimed by %s (attempt %d, lease epoch %d)",
        job_id,
        name,
        claimed["attempt"],
        claimed["epoch"],
        extra={"job_id": job_id},
    )
    processes = broker.job_processes(claimed["config"])
    if processes > 1:  # docs/design.md, "A job on many processes in the service"
        from worker.distributed import run_on_processes

        return run_on_processes(job_id, name, claimed, processes, settings)
    heartbeat, recorder = start_recording(job_id, name, claimed, settings, shutdown_requested)
    try:
        end = _train(job_id, claimed, recorder, settings)
        if recorder.may_write():
            recorder.flush(attempts=12)
        # The heartbeat keeps the lease until the end state is written: the reaper must not requeue a job
        # whose worker is only slow to record its end.
        return _record_end(job_id, name, end, recorder, settings)
    finally:
        heartbeat.stop()


def start_recording(
    job_id: str, name: str, claimed: dict[str, Any], settings: Settings, stop: Callable[[], bool]
) -> tuple[Heartbeat, StoreRecorder]:
    """The claim's heartbeat, started from its lease's start, and the recorder of the job's writes, fenced
    by its epoch (one process's, or rank 0's in ``worker.rank_main``). ``stop``: the hand-off request the
    recorder polls. The caller stops the heartbeat once the end is written."""
    heartbeat = Heartbeat(
        job_id,
        name,
        settings.heartbeat_seconds,
        epoch=claimed["epoch"],
        lease_seconds=settings.lease_bound_seconds,
        renewed_at=claimed["renewed_at"],
    )
    heartbeat.start()
    recorder = StoreRecorder(
        job_id,
        name,
        data_dir=settings.data_dir,
        heartbeat=heartbeat,
        epoch=claimed["epoch"],
        sweep_id=claimed.get("sweep_id"),
        shutdown_requested=stop,
    )
    return heartbeat, recorder


def _fits_here(job_id: str, settings: Settings) -> bool:
    """False for a job needing more processes or memory than this worker offers (a message that reached
    a list it does not belong in, e.g. sent by hand, or before its config's needs were routed): it is sent
    on to its capacity queue unclaimed (docs/design.md, "Queues"). Never raises: when the job cannot be
    read, the claim decides."""
    from worker.run_queue import job_routes, send_jobs

    try:
        routes = job_routes(settings, [job_id])
    except Exception:  # noqa: BLE001 - the claim retries the database and reports it
        return True
    needs = routes[job_id][1] if job_id in routes else broker.Needs()
    offer = broker.local_offer(settings)
    if broker.fits(offer, needs):
        return True
    memory = f"{offer.memory_gib:.1f}" if offer.memory_gib is not None else "unknown"
    log.warning(
        "job %s needs %d processes and memory tier %d GiB, this worker offers %d processes and %s GiB: "
        "sent to its capacity queue unclaimed",
        job_id,
        needs.processes,
        needs.memory_tier,
        offer.processes,
        memory,
        extra={"job_id": job_id},
    )
    send_jobs(settings, [job_id])
    return False


def _claim(job_id: str, name: str, settings: Settings) -> dict[str, Any] | None:
    """Claim the job under a new lease epoch and choose the checkpoint to resume from; None when the job
    is not queued. The resume point is the newest checkpoint on disk that is recorded, or that the
    previous epoch wrote without recording it (its worker died in between): that one is recorded now.
    Anything else on disk is a stray of an owner that was fenced off, and is pruned by the first save."""
    from core.ml.checkpoint import lease_epoch_of, list_checkpoints  # torch only ever loads in the child

    out_dir = settings.jobs_dir / job_id
    claimed: dict[str, Any] = {}

    def claim(s: Any) -> None:
        claimed.clear()
        renewed_at = (time.monotonic(), time.time())  # before the claim is sent: the lease's start
        job = store.get_job(s, job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return
        previous, recorded = job.epoch, store.checkpoint_names(s, job_id)
        on_disk = list_checkpoints(out_dir)
        usable = [c for c in on_disk if c["name"] in recorded or lease_epoch_of(c["name"]) == previous]
        resume = usable[-1] if usable else None
        job = store.claim_job(
            s, job_id, name, resume_step=resume["step"] if resume else None, expected_epoch=previous
        )
        if job is None:
            return
        # Rows of checkpoints whose files are gone: the previous owner pruned them and was stopped before
        # its save recorded that (docs/design.md, "One owner per job"); a listed checkpoint always loads.
        gone = recorded - {c["name"] for c in on_disk}
        if gone:
            store.forget_checkpoints(s, job_id, gone, epoch=job.epoch)
            log.warning(
                "job %s: %d recorded checkpoints had no files (%s): their rows are removed",
                job_id,
                len(gone),
                ", ".join(sorted(gone)),
                extra={"job_id": job_id},
            )
        if resume is not None and resume["name"] not in recorded:
            info = CheckpointInfo(
                name=resume["name"],
                path=resume["path"],
                step=resume["step"],
                epoch=resume.get("epoch", 0),
                metrics=resume.get("metrics", {}),
                size_bytes=resume["size_bytes"],
                is_best=bool(resume.get("is_best")),
            )
            rel = os.path.relpath(resume["path"], settings.data_dir.resolve())
            store.add_checkpoint(s, job_id, info, rel, epoch=job.epoch, event=False)
        dataset = s.get(Dataset, job.dataset_id)
        live = dataset is not None and dataset.deleted_at is None
        claimed.update(
            config=job.config,
            data_path=dataset.path if live else None,
            attempt=job.attempts,
            epoch=job.epoch,
            sweep_id=job.sweep_id,
            started_at=job.started_at,
            renewed_at=renewed_at,
            resume_dir=resume["path"] if resume else None,
        )

    if not write_with_retry(claim, what="claim", job_id=job_id, attempts=8) or not claimed:
        return None
    return claimed


def _train(
    job_id: str, claimed: dict[str, Any], recorder: StoreRecorder, settings: Settings, dist: Any = None
) -> dict[str, Any]:
    """Run the core loop; return what the end state should be (never raises). ``dist``: this rank of a
    job on many processes (``worker.rank_main``), which joins the process group once the Trainer is built."""
    from pydantic import ValidationError

    from core.ml.errors import DataError, OwnershipLost, format_problems

    try:
        from core.ml.config import TrainConfig, problems_from_validation_error
        from core.ml.train import train

        try:
            config = TrainConfig.model_validate(claimed["config"])
        except ValidationError as exc:  # stored by an older version, or edited by hand
            problems = format_problems(problems_from_validation_error(exc))
            return {"status": JobStatus.FAILED, "error_code": "invalid_config", "error_message": problems}
        limit = settings.job_time_limit_seconds
        left = _time_left(claimed["started_at"], limit)
        if left is not None:
            if left <= 0:
                return _time_limit_end(limit)
            current = config.training.max_time_seconds
            if current is None or left < current:
                config.training.max_time_seconds = left
                claimed["service_limit"] = True
        if claimed["data_path"] is None:
            raise DataError("the job's dataset no longer exists; upload the file again and resubmit")
        data_path = settings.data_dir / claimed["data_path"]
        out_dir = settings.jobs_dir / job_id
        out_dir.mkdir(parents=True, exist_ok=True)
        if dist is None:
            result = train(
                config,
                data_path,
                out_dir,
                callbacks=recorder,
                lease_epoch=claimed["epoch"],
                resume_from=claimed["resume_dir"],
            )
        else:
            from core.ml.trainer import Trainer

            trainer = Trainer(
                config,
                data_path,
                out_dir,
                recorder,
                lease_epoch=claimed["epoch"],
                resume_from=claimed["resume_dir"],
                dist=dist,
            )
            dist.init(trainer.device)
            result = trainer.run()
    except OwnershipLost:
        return {"status": "lost"}
    except Exception as exc:
        if not recorder.may_write():  # an old owner's failure (its files pruned under it): not the job's
            log.warning("job %s: stopped after losing its lease (%s)", job_id, exc, extra={"job_id": job_id})
            return {"status": "lost"}
        return _failure(job_id, exc)
    summary = _json_safe(result.as_dict())
    if result.status == "time_limit" and claimed.get("service_limit"):
        return _time_limit_end(settings.job_time_limit_seconds, summary)
    if result.status in _SUCCESS:
        return {"status": JobStatus.SUCCEEDED, "result": summary}
    reason = recorder.stop_reason()
    if reason == StopReason.CANCEL:
        return {"status": JobStatus.CANCELLED, "result": summary}
    if reason == StopReason.LOST:
        return {"status": "lost"}
    return {"status": "release"}  # SIGTERM (or a stop nobody asked for): hand the job to another worker


def _failure(job_id: str, exc: Exception) -> dict[str, Any]:
    from core.ml.errors import JobformerError

    if isinstance(exc, JobformerError):
        log.warning("job %s failed: %s: %s", job_id, exc.code, exc.message, extra={"job_id": job_id})
        return {"status": JobStatus.FAILED, "error_code": exc.code, "error_message": exc.message}
    log.error("job %s: internal error", job_id, exc_info=exc, extra={"job_id": job_id})
    return {
        "status": JobStatus.FAILED,
        "error_code": "internal_error",
        "error_message": (
            f"The worker hit an unexpected error ({type(exc).__name__}). This is a bug in jobformer, not in "
            f"your data or config; the traceback is in the worker log under job {job_id}."
        ),
    }


def _time_left(started_at: Any, limit: float | None) -> float | None:
    """Seconds left of ``limit`` (JOBFORMER_JOB_TIME_LIMIT_SECONDS), counted from the job's first start
    (the limit covers the whole job, every attempt and the waits between them); None without a limit."""
    if limit is None:
        return None
    from core.db.models import utcnow

    return limit - (utcnow() - started_at).total_seconds()


def _time_limit_end(limit: float, summary: dict | None = None) -> dict[str, Any]:
    return {
        "status": JobStatus.FAILED,
        "error_code": "time_limit",
        "error_message": (
            f"The job ran out of the service's time limit (JOBFORMER_JOB_TIME_LIMIT_SECONDS={limit:g}, counted "
            "from its first start). Its last checkpoint is kept: predict with it, or resubmit with fewer "
            "training.epochs or training.max_steps, or a smaller model."
        ),
        **({"result": summary} if summary is not None else {}),
    }


def _record_end(
    job_id: str, name: str, end: dict[str, Any], recorder: StoreRecorder, settings: Settings
) -> str:
    status = end.pop("status")
    if status == "lost":
        log.warning("job %s was taken over by another worker: not recording an end", job_id)
        return "lost"
    if status == "release":
        released: list[bool] = []
        write_with_retry(
            lambda s: released.append(
                store.release_job(s, job_id, "the worker is shutting down", worker=name, epoch=recorder.epoch)
            ),
            what="release",
            job_id=job_id,
            attempts=12,
            still_owner=recorder.may_write,
        )
        if released and released[0]:
            from worker.run_queue import send_jobs

            send_jobs(settings, [job_id])  # to its queue (or capacity queue); a reaper re-sends a lost one
            log.info("job %s handed back to the queue", job_id, extra={"job_id": job_id})
            return "released"
        return "lost"
    done: list[bool] = []
    ok = write_with_retry(
        lambda s: done.append(store.finish_job(s, job_id, status, worker=name, epoch=recorder.epoch, **end)),
        what=f"end state {status}",
        job_id=job_id,
        attempts=12,
        still_owner=recorder.may_write,
    )
    if not ok:
        # The job stays running without a heartbeat: the reaper requeues it and it resumes.
        log.error("job %s: could not record its end state %s", job_id, status, extra={"job_id": job_id})
    elif not done[0]:
        log.warning("job %s: end state %s not recorded: the job had already ended", job_id, status)
    log.info("job %s ended %s", job_id, status, extra={"job_id": job_id})
    if ok and done[0] and status == JobStatus.SUCCEEDED:
        _queue_test_evaluation(job_id, recorder.epoch, settings)
    # The end's webhook, if any, was queued with the end (the outbox; worker/webhooks.py sends it).
    return str(status)


def _queue_test_evaluation(job_id: str, epoch: int, settings: Settings) -> None:
    """The test set's evaluation of the best checkpoint, queued once the end is recorded (docs/design.md,
    "Evaluations and batch predictions"): conditional on this claim's success (``epoch``); a worker that
    dies before it is committed leaves it to the reapers. Never raises."""
    from core.db.store.runs import create_test_evaluation
    from worker.run_queue import send_run

    queued: list[tuple[str, str]] = []  # (run id, queue), read inside the transaction

    def create(s: Any) -> None:
        run = create_test_evaluation(s, job_id, epoch)
        queued[:] = [(run.id, run.queue)] if run is not None else []

    try:
        write_with_retry(create, what="test evaluation", job_id=job_id)
        for run_id, queue in queued:
            send_run(settings, run_id, queue)
            log.info("job %s: test evaluation %s queued", job_id, run_id, extra={"job_id": job_id})
    except Exception:  # noqa: BLE001 - the job's end stands; a queued run without a message is re-sent
        log.exception("job %s: could not queue its test evaluation", job_id, extra={"job_id": job_id})


def _json_safe(value: Any) -> Any:
    """TrainResult as plain JSON (paths and numpy scalars become strings and floats)."""
    return json.loads(json.dumps(value, default=lambda o: float(o) if hasattr(o, "__float__") else str(o)))

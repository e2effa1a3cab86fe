"""The task of evaluations and batch predictions: ``jobformer.model_run(run_id)`` (docs/design.md,
"Evaluations and batch predictions"). Claim (one conditional update: a new attempt), run core with a
progress callback that also carries the cancellation while a thread renews the heartbeat, record the end.
Every write is conditional on the claimed attempt, so a worker the reaper gave up on writes nothing.

torch and the model code are imported inside the task, in the pool child, as ``worker.tasks`` does.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from core.db.models import Checkpoint, Dataset, RunKind, RunStatus
from core.db.store import runs as run_store
from core.settings import Settings
from worker.celery_app import app, settings
from worker.lifecycle import worker_name
from worker.recorder import write_with_retry
from worker.run_queue import RUN_TASK_NAME

log = logging.getLogger(__name__)

__all__ = ["RUN_TASK_NAME", "execute_run", "model_run", "output_path"]


class _Cancelled(Exception):
    """The run's cancellation was asked; raised from the progress callback to stop core."""


@app.task(name=RUN_TASK_NAME, ignore_result=True)
def model_run(run_id: str) -> str:
    """Run evaluation or prediction ``run_id`` if it can be claimed; returns what happened."""
    return execute_run(run_id, settings)


def execute_run(run_id: str, settings: Settings) -> str:
    """Claim, run, record. Returns "not_claimed", "succeeded", "failed" or "cancelled"."""
    claimed: dict[str, Any] = {}

    def claim(s: Any) -> None:
        claimed.clear()
        run = run_store.claim_run(s, run_id, worker_name())
        if run is None:
            return
        dataset = s.get(Dataset, run.dataset_id)
        ckpt = s.query(Checkpoint).filter_by(job_id=run.job_id, name=run.checkpoint).one_or_none()
        claimed.update(
            kind=run.kind,
            data=dataset.path if dataset is not None and dataset.deleted_at is None else None,
            format=dataset.format if dataset is not None else None,
            rows=dataset.rows if dataset is not None else 0,
            checkpoint=ckpt.path if ckpt is not None else None,
            text_column=run.text_column,
            label_column=run.label_column,
            attempt=run.attempts,
        )

    if not write_with_retry(claim, what="run claim", job_id=run_id) or not claimed:
        log.info("run %s not claimed (not queued any more)", run_id)
        return "not_claimed"
    attempt = claimed["attempt"]
    log.info("run %s (%s) claimed (attempt %d)", run_id, claimed["kind"], attempt)
    heartbeat = _RunHeartbeat(run_id, attempt, settings.heartbeat_seconds)
    heartbeat.start()
    try:
        fields = _run(run_id, claimed, settings)
        status = RunStatus.SUCCEEDED
    except _Cancelled:
        status, fields = RunStatus.CANCELLED, {}
    except Exception as e:  # the run fails with the reason; the worker lives on
        from core.ml.errors import JobformerError

        known = isinstance(e, JobformerError | FileNotFoundError)
        if not known:
            log.exception("run %s failed", run_id)
        status = RunStatus.FAILED
        fields = {
            "error_code": getattr(e, "code", "checkpoint_missing") if known else "internal_error",
            "error_message": str(e) if known else f"internal error: {type(e).__name__}: {e}",
        }
    finally:
        heartbeat.stop()
    done: list[bool] = []
    write_with_retry(
        lambda s: done.append(run_store.finish_run(s, run_id, attempt, status, **fields)),
        what="run end",
        job_id=run_id,
    )
    if not (done and done[0]):
        log.warning("run %s: end %s not recorded (the run was requeued or ended meanwhile)", run_id, status)
        return "lost"
    log.info("run %s %s", run_id, status)
    return str(status)


class _RunHeartbeat(threading.Thread):
    """Renews the run's ``heartbeat_at`` every ``interval`` seconds, so the reaper knows its worker lives
    while a long chunk is scored (progress is written only between chunks)."""

    def __init__(self, run_id: str, attempt: int, interval: float) -> None:
        super().__init__(name=f"heartbeat-run-{run_id}", daemon=True)
        self.run_id, self.attempt, self.interval = run_id, attempt, interval
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                write_with_retry(
                    lambda s: run_store.heartbeat_run(s, self.run_id, self.attempt),
                    what="run heartbeat",
                    job_id=self.run_id,
                    attempts=2,
                )
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the reaper judges
                log.warning("run %s: heartbeat failed: %s", self.run_id, exc)


def _run(run_id: str, claimed: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from core.ml.batch import predict_file
    from core.ml.data import FileFormat
    from core.ml.errors import DataError
    from core.ml.evaluation import evaluate_file
    from core.ml.predict import Predictor

    if claimed["data"] is None:
        raise DataError("the dataset was deleted before the run started")
    if claimed["checkpoint"] is None:
        raise FileNotFoundError("the checkpoint is no longer recorded")
    data = settings.data_dir / claimed["data"]
    fmt = None
    if claimed["format"]:  # as recorded at upload (its warnings aside); another shape: detected again
        fields = {k: v for k, v in claimed["format"].items() if k != "warnings"}
        try:
            fmt = FileFormat(**fields)
        except TypeError:
            fmt = None
    predictor = Predictor.load(settings.data_dir / claimed["checkpoint"])

    def progress(done: int, total: int) -> None:
        ok: list[bool] = []
        write_with_retry(
            lambda s: ok.append(run_store.record_progress(s, run_id, done, total, claimed["attempt"])),
            what="progress",
            job_id=run_id,
        )
        if ok and not ok[0]:
            raise _Cancelled

    if claimed["kind"] == RunKind.EVALUATION:
        report = evaluate_file(
            predictor,
            data,
            text_column=claimed["text_column"],
            label_column=claimed["label_column"],
            file_format=fmt,
            on_progress=progress,
        )
        return {"report": report, "rows": report["rows"]}
    out = output_path(settings, run_id, claimed["attempt"])
    out.parent.mkdir(parents=True, exist_ok=True)
    total = claimed["rows"]
    rows = predict_file(
        predictor,
        data,
        out,
        text_column=claimed["text_column"],
        file_format=fmt,
        on_progress=lambda done: progress(done, total),
    )
    return {"rows": rows, "output_path": str(out.relative_to(settings.data_dir))}


def output_path(settings: Settings, run_id: str, attempt: int) -> Path:
    """One file per attempt: an attempt the reaper gave up on never writes into its successor's file."""
    return settings.data_dir / "predictions" / f"{run_id}-a{attempt}.csv"

"""Evaluations and batch predictions of a finished job (docs/design.md, "Evaluations and batch
predictions"): the request checked before anything is queued, the run recorded and committed, then sent to
the workers of the job's queue (``worker/runs.py``); their answers.

Refusals: a dataset that is not the caller's (404, as if it did not exist), a job that has not finished
(409), a checkpoint the job does not have (404), a dataset without the text column, or for an evaluation
of a classifier without the label column (422 at ``body.text_column``/``body.label_column``, naming the
columns the dataset has). For a text-to-text job ``text_column`` is the source column and ``label_column``
the target column (docs/design.md, "Text to text").
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

import broker
from api.deps import ID_PATTERN, get_owned_dataset
from api.errors import ProblemError
from api.prediction import best_checkpoint
from api.schemas import EvaluationSummaryPublic
from core.db import store
from core.db.models import TERMINAL_STATES, Checkpoint, Job, ModelRun, RunKind
from core.db.store import runs as run_store
from core.ml.data.examples import _resolve_column
from core.settings import Settings

log = logging.getLogger(__name__)

# The worker's task (worker/runs.py RUN_TASK_NAME); api/ imports nothing from worker/, a test pins both.
RUN_TASK_NAME = "jobformer.model_run"


RUN_EXAMPLE = {
    "id": "7c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f",
    "job_id": "3f2a9c1e5b7d4e0f8a6b2c4d1e3f5a7b",
    "kind": "evaluation",
    "dataset_id": "9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
    "checkpoint": "step-00000120-e1",
    "status": "succeeded",
    "progress": {"done": 120, "total": 120, "percent": 100.0},
    "report": {
        "task": "classification",
        "accuracy": 0.95,
        "f1_macro": 0.94,
        "confusion_matrix": [[60, 2], [4, 54]],
    },
    "rows": 120,
    "output_url": None,
    "error": None,
    "created_at": "2026-12-02T10:00:00Z",
    "started_at": "2026-12-02T10:00:01Z",
    "finished_at": "2026-12-02T10:00:03Z",
}


class RunCreate(BaseModel):
    """What to run: the dataset, and optionally the checkpoint and the dataset's columns."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"dataset_id": "9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"}}
    )

    dataset_id: str = Field(pattern=ID_PATTERN, description="A dataset uploaded with POST /datasets.")
    checkpoint: str | None = Field(None, max_length=64, description="A checkpoint name; default: the best.")
    text_column: str | None = Field(
        None,
        max_length=255,
        description="Default: the job's text column (text to text: the source column, default the job's).",
    )
    label_column: str | None = Field(
        None,
        max_length=255,
        description="Evaluations of classifiers (default: the job's label column) and of text-to-text models "
        "(the target column; default: the job's).",
    )


class RunPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": RUN_EXAMPLE})

    id: str
    job_id: str
    kind: str
    dataset_id: str
    checkpoint: str | None
    status: str
    progress: dict[str, Any] | None
    report: dict[str, Any] | None = Field(None, description="core.ml.report: the evaluation's report.")
    rows: int | None
    output_url: str | None = Field(None, description="Predictions: the CSV, once succeeded.")
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunsPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"data": [RUN_EXAMPLE], "count": 1}})

    data: list[RunPublic]
    count: int


def run_public(run: ModelRun) -> RunPublic:
    done = run.kind == RunKind.PREDICTION and run.status == "succeeded"
    return RunPublic(
        id=run.id,
        job_id=run.job_id,
        kind=run.kind,
        dataset_id=run.dataset_id,
        checkpoint=run.checkpoint,
        status=run.status,
        progress=run.progress,
        report=run.report,
        rows=run.rows,
        output_url=f"/predictions/{run.id}/output" if done else None,
        error={"code": run.error_code, "message": run.error_message} if run.error_code else None,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def _column_problem(columns: list[str], ref: str | int, field: str, kind: str) -> None:
    _, problem = _resolve_column(columns, ref, ["body", field], kind)
    if problem is not None:
        raise ProblemError(
            422,
            f"{field}: {problem.msg}; name the dataset's column with {field}",
            code="invalid_data",
            errors=[problem],
        )


def create_run(
    session: Session, settings: Settings, job: Job, body: RunCreate, kind: RunKind, owner: str | None
) -> ModelRun:
    """Check the request, record the run (committed) and send it to the job's queue."""
    dataset = get_owned_dataset(session, body.dataset_id, owner)
    if dataset is None:
        raise ProblemError(
            404,
            f"dataset {body.dataset_id} not found: upload the file with POST /datasets first",
            code="dataset_not_found",
            errors=[{"loc": ["body", "dataset_id"], "msg": "dataset not found", "type": "not_found"}],
        )
    if job.status not in TERMINAL_STATES:
        raise ProblemError(
            409,
            f"job {job.id} is {job.status}; evaluate or predict once it has finished",
            code="job_not_finished",
        )
    if body.checkpoint is None:
        checkpoint = best_checkpoint(session, job).name
    else:
        found = session.scalar(
            select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.name == body.checkpoint)
        )
        if found is None:
            raise ProblemError(404, f"job {job.id} has no checkpoint {body.checkpoint}", code="not_found")
        checkpoint = found.name
    config, kind_of_file = job.config or {}, (dataset.format or {}).get("kind", "csv")
    # Text to text (docs/design.md "Text to text"): text_column is the source, label_column the target.
    pairs = config.get("task") == "text_to_text"
    text_default = (
        _given(config.get("source_column"), 0) if pairs else _given(config.get("text_column"), "text")
    )
    _column_problem(dataset.columns, _given(body.text_column, text_default), "text_column", kind_of_file)
    if kind == RunKind.EVALUATION and config.get("task") in ("classification", "text_to_text"):
        label_default = (
            _given(config.get("target_column"), 1) if pairs else _given(config.get("label_column"), "label")
        )
        label = _given(body.label_column, label_default)
        _column_problem(dataset.columns, label, "label_column", kind_of_file)
    run = store.create_run(
        session,
        owner=owner,
        job_id=job.id,
        kind=kind,
        dataset_id=dataset.id,
        checkpoint=checkpoint,
        text_column=body.text_column,
        label_column=body.label_column,
        queue=job.queue,
    )
    session.commit()  # before the workers can see its id
    send_run(settings, run.id, run.queue)
    return run


def send_run(settings: Settings, run_id: str, queue: str) -> None:
    """Send the run to the workers; a broker that is down leaves it queued (logged)."""
    try:
        broker.get_app(settings).send_task(RUN_TASK_NAME, args=[run_id], task_id=run_id, queue=queue)
    except Exception as e:  # kombu's OperationalError and friends: the run stays queued, the caller sees it
        log.error("run %s not sent to the workers: %s", run_id, e)


def get_owned_run(session: Session, run_id: str, owner: str | None, kind: RunKind) -> ModelRun:
    run = session.get(ModelRun, run_id)
    if run is None or run.kind != kind or (owner is not None and run.owner != owner):
        raise ProblemError(404, f"{kind} {run_id} not found", code="not_found")
    return run


def job_runs(session: Session, job: Job, kind: RunKind) -> RunsPublic:
    runs = session.scalars(
        select(ModelRun).where(ModelRun.job_id == job.id, ModelRun.kind == kind).order_by(ModelRun.created_at)
    ).all()
    return RunsPublic(data=[run_public(r) for r in runs], count=len(runs))


def test_evaluation_summary(session: Session, job: Job) -> EvaluationSummaryPublic | None:
    """The job's test-set evaluation in short (``test_evaluation`` in GET /jobs/{id}); None before it is
    queued or without a test set."""
    if job.test_dataset_id is None:
        return None
    run = run_store.test_evaluation(session, job.id)
    return None if run is None else run_summary(run)


# The numbers an evaluation's summary carries, whichever the task reports.
SUMMARY_KEYS = ("accuracy", "f1_macro", "loss", "perplexity", "bleu", "chrf")


def run_summary(run: ModelRun) -> EvaluationSummaryPublic:
    """An evaluation in short: its id, link, status and the task's headline numbers (a job's
    ``test_evaluation``, a sweep trial's)."""
    report = run.report or {}
    summary = {k: float(report[k]) for k in SUMMARY_KEYS if isinstance(report.get(k), int | float)}
    return EvaluationSummaryPublic(
        id=run.id, url=f"/evaluations/{run.id}", status=run.status, summary=summary
    )


def check_test_dataset(session: Session, dataset_id: str, config: dict[str, Any], owner: str | None) -> None:
    """POST /jobs's ``test_dataset_id``, refused before anything is queued: not the caller's (404), a task
    that has no test-set evaluation, or a dataset without the job's text (or label; text to text: source and
    target) column (422 at
    ``body.test_dataset_id``, naming the column and the ones the dataset has)."""
    loc = ["body", "test_dataset_id"]
    valid = re.fullmatch(ID_PATTERN, dataset_id) is not None
    dataset = get_owned_dataset(session, dataset_id, owner) if valid else None
    if dataset is None:
        raise ProblemError(
            404,
            f"test dataset {dataset_id} not found: upload the test file with POST /datasets first",
            code="dataset_not_found",
            errors=[{"loc": loc, "msg": "dataset not found", "type": "not_found"}],
        )
    task = config.get("task")
    if task not in ("classification", "language_modeling", "text_to_text"):
        msg = f"test_dataset_id: a {task} job has no test-set evaluation yet; leave test_dataset_id out"
        raise ProblemError(
            422, msg, code="invalid_data", errors=[{"loc": loc, "msg": msg, "type": "value_error"}]
        )
    kind = (dataset.format or {}).get("kind", "csv")
    columns = [("text_column", config.get("text_column", "text"))]
    if task == "text_to_text":  # docs/design.md "Text to text": the schema's defaults, 0 and 1
        columns = [
            ("source_column", _given(config.get("source_column"), 0)),
            ("target_column", _given(config.get("target_column"), 1)),
        ]
    if task == "classification":
        columns.append(("label_column", _given(config.get("label_column"), "label")))
    for field, ref in columns:
        _, problem = _resolve_column(dataset.columns, ref, loc, kind)
        if problem is not None:
            raise ProblemError(
                422,
                f"test_dataset_id: the test set lacks the job's {field} ({problem.msg}); upload a test file "
                f"with the training file's columns",
                code="invalid_data",
                errors=[problem],
            )


def _given(*choices: Any) -> Any:
    """The first choice that is set: a column given by number may be 0, which ``or`` would skip."""
    return next(c for c in choices if c is not None)

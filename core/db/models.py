"""SQLAlchemy 2 models. The schema changes only through Alembic (``migrations/``).

The same code runs on PostgreSQL (compose, production) and SQLite (``jobformer up``): portable types only
(JSON, not JSONB; strings for ids and states).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both backends (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use core.db.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)  # hash id of the API key, or None
    filename: Mapped[str] = mapped_column(String(255))  # shown to users only; never used as a path
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(512))  # relative to settings.data_dir
    format: Mapped[dict[str, Any]] = mapped_column(JSON)  # {delimiter, encoding, header, kind}
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[Any]] = mapped_column(JSON)
    preview: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by DELETE when finished jobs still refer to the row: the file goes and the dataset is gone for
    # the API (404, not listed), while those jobs keep their dataset_id and their results.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_queue_status", "queue", "status"),
        UniqueConstraint("sweep_id", "trial_number", name="uq_jobs_sweep_trial"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # fully resolved TrainConfig
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(255))  # "hostname:pid" of the claiming worker
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The lease epoch: every claim increments it and it never goes down (``attempts`` does, on a graceful
    # hand-off). A worker's writes are conditional on (id, epoch): a write that matches no row means
    # another worker owns the job now (docs/design.md, "One owner per job").
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The Celery queue the job was sent to; only that queue's workers run it, and only their reapers
    # re-send it.
    queue: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # core.ml.callbacks.Progress as dict
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # latest value per metric key
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {step, metric, value, checkpoint}
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # TrainResult summary when succeeded
    # A sweep's trial (docs/design.md, "Sweeps"): an ordinary job that also records its sweep, its number
    # in it (unique: a trial is created once), the parameters it tries, the ASHA rungs it passed, and why
    # it was pruned (the job itself ends ``cancelled``: the job states stay as they are).
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="RESTRICT"), index=True)
    trial_number: Mapped[int | None] = mapped_column(Integer)
    trial_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    trial_rungs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    trial_pruned: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {rung, step, value, message}
    # Where the job's end is POSTed, signed (docs/design.md, "Operators"); checked when the job is created
    # and again, resolved, when the worker sends it.
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # A test set (``test_dataset_id`` in POST /jobs): when training succeeds the worker queues an evaluation
    # of the best checkpoint on it (docs/design.md, "Evaluations and batch predictions"). No foreign key:
    # deleting the dataset later is allowed, the evaluation then fails saying so.
    test_dataset_id: Mapped[str | None] = mapped_column(String(32))


class SweepStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Sweep(Base):
    """A hyperparameter search (docs/design.md, "Sweeps"); its trials are jobs with its ``sweep_id``."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the base config, resolved
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)  # path -> core.search.ParameterSpec as dict
    method: Mapped[str] = mapped_column(String(16))  # grid, random, tpe
    max_jobs: Mapped[int] = mapped_column(Integer)
    max_parallel: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(64))  # e.g. val_f1_macro
    direction: Mapped[str] = mapped_column(String(8))  # maximize, minimize
    seed: Mapped[int] = mapped_column(Integer)
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # core.search.EarlyStopping
    queue: Mapped[str] = mapped_column(String(64))  # the trials' queue
    # Given to every trial's job: each is evaluated on it when it succeeds ("Sweeps", test sets).
    test_dataset_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=SweepStatus.RUNNING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)


class MetricPoint(Base):
    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_points_job_step", "job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # queued, started, epoch_end, checkpoint, warning, error...
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_checkpoints_job_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    is_best: Mapped[bool] = mapped_column(default=False)
    path: Mapped[str] = mapped_column(String(512))  # relative to settings.data_dir
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunKind(enum.StrEnum):
    EVALUATION = "evaluation"
    PREDICTION = "prediction"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ModelRun(Base):
    """An evaluation or a batch prediction: a finished job's checkpoint run over a dataset on the workers
    (docs/design.md, "Evaluations and batch predictions"). Claimed by one conditional update, never twice."""

    __tablename__ = "model_runs"
    __table_args__ = (Index("ix_model_runs_job_kind", "job_id", "kind"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # RunKind
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    checkpoint: Mapped[str | None] = mapped_column(String(64))  # None: the job's best when the run starts
    text_column: Mapped[str | None] = mapped_column(String(255))
    label_column: Mapped[str | None] = mapped_column(String(255))
    queue: Mapped[str] = mapped_column(String(64), default="default")
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    # The job's test-set evaluation (queued by the worker when training succeeded), at most one per job.
    is_test: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Claims so far: every claim increments it and the claimer's writes are conditional on it, so a
    # worker the reaper gave up on writes nothing after a new claim; the reaper fails the run after
    # max_attempts. heartbeat_at: renewed while it runs (docs/design.md, "Evaluations and batch predictions").
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {done, total, percent}
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # core.ml.report (evaluations)
    output_path: Mapped[str | None] = mapped_column(String(512))  # relative to data_dir (predictions)
    rows: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """A job's end to POST to its webhook: the outbox (docs/design.md, "Operators"). Written in the
    transaction that writes the end, whoever writes it (a worker, the API cancelling a queued job, a reaper),
    so no end is left undelivered; a worker's deliverer claims it (``claim`` + 1, ``claimed_until``), sends
    it and marks it sent. One row per end (``job_id``, ``event``); its id is the ``X-Jobformer-Delivery``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "event", name="uq_webhook_deliveries_job_event"),
        Index("ix_webhook_deliveries_pending", "sent_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))  # "job.succeeded", "job.failed", "job.cancelled"
    url: Mapped[str] = mapped_column(String(2048))  # the job's webhook_url, else its key's default
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Claims so far: a deliverer's writes are conditional on the claim it made, so one whose claim ran
    # out (and was claimed again) records nothing more.
    claim: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)  # done, whatever the outcome
    outcome: Mapped[str | None] = mapped_column(String(16))  # delivered, failed, refused

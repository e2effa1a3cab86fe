"""Request and response bodies, named for what they are (apart from the ORM classes in core.db.models).

Each carries a worked example that /docs shows. Lists are ``{"data": [...], "count": N}`` where ``count``
is the total matching the filter (not just this page).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_JOB_ID = "3f2a9c1e5b7d4e0f8a6b2c4d1e3f5a7b"
_DATASET_ID = "9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"
_TIME = "2025-01-01T12:00:00Z"

CONFIG_EXAMPLE: dict[str, Any] = {
    "task": "classification",
    "text_column": 1,
    "label_column": 0,
    "tokenizer": {"kind": "spacy", "language": "en"},
    "model": {"d_model": 64, "n_heads": 4, "n_layers": 2, "dim_feedforward": 128, "max_length": 64},
    "training": {"epochs": 1, "batch_size": 32, "learning_rate": 0.001},
}


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


# --- datasets ---------------------------------------------------------------------------------------


class DatasetFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="'csv' or 'text' (one document per line).")
    delimiter: str | None = Field(None, description="Column separator; null for kind 'text'.")
    encoding: str = Field(description="'utf-8', 'utf-8-sig' or 'cp1252'.")
    header: bool = Field(description="Whether the first row names the columns.")
    quoting: bool | None = Field(None, description="False when '\"' is taken literally.")


DATASET_EXAMPLE: dict[str, Any] = {
    "id": _DATASET_ID,
    "filename": "SMSSpamCollection.tsv",
    "size_bytes": 477907,
    "sha256": "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3",
    "format": {"kind": "csv", "delimiter": "\t", "encoding": "utf-8", "header": False, "quoting": False},
    "rows": 5574,
    "columns": ["0", "1"],
    "preview": [{"0": "ham", "1": "Go until jurong point, crazy.."}],
    "warnings": [],
    "created_at": _TIME,
}


class DatasetPublic(BaseModel):
    model_config = _example(DATASET_EXAMPLE)

    id: str
    filename: str = Field(description="The uploaded name, sanitized; for display only.")
    size_bytes: int
    sha256: str
    format: DatasetFormat
    rows: int = Field(description="Data rows, header excluded.")
    columns: list[str] = Field(description="Header names; '0', '1', ... for files without a header.")
    preview: list[dict[str, str]] = Field(description="The first rows, column -> value.")
    warnings: list[str] = Field(default_factory=list, description="Things worth knowing about the file.")
    created_at: datetime


class DatasetsPublic(BaseModel):
    model_config = _example({"data": [DATASET_EXAMPLE], "count": 1})

    data: list[DatasetPublic]
    count: int


# --- jobs -------------------------------------------------------------------------------------------


class JobCreate(BaseModel):
    """The JSON form of POST /jobs (the multipart form sends ``file`` and ``config`` instead)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataset_id": _DATASET_ID, "config": CONFIG_EXAMPLE}]},
    )

    dataset_id: str = Field(min_length=1, max_length=64, description="An id from POST /datasets.")
    test_dataset_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description=(
            "A test set (an id from POST /datasets) with the job's text (and label) column: when training "
            "succeeds the best checkpoint is evaluated on it (`test_evaluation` in the job)."
        ),
    )
    queue: str | None = Field(
        None,
        max_length=64,
        description=(
            "The worker queue to run on, one of the server's JOBFORMER_QUEUES (e.g. 'gpu'); only workers "
            "started with `jobformer worker -Q <queue>` run the job. Default: the server's queue_name."
        ),
        examples=["default"],
    )
    config: dict[str, Any] = Field(
        description="The training config (the README's config reference); only 'task' is required."
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description=(
            "An http(s) URL POSTed, signed, when the job ends (docs/design.md, 'Operators'); the server needs "
            "JOBFORMER_WEBHOOK_SECRET, and the host must be public or in JOBFORMER_WEBHOOK_ALLOWED_HOSTS."
        ),
        examples=["https://hooks.example.com/jobformer"],
    )


class ProgressPublic(BaseModel):
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    percent: float
    eta_seconds: float | None = None
    tokens_per_second: float | None = None
    train_loss: float | None = None


class ErrorPublic(BaseModel):
    code: str = Field(description="Machine-readable: invalid_data, diverged, worker_lost, ...")
    message: str = Field(description="What went wrong and what to change.")


class BestPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int
    metric: str
    value: float
    checkpoint: str | None = None


class QueuePublic(BaseModel):
    position: int = Field(
        description=(
            "1 when this job is next in its queue: 1 + the queued jobs of that queue created before it, "
            "everyone's (a count only; nothing else about other keys' jobs is shown)."
        )
    )
    workers_online: int | None = Field(
        description="Workers consuming the job's queue (cached a few seconds); null: unknown."
    )


JOB_EXAMPLE: dict[str, Any] = {
    "id": _JOB_ID,
    "status": "running",
    "dataset_id": _DATASET_ID,
    "config": CONFIG_EXAMPLE,
    "created_at": _TIME,
    "started_at": "2025-01-01T12:00:02Z",
    "finished_at": None,
    "attempts": 1,
    "max_attempts": 3,
    "error": None,
    "progress": {
        "step": 80,
        "total_steps": 157,
        "epoch": 0,
        "total_epochs": 1,
        "percent": 50.96,
        "eta_seconds": 12.5,
        "tokens_per_second": 41000.0,
        "train_loss": 0.21,
    },
    "metrics": {"train_loss": 0.21, "val_loss": 0.18, "val_accuracy": 0.95, "val_f1_macro": 0.89},
    "best": {"step": 50, "metric": "val_loss", "value": 0.18, "checkpoint": "step-00000050"},
    "queue_name": "default",
    "queue": None,
    "warnings": [],
}


class TrialPublic(BaseModel):
    """A sweep's trial (docs/design.md, "Sweeps")."""

    number: int = Field(description="The trial's number in its sweep, from 0.")
    params: dict[str, Any] = Field(description="The config paths this trial sets, and their values.")
    pruned: str | None = Field(None, description="Why early stopping stopped it; null: it was not.")


class EvaluationSummaryPublic(BaseModel):
    """The job's test-set evaluation in short: where it is, its state and its headline numbers."""

    id: str
    url: str = Field(description="GET it for the whole report (per class, confusion matrix, mistakes).")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    summary: dict[str, float] = Field(
        default_factory=dict,
        description="Once succeeded: accuracy and f1_macro (classification) or loss and perplexity.",
    )


class JobPublic(BaseModel):
    model_config = _example(JOB_EXAMPLE)

    id: str
    status: str = Field(description="queued, running, cancelling, succeeded, failed or cancelled.")
    dataset_id: str
    config: dict[str, Any] = Field(description="Fully resolved: every default filled in.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int
    max_attempts: int
    error: ErrorPublic | None = None
    progress: ProgressPublic | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="The latest value of each metric.")
    best: BestPublic | None = None
    queue_name: str = Field(description="The worker queue the job runs on (`queue` in POST /jobs).")
    queue: QueuePublic | None = Field(
        None, description="Queued jobs only: position in its queue and the queue's workers online."
    )
    warnings: list[str] = Field(default_factory=list, description="For example: no worker is online.")
    sweep_id: str | None = Field(None, description="The sweep this job is a trial of (POST /sweeps).")
    trial: TrialPublic | None = Field(None, description="A sweep's trial: its number and parameters.")
    webhook_url: str | None = Field(
        None, description="Where the job's end is POSTed (`webhook_url` in POST /jobs)."
    )
    test_dataset_id: str | None = Field(None, description="The test set (`test_dataset_id` in POST /jobs).")
    test_evaluation: EvaluationSummaryPublic | None = Field(
        None, description="The test set's evaluation, once queued (GET /evaluations/{id} has all of it)."
    )


class JobsPublic(BaseModel):
    model_config = _example({"data": [JOB_EXAMPLE], "count": 1})

    data: list[JobPublic]
    count: int


class MetricPointPublic(BaseModel):
    step: int
    epoch: int
    split: str = Field(description="'train' or 'val'.")
    name: str = Field(description="loss, accuracy, f1_macro, perplexity, ...")
    value: float
    time: datetime


class MetricsPublic(BaseModel):
    model_config = _example(
        {
            "data": [
                {"step": 10, "epoch": 0, "split": "train", "name": "loss", "value": 0.61, "time": _TIME},
                {"step": 50, "epoch": 0, "split": "val", "name": "loss", "value": 0.18, "time": _TIME},
            ],
            "count": 2,
        }
    )

    data: list[MetricPointPublic]
    count: int


class EventPublic(BaseModel):
    id: int
    time: datetime
    kind: str = Field(description="queued, started, epoch_end, checkpoint, warning, error, ...")
    message: str
    data: dict[str, Any] | None = None


class EventsPublic(BaseModel):
    model_config = _example(
        {
            "data": [
                {"id": 1, "time": _TIME, "kind": "queued", "message": "job queued", "data": None},
                {"id": 2, "time": _TIME, "kind": "started", "message": "started on worker-1", "data": None},
            ],
            "count": 2,
        }
    )

    data: list[EventPublic]
    count: int


class CheckpointPublic(BaseModel):
    name: str
    step: int
    metrics: dict[str, Any]
    size_bytes: int
    is_best: bool
    created_at: datetime


class CheckpointsPublic(BaseModel):
    model_config = _example(
        {
            "data": [
                {
                    "name": "step-00000050",
                    "step": 50,
                    "metrics": {"val_loss": 0.18},
                    "size_bytes": 1843200,
                    "is_best": True,
                    "created_at": _TIME,
                }
            ],
            "count": 1,
        }
    )

    data: list[CheckpointPublic]
    count: int


# --- prediction -------------------------------------------------------------------------------------

MAX_PREDICT_TEXTS = 1000
MAX_TEXT_CHARS = 100_000


class PredictRequest(BaseModel):
    """Classification jobs take ``texts``; language-modelling jobs take ``prompt`` (and sampling options)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"texts": ["WINNER!! Claim your free prize now", "see you at lunch?"]},
                {"prompt": "Once upon a time", "max_new_tokens": 50, "temperature": 0.8, "top_k": 20},
            ]
        },
    )

    texts: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PREDICT_TEXTS,
        description="Classification: texts to label. Text to text: texts to turn into outputs.",
    )
    prompt: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="Language modelling: the prompt.")
    max_new_tokens: int = Field(200, ge=1, le=4096)
    temperature: float = Field(1.0, gt=0, le=100)
    top_k: int | None = Field(None, ge=1, le=1_000_000)
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Fixes the sampling for repeatable output."
    )
    beam_size: int = Field(1, ge=1, le=16, description="Text to text: 1 is greedy, more is beam search.")
    length_penalty: float = Field(
        1.0,
        ge=0,
        le=5,
        description="Text to text, beam search: larger favours longer outputs (GNMT's alpha).",
    )

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.texts is None) == (self.prompt is None):
            raise ValueError("send either 'texts' (classification) or 'prompt' (language modelling)")
        if self.texts is not None:
            for i, t in enumerate(self.texts):
                if len(t) > MAX_TEXT_CHARS:
                    raise ValueError(f"texts[{i}] is longer than {MAX_TEXT_CHARS} characters")
        return self


class ClassificationPublic(BaseModel):
    label: str
    probabilities: dict[str, float]


class TextOutputPublic(BaseModel):
    text: str = Field(description="Text to text: the output for the input text at this position.")


class PredictionsPublic(BaseModel):
    """Classification or text-to-text answer: one entry per input text, in order."""

    model_config = _example(
        {
            "data": [
                {"label": "spam", "probabilities": {"ham": 0.03, "spam": 0.97}},
                {"label": "ham", "probabilities": {"ham": 0.99, "spam": 0.01}},
            ],
            "checkpoint": "step-00000050",
        }
    )

    data: list[ClassificationPublic] | list[TextOutputPublic]
    checkpoint: str = Field(description="The checkpoint that answered (the job's best).")


class GenerationPublic(BaseModel):
    """Language-modelling answer: the generated continuation."""

    model_config = _example({"text": "Once upon a time there was a king", "checkpoint": "step-00000050"})

    text: str
    checkpoint: str


# --- health -----------------------------------------------------------------------------------------


class HealthPublic(BaseModel):
    model_config = _example({"status": "ok"})

    status: str


class ReadyPublic(BaseModel):
    model_config = _example({"status": "ok", "checks": {"database": "ok", "broker": "ok"}})

    status: str
    checks: dict[str, str]

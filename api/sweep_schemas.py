"""The request and answers of /sweeps (docs/design.md, "Sweeps"). The parameter and early-stopping specs
are core.search's own models: the API validates a sweep with the same classes that run it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import CONFIG_EXAMPLE, ErrorPublic, EvaluationSummaryPublic, _example
from core.search import Direction, EarlyStopping, Method, ParameterSpec

MAX_SWEEP_JOBS = 500  # trials one sweep may run
MAX_SWEEP_PARAMETERS = 20
DEFAULT_MAX_JOBS = 10  # random and tpe; a grid defaults to its size

_SWEEP_ID = "5c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
_DATASET_ID = "9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"

SWEEP_CREATE_EXAMPLE: dict[str, Any] = {
    "dataset_id": _DATASET_ID,
    "config": {**CONFIG_EXAMPLE, "training": {"max_steps": 300, "eval_every": 50}},
    "parameters": {
        "training.learning_rate": {"distribution": "log_uniform", "min": 1e-4, "max": 3e-3},
        "model.n_layers": {"values": [1, 2, 4]},
    },
    "method": "tpe",
    "max_jobs": 12,
    "max_parallel": 2,
    "seed": 0,
    "early_stopping": {"type": "asha", "min_steps": 50, "reduction_factor": 3},
}


class SweepCreate(BaseModel):
    """POST /sweeps: a base config, the config paths to vary, how to search and when to stop a trial."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SWEEP_CREATE_EXAMPLE]})

    dataset_id: str = Field(description="A dataset uploaded with POST /datasets.", max_length=64)
    config: dict[str, Any] = Field(description="The base training config every trial starts from.")
    parameters: dict[str, ParameterSpec] = Field(
        min_length=1,
        max_length=MAX_SWEEP_PARAMETERS,
        description=(
            'Config path -> `{"values": [...]}` or a range `{"distribution": "uniform" | "log_uniform" | '
            '"int" | "int_log_uniform", "min", "max"}`.'
        ),
    )
    method: Method = Field("random", description="grid, random, or tpe (Optuna's TPE).")
    max_jobs: int | None = Field(
        None,
        ge=1,
        le=MAX_SWEEP_JOBS,
        description=f"Trials in all (default {DEFAULT_MAX_JOBS}; grid: its size).",
    )
    max_parallel: int = Field(2, ge=1, le=MAX_SWEEP_JOBS, description="Trials queued or running at once.")
    metric: str | None = Field(
        None, description="What ranks trials: val_f1_macro (classification) or val_loss (language models)."
    )
    direction: Direction | None = Field(None, description="maximize or minimize (default: the metric's).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="The same seed draws the same trials.")
    early_stopping: EarlyStopping | None = Field(None, description="ASHA: stop the trials that fall behind.")
    queue: str | None = Field(None, description="The worker queue of every trial (default: the server's).")
    test_dataset_id: str | None = Field(
        None,
        max_length=64,
        description=(
            "A test set (POST /datasets, the training file's columns): every trial is evaluated on it when "
            "it succeeds, and the leaderboard shows its test accuracy and macro-F1."
        ),
    )


_TRIAL_EXAMPLE: dict[str, Any] = {
    "number": 3,
    "job_id": "3f2a9c1e5b7d4e0f8a6b2c4d1e3f5a7b",
    "state": "succeeded",
    "params": {"training.learning_rate": 0.0021, "model.n_layers": 2},
    "metric": 0.953,
    "steps": 300,
    "pruned": None,
    "test_evaluation": {
        "id": "8e9f0a1b2c3d4e5f5c1d2e3f4a5b6c7d",
        "url": "/evaluations/8e9f0a1b2c3d4e5f5c1d2e3f4a5b6c7d",
        "status": "succeeded",
        "summary": {"accuracy": 0.962, "f1_macro": 0.948, "loss": 0.12},
    },
    "test_accuracy": 0.962,
    "test_f1_macro": 0.948,
}
SWEEP_EXAMPLE: dict[str, Any] = {
    "id": _SWEEP_ID,
    "status": "running",
    "dataset_id": _DATASET_ID,
    "config": CONFIG_EXAMPLE,
    "parameters": SWEEP_CREATE_EXAMPLE["parameters"],
    "method": "tpe",
    "max_jobs": 12,
    "max_parallel": 2,
    "metric": "val_f1_macro",
    "direction": "maximize",
    "seed": 0,
    "early_stopping": SWEEP_CREATE_EXAMPLE["early_stopping"],
    "queue_name": "default",
    "test_dataset_id": None,
    "created_at": "2025-01-01T12:00:00Z",
    "finished_at": None,
    "error": None,
    "counts": {"succeeded": 1, "pruned": 1, "running": 2},
    "best": _TRIAL_EXAMPLE,
    "leaderboard": [
        _TRIAL_EXAMPLE,
        {
            **_TRIAL_EXAMPLE,
            "number": 1,
            "job_id": "7d4e0f8a6b2c4d1e3f5a7b3f2a9c1e5b",
            "state": "pruned",
            "params": {"training.learning_rate": 0.00013, "model.n_layers": 1},
            "metric": 0.61,
            "steps": 50,
            "test_evaluation": None,
            "test_accuracy": None,
            "test_f1_macro": None,
            "pruned": "Pruned by ASHA at rung 0 (step 50): val_f1_macro 0.61 is not in the top 1/3 of the 3 "
            "trials that reached this rung (best 0.91).",
        },
    ],
}


class SweepTrialPublic(BaseModel):
    number: int
    job_id: str
    state: str = Field(description="The job's status, or 'pruned' when early stopping stopped it.")
    params: dict[str, Any]
    metric: float | None = Field(description="The trial's best value of the sweep's metric so far.")
    steps: int = Field(description="Training steps it used.")
    pruned: str | None = Field(None, description="Why it was pruned.")
    test_evaluation: EvaluationSummaryPublic | None = Field(
        None, description="Its test-set evaluation (a sweep with test_dataset_id), once queued."
    )
    test_accuracy: float | None = Field(None, description="Test-set accuracy, once its evaluation succeeded.")
    test_f1_macro: float | None = Field(None, description="Test-set macro-F1, once its evaluation succeeded.")


class SweepPublic(BaseModel):
    model_config = _example(SWEEP_EXAMPLE)

    id: str
    status: str = Field(description="running, succeeded, failed or cancelled.")
    dataset_id: str
    config: dict[str, Any] = Field(description="The base config, resolved.")
    parameters: dict[str, Any]
    method: str
    max_jobs: int
    max_parallel: int
    metric: str
    direction: str
    seed: int
    early_stopping: dict[str, Any] | None
    queue_name: str
    test_dataset_id: str | None = Field(None, description="The test set every trial is evaluated on.")
    created_at: datetime
    finished_at: datetime | None = None
    error: ErrorPublic | None = None
    counts: dict[str, int] = Field(description="Trials by state (queued, running, succeeded, pruned, ...).")
    best: SweepTrialPublic | None = Field(None, description="The leaderboard's first trial.")
    leaderboard: list[SweepTrialPublic] = Field(
        description="Every trial, best metric first; trials without a value yet last, by number."
    )


class SweepsPublic(BaseModel):
    model_config = _example({"data": [SWEEP_EXAMPLE], "count": 1})

    data: list[SweepPublic]
    count: int
